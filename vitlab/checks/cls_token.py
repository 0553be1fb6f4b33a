"""Stage 2 — class token: ClassToken, [B, N, E] -> [B, N + 1, E] with a learnable token first.

The probe sets `cls_token` to known non-zero values (a zero token would hide an "added instead of
concatenated" mistake) and sends back the output and the token's gradient.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitlab.checks.base import Stage
from vitlab.checks.judging import CheckList, Fail, array, close, need, shape_text
from vitlab.checks.probing import Probe, one_thread, seeded, tensor, to_array, weighted_sum

_Parameter = nn.Parameter
_Tensor = torch.Tensor
_no_grad = torch.no_grad

B, N, E = 3, 7, 15
CAT_HINT = "torch.cat([cls, x], dim=1) with cls = self.cls_token.expand(B, -1, -1)"


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng([seed, 2])
    return {
        "seed": seed,
        "x": rng.standard_normal((B, N, E)).astype(np.float32),
        "token": rng.standard_normal(E).astype(np.float32),
    }


def probe(symbols, inputs):
    ClassToken = symbols["ClassToken"]
    p = Probe()
    state = {}

    def build():
        with seeded(inputs["seed"]):
            module = ClassToken(E)
        token = getattr(module, "cls_token", None)
        state["module"], state["token"] = module, token
        is_tensor = isinstance(token, _Tensor)
        if is_tensor and token.numel() == E:
            with _no_grad():
                token.copy_(tensor(inputs["token"]).reshape(token.shape))
        return {
            "exists": hasattr(module, "cls_token"),
            "tensor": is_tensor,
            "parameter": isinstance(token, _Parameter),
            "in_parameters": any(q is token for q in module.parameters()),
            "shape": list(token.shape) if is_tensor else None,
            "value_set": bool(is_tensor and token.numel() == E),
        }

    def forward():
        return to_array(state["module"](tensor(inputs["x"])), "ClassToken's output")

    def token_gradient():
        token = state["token"]
        if not isinstance(token, _Tensor):
            return None
        token.grad = None
        out = state["module"](tensor(inputs["x"]))
        if not out.requires_grad:  # nothing learnable reaches the output
            return None
        weighted_sum(out).backward()
        return None if token.grad is None else to_array(token.grad, "cls_token.grad")

    p.run("parameter", build)
    p.run("out", forward, needs=("parameter",))
    p.run("grad", token_gradient, needs=("parameter",))
    return p.data


# --- judge ---------------------------------------------------------------------------------

checks = CheckList()


def known_token(inputs, data) -> np.ndarray | None:
    """The value the probe gave cls_token, when it could (it exists and has E numbers)."""
    info = data.get("parameter")
    if isinstance(info, dict) and info.get("value_set") is True:
        return np.asarray(inputs["token"], dtype=np.float64)
    return None


def diagnose(out: np.ndarray, x: np.ndarray, token: np.ndarray | None) -> str:
    """A hint naming the mistake, when the output matches a known wrong formula; else ""."""
    if token is None:
        return ""
    if out.shape == x.shape and close(out, x + token):
        return f"the class token is added to every patch token instead of put in front: {CAT_HINT}"
    if out.shape == (B, N + 1, E) and close(out[:, -1], np.broadcast_to(token, (B, E))) \
            and close(out[:, :-1], x):
        return f"the class token is appended at the end: it must come first, {CAT_HINT}"
    return ""


@checks.add("output shape [B, N + 1, E]", 2, f"shape {shape_text((B, N + 1, E), 'B, N + 1, E')}")
def output_shape(inputs, data, warn):
    out = array(need(data, "out"), what="the output")
    if out.shape == (B, N + 1, E):
        return
    x = np.asarray(inputs["x"], dtype=np.float64)
    hint = diagnose(out, x, known_token(inputs, data))
    if not hint:
        hint = {
            (B, N, E): f"N tokens came out, not N + 1: concatenate the class token, {CAT_HINT}",
            (1, N + 1, E): "expand the class token over the batch: self.cls_token.expand(B, -1, -1)",
            (B, N, E + 1): "concatenate along dim=1 (the tokens), not along the embedding",
        }.get(out.shape, f"prepend one token to the sequence: {CAT_HINT}")
    raise Fail(f"shape {shape_text(out.shape)}", hint)


@checks.add("position 0 holds the class token, the same for every sample", 3,
            "out[:, 0] == cls_token for every sample")
def position_zero(inputs, data, warn):
    out = array(need(data, "out"), (B, N + 1, E))
    x = np.asarray(inputs["x"], dtype=np.float64)
    token = known_token(inputs, data)
    first = out[:, 0]
    if not close(first, np.broadcast_to(first[0], first.shape)):
        raise Fail("out[:, 0] differs from one sample to the next",
                   diagnose(out, x, token)
                   or "the class token must be the same learnable vector for every sample")
    if token is not None and not close(first[0], token):
        raise Fail("out[:, 0] is not the value of self.cls_token",
                   diagnose(out, x, token)
                   or f"put self.cls_token itself first (not a copy, not a new tensor): {CAT_HINT}")


@checks.add("tokens 1..N are the input, unchanged", 2, "out[:, 1:] == x")
def rest_unchanged(inputs, data, warn):
    out = array(need(data, "out"), (B, N + 1, E))
    x = np.asarray(inputs["x"], dtype=np.float64)
    if not close(out[:, 1:], x):
        raise Fail("out[:, 1:] differs from the input x",
                   diagnose(out, x, known_token(inputs, data))
                   or "after the class token the patch tokens must pass through unchanged")


@checks.add("cls_token is an nn.Parameter of shape [1, 1, E] in parameters()", 2,
            f"self.cls_token: nn.Parameter of shape {shape_text((1, 1, E))}")
def learnable(inputs, data, warn):
    info = need(data, "parameter")
    if not info["exists"]:
        raise Fail("no attribute cls_token",
                   "store the token as self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))")
    if not info["tensor"]:
        raise Fail("cls_token is not a tensor", "self.cls_token must be an nn.Parameter")
    if not info["parameter"]:
        raise Fail("cls_token is a plain tensor, not an nn.Parameter",
                   "wrap it in nn.Parameter(...): a plain tensor is not in parameters(), so the "
                   "optimizer never updates it")
    if not info["in_parameters"]:
        raise Fail("cls_token is not among module.parameters()",
                   "assign the nn.Parameter as an attribute of the module in __init__")
    if tuple(info["shape"]) != (1, 1, E):
        raise Fail(f"shape {shape_text(info['shape'])}",
                   "one token, broadcast over batch and sequence: shape [1, 1, embed_dim]")


@checks.add("cls_token receives a gradient", 1, "cls_token.grad to be set and non-zero after backward")
def gets_gradient(inputs, data, warn):
    info = need(data, "parameter")
    grad = need(data, "grad")
    if grad is None:
        hint = ("a plain tensor gets no gradient: make it an nn.Parameter"
                if not info["parameter"] else
                "use self.cls_token in forward without .detach(), .data or torch.no_grad()")
        raise Fail("cls_token.grad is None after backward", hint)
    if not np.abs(array(grad, what="cls_token.grad")).sum() > 0:
        raise Fail("a gradient of zeros", "the class token must reach the output of forward")


STAGE = Stage(
    name="cls_token",
    title="Stage 2 — class token",
    symbols=("ClassToken",),
    max_points=checks.max_points,
    make_inputs=make_inputs,
    probe=one_thread(probe),
    judge=one_thread(checks.judge),
    time_limit_s=30.0,
)
