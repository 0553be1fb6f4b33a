"""Speed-ups the trainer applies: bf16 autocast, torch.compile and fused optimizers.

The trainer asks for a plan once and follows it:

    speed = SpeedPlan.for_device(device)                     # precision="auto", compile=None (auto)
    model = speed.prepare_model(model)
    optimizer = speed.make_optimizer(model.parameters(), "adamw", lr=3e-4, weight_decay=0.05)
    with speed.autocast():
        loss = criterion(model(images), targets)
    loss.backward()

"auto" turns on only what the device runs natively and what was measured to pay off there
(`make bench`, docs/performance.md):
- bf16 autocast where the hardware multiplies bf16 natively (CUDA from Ampere on; CPUs with
  AVX512-BF16 or AMX). Matmuls run in bf16, LayerNorm, softmax statistics, the loss and the
  weights stay fp32, so no loss scaling is needed. A CPU without native bf16 emulates it,
  slower than fp32, so "auto" keeps fp32 there. On a CPU, bf16 attention takes the math
  kernel (see `autocast`).
- torch.compile on CUDA, where fusing the element-wise kernels saves launches and memory
  traffic (the GPU part of `make bench` measures it when a GPU is there). On a 2-core CPU a
  cold compile of the course model took 40 s to 2 minutes (more on a busy machine, and again
  for evaluation) for a step 0-15% faster: a short run does not win it back, so it is off
  there unless asked for (`--compile`).
- fused AdamW/SGD (one kernel for the whole update) wherever PyTorch has it: CUDA and CPU.
- channels-last is left alone: the only 4-D tensors are the 1-channel input and the patch
  convolution, where both layouts are the same bytes.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adamw", "sgd")
FUSED_OPTIMIZER_DEVICES = ("cuda", "cpu")  # torch >= 2.4 has fused AdamW and SGD for both
COMPILE_BY_DEFAULT = ("cuda",)


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 dot products in hardware (AVX512-BF16 or AMX-BF16)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def has_native_bf16(device: torch.device | str) -> bool:
    """True if bf16 matmuls on `device` run in hardware rather than emulated."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def choose_precision(device: torch.device | str, requested: str = "auto") -> str:
    """"bf16" or "fp32": `requested` as given, or for "auto" bf16 where the device has it natively."""
    if requested not in PRECISIONS:
        raise ValueError(f"Unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}.")
    if requested != "auto":
        return requested
    return "bf16" if has_native_bf16(device) else "fp32"


def choose_compile(device: torch.device | str, requested: bool | None = None) -> bool:
    """Whether to torch.compile the model: `requested` if given, else on the devices where it pays off."""
    if requested is not None:
        return requested
    return torch.device(device).type in COMPILE_BY_DEFAULT


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """A context in which matmuls run in bf16 when `precision` is "bf16"; a no-op for "fp32".

    On a CPU in bf16, attention also takes the math kernel (matmul, softmax, matmul, all in
    bf16) instead of the fused flash kernel: for the course's 257 tokens of 64 channels per
    head, PyTorch's CPU flash kernel gains little from bf16 and the math kernel's bf16 matmuls
    make the whole training step about a third faster (docs/performance.md).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"autocast needs a chosen precision, 'fp32' or 'bf16', not {precision!r}.")
    device = torch.device(device)
    context = contextlib.ExitStack()
    context.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"))
    if device.type == "cpu" and precision == "bf16":
        context.enter_context(bf16_math_attention())
    return context


@contextlib.contextmanager
def bf16_math_attention():
    """F.scaled_dot_product_attention through its math kernel, computing in bf16 (not upcast to fp32)."""
    allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()  # a global flag, for every device
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(allowed)


def has_fused_optimizer(device: torch.device | str) -> bool:
    """True if PyTorch has single-kernel (fused) AdamW and SGD updates for `device`."""
    return torch.device(device).type in FUSED_OPTIMIZER_DEVICES


def make_optimizer(params: Iterable, name: str, *, lr: float, weight_decay: float,
                   fused: bool, momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum; `fused` asks for the single-kernel update (see has_fused_optimizer).

    Without it PyTorch picks its own default: foreach on CUDA, a loop over the tensors on CPU.
    """
    fused = fused or None
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"Unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}.")


def prepare_model(model: nn.Module, device: torch.device | str, compile: bool = False) -> nn.Module:
    """Move `model` to `device` and compile it in place when asked.

    In place (nn.Module.compile) so that the object, its state_dict keys and its submodules
    stay the ones the trainer saves and the plots walk.
    """
    model.to(device)
    if compile:
        model.compile()
    return model


@dataclass(frozen=True)
class SpeedPlan:
    """What the trainer turns on for one device; `to_dict()` goes into summary.json."""
    device: str
    precision: str         # "bf16" or "fp32"
    compile: bool
    fused_optimizer: bool

    @classmethod
    def for_device(cls, device: torch.device | str, precision: str = "auto",
                   compile: bool | None = None) -> SpeedPlan:
        device = torch.device(device)
        return cls(device=str(device), precision=choose_precision(device, precision),
                   compile=choose_compile(device, compile),
                   fused_optimizer=has_fused_optimizer(device))

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return prepare_model(model, self.device, compile=self.compile)

    def make_optimizer(self, params: Iterable, name: str, *, lr: float, weight_decay: float,
                       momentum: float = 0.9) -> torch.optim.Optimizer:
        return make_optimizer(params, name, lr=lr, weight_decay=weight_decay,
                              fused=self.fused_optimizer, momentum=momentum)

    def to_dict(self) -> dict:
        return asdict(self)
