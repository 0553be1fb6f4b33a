"""Peak memory of one model setup on the CPU, measured in a fresh process.

tracemalloc does not see PyTorch's allocations, so we read the process's peak resident set
before the first step and after two: VmHWM from /proc/self/status where there is one (not
ru_maxrss, which on Linux keeps the parent's peak across fork and exec), else ru_maxrss.
Run by bench.model, one process per setup:

    python -m bench.memory '{"model": "reference", "plan": {...}, "mode": "train", ...}'
"""
import json
import resource
import sys
from pathlib import Path

from bench.model import COURSE_CONFIG, TINY_CONFIG, Setup, inference_step, training_step
from vitlab.performance import SpeedPlan

CONFIGS = {"course": COURSE_CONFIG, "tiny": TINY_CONFIG}


def peak_rss_mib() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def main(spec: dict) -> dict:
    setup = Setup(name=spec["model"], model=spec["model"], plan=SpeedPlan(**spec["plan"]),
                  channels_last=spec["channels_last"], flash_attention=spec["flash_attention"])
    make_step = training_step if spec["mode"] == "train" else inference_step
    step = make_step(setup, CONFIGS[spec["config"]], spec["batch"])
    before = peak_rss_mib()
    for _ in range(2):
        step()
    peak = peak_rss_mib()
    return {"peak_mib": peak, "step_mib": peak - before}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
