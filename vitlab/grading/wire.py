"""Plain data across a process boundary, without pickle.

A message is JSON for the structure plus one ``.npy`` blob per numpy array, read back with
``allow_pickle=False``. The reading side trusts nothing: sizes, nesting depth, item counts and
array dtypes are capped, and anything that is not plain data is refused with a `WireError`.

Frame on a pipe: ``u64 payload length`` + payload; payload: ``u32 JSON length`` + JSON +
``u64 blob length`` + blob, for every array. Containers are tagged so that nothing is ambiguous:
``{"t": "list" | "tuple", "v": [...]}``, ``{"t": "dict", "v": [[key, value], ...]}`` (str keys),
``{"t": "array", "i": blob index}``; None, bools, ints, floats (NaN and infinities too) and
strings are plain JSON.
"""
from __future__ import annotations

import io
import json
import os
import select
import struct
import time
from typing import Any

import numpy as np

MAX_MESSAGE_BYTES = 256 * 2**20
MAX_DEPTH = 32
MAX_ITEMS = 500_000
MAX_STRING_CHARS = 2**20
ARRAY_KINDS = "biufc"       # bool, int, uint, float, complex: never object or structured dtypes

_LENGTH = struct.Struct(">Q")
_JSON_LENGTH = struct.Struct(">I")


class WireError(ValueError):
    """A message that is not plain data, is too big, or is cut off."""


class PeerClosed(WireError):
    """The other end closed the pipe (for a child: it exited or was killed)."""


class Timeout(WireError):
    """No complete message arrived before the deadline."""


# --- encoding ---------------------------------------------------------------------------------

def encode(value: Any) -> bytes:
    """Plain data -> payload bytes. Raises WireError for anything else (e.g. a torch.Tensor)."""
    blobs: list[bytes] = []
    tree = _to_tree(value, blobs, depth=0)
    head = json.dumps(tree, separators=(",", ":"), allow_nan=True).encode()
    parts = [_JSON_LENGTH.pack(len(head)), head]
    for blob in blobs:
        parts += [_LENGTH.pack(len(blob)), blob]
    return b"".join(parts)


def _to_tree(value: Any, blobs: list[bytes], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireError(f"data nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in ARRAY_KINDS:
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in ARRAY_KINDS or value.dtype.fields is not None:
            raise WireError(f"numpy arrays of dtype {value.dtype} cannot be sent (numbers only)")
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        blobs.append(buffer.getvalue())
        return {"t": "array", "i": len(blobs) - 1}
    if isinstance(value, (list, tuple)):
        return {"t": "list" if isinstance(value, list) else "tuple",
                "v": [_to_tree(item, blobs, depth + 1) for item in value]}
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"dict keys must be str, got {type(key).__name__} {key!r}")
            items.append([key, _to_tree(item, blobs, depth + 1)])
        return {"t": "dict", "v": items}
    raise WireError(f"{type(value).__module__}.{type(value).__qualname__} is not plain data "
                    f"(send numbers, strings, lists, dicts and numpy arrays)")


# --- decoding ---------------------------------------------------------------------------------

def decode(payload: bytes) -> Any:
    """Payload bytes -> plain data, checking everything; never unpickles."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(payload)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    if len(payload) < _JSON_LENGTH.size:
        raise WireError("message cut off before its header")
    (json_length,) = _JSON_LENGTH.unpack_from(payload, 0)
    start = _JSON_LENGTH.size
    if start + json_length > len(payload):
        raise WireError("message cut off inside its JSON part")
    try:
        tree = json.loads(payload[start:start + json_length])
    except (ValueError, RecursionError) as error:
        raise WireError(f"malformed JSON part: {error}") from None
    blobs = _split_blobs(payload, start + json_length)
    arrays = [_load_array(blob) for blob in blobs]
    return _from_tree(tree, arrays, depth=0, counter=[0])


def _split_blobs(payload: bytes, offset: int) -> list[bytes]:
    blobs = []
    while offset < len(payload):
        if offset + _LENGTH.size > len(payload):
            raise WireError("message cut off inside an array header")
        (length,) = _LENGTH.unpack_from(payload, offset)
        offset += _LENGTH.size
        if offset + length > len(payload):
            raise WireError("message cut off inside an array")
        blobs.append(payload[offset:offset + length])
        offset += length
    return blobs


def _load_array(blob: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as error:  # numpy raises ValueError, OSError, EOFError ... on bad bytes
        raise WireError(f"not a valid .npy array: {error}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in ARRAY_KINDS \
            or array.dtype.fields is not None:
        raise WireError(f"array of dtype {getattr(array, 'dtype', '?')} refused (numbers only)")
    return array


def _from_tree(tree: Any, arrays: list[np.ndarray], depth: int, counter: list[int]) -> Any:
    counter[0] += 1
    if counter[0] > MAX_ITEMS:
        raise WireError(f"more than {MAX_ITEMS} items in one message")
    if depth > MAX_DEPTH:
        raise WireError(f"data nested deeper than {MAX_DEPTH} levels")
    if tree is None or isinstance(tree, (bool, int, float)):
        return tree
    if isinstance(tree, str):
        if len(tree) > MAX_STRING_CHARS:
            raise WireError(f"string of {len(tree)} characters is over the {MAX_STRING_CHARS} limit")
        return tree
    if not isinstance(tree, dict):
        raise WireError(f"unexpected JSON value of type {type(tree).__name__}")
    tag = tree.get("t")
    if tag == "array" and set(tree) == {"t", "i"}:
        index = tree["i"]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(arrays):
            raise WireError(f"array reference {index!r} points at no array")
        return arrays[index]
    if tag in ("list", "tuple") and set(tree) == {"t", "v"} and isinstance(tree["v"], list):
        items = [_from_tree(item, arrays, depth + 1, counter) for item in tree["v"]]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and set(tree) == {"t", "v"} and isinstance(tree["v"], list):
        result = {}
        for pair in tree["v"]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise WireError("a dict entry is not a [str key, value] pair")
            result[pair[0]] = _from_tree(pair[1], arrays, depth + 1, counter)
        return result
    raise WireError(f"unknown JSON object {str(tree)[:80]}")


# --- pipes ------------------------------------------------------------------------------------

def send(fd: int, value: Any, deadline: float | None = None) -> None:
    """Write one framed message to a pipe; with a deadline, `fd` must be non-blocking."""
    payload = encode(value)
    data = memoryview(_LENGTH.pack(len(payload)) + payload)
    while data:
        if deadline is not None:
            _wait(fd, deadline, for_write=True)
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            raise PeerClosed("the other end closed the pipe") from None
        data = data[written:]


def receive(fd: int, deadline: float | None = None, limit: int = MAX_MESSAGE_BYTES) -> Any:
    """Read and decode one framed message (blocking, or until `deadline` on time.monotonic())."""
    (length,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size, deadline))
    if length > limit:
        raise WireError(f"message of {length} bytes announced, over the {limit} limit")
    return decode(_read_exactly(fd, length, deadline))


def _read_exactly(fd: int, count: int, deadline: float | None) -> bytes:
    chunks, remaining = [], count
    while remaining:
        if deadline is not None:
            _wait(fd, deadline, for_write=False)
        try:
            chunk = os.read(fd, min(remaining, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise PeerClosed("the other end closed the pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _wait(fd: int, deadline: float, for_write: bool) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Timeout("deadline passed")
    watched = ([], [fd], []) if for_write else ([fd], [], [])
    ready = select.select(*watched, remaining)
    if not any(ready):
        raise Timeout("deadline passed")
