"""What the benchmarks ran on, for the report."""
import os
import platform
from pathlib import Path

import torch

from vitlab import performance
from vitlab.phantom import available_cores

# Dense bf16 tensor-core peak (no sparsity) from the vendors' data sheets, in FLOP/s.
# Matched against torch.cuda.get_device_name() in this order (so "H100 PCIe" before "H100").
GPU_PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def gpu_peak_bf16_flops(name: str) -> float | None:
    for key, flops in GPU_PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})


def describe() -> dict:
    machine = {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "cpu_flags": cpu_flags(),
        "native_bf16_cpu": performance.cpu_has_native_bf16(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "gpu": None,
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        machine["gpu"] = {"name": name, "peak_bf16_flops": gpu_peak_bf16_flops(name),
                          "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    return machine
