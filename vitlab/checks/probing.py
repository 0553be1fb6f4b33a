"""The probe side of a check: run student code one sub-step at a time, keep only plain data.

A sub-step that raises is recorded as a string under its own key, so one crash fails one check
and not the whole stage; a ``NotImplementedError`` is re-raised (the stage is then
``not_implemented``). The torch functions the probes rely on are copied here when vitlab.checks is
imported, before any submission is loaded. That is a courtesy to the notebook check: the real
protection is that the verdict is made in another process, from the plain data only.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch

from vitlab.checks.base import describe_exception

_Tensor = torch.Tensor
_from_numpy = torch.from_numpy
_linspace = torch.linspace
_grad = torch.autograd.grad
_enable_grad = torch.enable_grad
_fork_rng = torch.random.fork_rng
_manual_seed = torch.manual_seed
_float64 = torch.float64
_get_num_threads = torch.get_num_threads
_set_num_threads = torch.set_num_threads

RAISED = "__raised__"                    # the sub-step raised: the value is the description
SKIPPED = "__skipped__"                  # not run, because a step it needs failed
NOT_IMPLEMENTED = "__not_implemented__"  # with RAISED: it was a NotImplementedError


class Probe:
    """Collects the plain data of one stage's probe, step by step."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def run(self, key: str, step: Callable[[], Any], needs: tuple[str, ...] = (),
            allow_not_implemented: bool = False) -> Any:
        """Run `step()` and record what it returns under `key` (or the exception it raised).
        Returns the value, or None when it raised or a step in `needs` had failed."""
        for need in needs:
            if not self.ok(need):
                self.data[key] = {SKIPPED: self.why_not(need)}
                if self.data.get(need, {}).get(NOT_IMPLEMENTED):
                    self.data[key][NOT_IMPLEMENTED] = True
                return None
        try:
            value = step()
        except NotImplementedError as exc:
            if not allow_not_implemented:
                raise
            self.data[key] = {RAISED: describe_exception(exc), NOT_IMPLEMENTED: True}
            return None
        except Exception as exc:
            self.data[key] = {RAISED: describe_exception(exc)}
            return None
        self.data[key] = value
        return value

    def ok(self, key: str) -> bool:
        value = self.data.get(key, {SKIPPED: "not run"})
        return not (isinstance(value, dict) and (RAISED in value or SKIPPED in value))

    def why_not(self, key: str) -> str:
        value = self.data.get(key, {})
        if RAISED in value:
            return f"an earlier step raised {value[RAISED]}"
        return value.get(SKIPPED, "an earlier step did not run")


def tensor(array: Any, requires_grad: bool = False) -> torch.Tensor:
    """A fresh float32 tensor from the inputs' numpy data (the probe never shares the inputs)."""
    t = _from_numpy(np.array(array, dtype=np.float32))
    return t.requires_grad_(requires_grad)


def to_array(value: Any, what: str) -> np.ndarray:
    """A student tensor as a float64 numpy array; anything else is a TypeError naming `what`."""
    if not isinstance(value, _Tensor):
        raise TypeError(f"{what} should be a torch.Tensor, got {type(value).__name__}")
    return value.detach().to("cpu", _float64).numpy().copy()


def as_pair(value: Any, what: str) -> tuple[Any, Any]:
    """`(out, weights)` as returned with return_attention=True."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        got = f"a {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, (tuple, list)) else "")
        raise TypeError(f"{what} should return a pair (out, weights), got {got}")
    return value[0], value[1]


def weighted_sum(t: torch.Tensor) -> torch.Tensor:
    """A scalar that depends on every element of `t` with a distinct positive weight, so a
    gradient through it is zero only where `t` really does not depend on the input."""
    if not isinstance(t, _Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    weights = _linspace(0.5, 1.5, t.numel(), dtype=t.dtype).reshape(t.shape)
    return (t * weights).sum()


def gradient(output: torch.Tensor, wrt: torch.Tensor) -> np.ndarray:
    """d weighted_sum(output) / d wrt, as an array (zeros where there is no path)."""
    with _enable_grad():
        (g,) = _grad(weighted_sum(output), wrt, retain_graph=True, allow_unused=True)
    return np.zeros(tuple(wrt.shape)) if g is None else to_array(g, "the gradient")


def token_influence(module, x, token: int | None = None) -> np.ndarray:
    """[B, T]: how much module(x) (its token `token`, when given) depends on each input token."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    return np.abs(gradient(out if token is None else out[:, token], x)).sum(axis=-1)


def batch_outputs(module, x, train: bool) -> dict:
    """The batch's output, and each sample's output when it is alone in its batch, in train or
    eval mode (the module is left in eval mode)."""
    module.train(train)
    try:
        together = to_array(module(x), "the output")
        alone = np.concatenate([to_array(module(x[i:i + 1]), "the output") for i in range(len(x))])
    finally:
        module.eval()
    return {"together": together, "alone": alone}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for building student modules, and give the caller's RNG state back after."""
    with _fork_rng(devices=[]):
        _manual_seed(seed)
        yield


def one_thread(function: Callable) -> Callable:
    """Run `function` with one torch thread: the checks' tensors are tiny, and on a busy machine
    waiting threads cost several times the work itself. The caller's setting is restored."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        before = _get_num_threads()
        _set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            _set_num_threads(before)
    return wrapper
