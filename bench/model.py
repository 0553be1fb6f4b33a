"""Model benchmark: the reference ViT against timm's and a textbook one, same config.

Training throughput (forward, backward, AdamW step), inference throughput, peak memory,
achieved FLOP/s, on the CPU (bench.gpu runs the same on a GPU, with the fraction of its peak). The trainer's default path is
`vitlab.performance.SpeedPlan.for_device(device)`, exactly what `vitlab train` uses.
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

import solutions
from bench import accuracy, flops, machine
from bench.textbook import TextbookViT
from bench.timing import Case, interleave, slug, summarise
from vitlab.performance import SpeedPlan

COURSE_CONFIG = dict(img_size=256, patch_size=16, in_channels=1, num_classes=3, embed_dim=192,
                     depth=6, num_heads=3, mlp_ratio=4.0)
TINY_CONFIG = dict(img_size=32, patch_size=8, in_channels=1, num_classes=3, embed_dim=24,
                   depth=2, num_heads=3, mlp_ratio=2.0)
BATCH = 32
BASELINE = "timm fp32"
MODELS = ("reference", "timm", "textbook")


def build_model(name: str, config: dict) -> nn.Module:
    if name == "reference":
        return solutions.VisionTransformer(**config)
    if name == "textbook":
        return TextbookViT(**config)
    if name == "timm":
        from timm.models.vision_transformer import VisionTransformer
        return VisionTransformer(
            img_size=config["img_size"], patch_size=config["patch_size"], in_chans=config["in_channels"],
            num_classes=config["num_classes"], embed_dim=config["embed_dim"], depth=config["depth"],
            num_heads=config["num_heads"], mlp_ratio=config["mlp_ratio"], class_token=True, global_pool="token")
    raise ValueError(f"Unknown model {name!r}: use one of {', '.join(MODELS)}.")


@dataclass(frozen=True)
class Setup:
    """One benchmarked configuration: a model and the speed-ups it runs with."""
    name: str
    model: str
    plan: SpeedPlan
    channels_last: bool = False
    flash_attention: bool = False  # bf16 autocast alone, leaving attention to PyTorch's flash kernel

    def autocast(self):
        if self.flash_attention:
            return torch.autocast(torch.device(self.plan.device).type, dtype=torch.bfloat16,
                                  enabled=self.plan.precision == "bf16")
        return self.plan.autocast()


def plain(device) -> SpeedPlan:
    """fp32, eager, PyTorch's default optimizer implementation: what a plain script does."""
    return SpeedPlan(device=str(device), precision="fp32", compile=False, fused_optimizer=False)


def training_setups(device) -> list[Setup]:
    default = SpeedPlan.for_device(device)
    fp32 = plain(device)
    setups = [
        Setup(BASELINE, "timm", fp32),
        Setup("reference fp32", "reference", fp32),
        Setup("textbook fp32", "textbook", fp32),
        Setup("reference fp32 + fused AdamW", "reference", replace(fp32, fused_optimizer=True)),
        Setup("reference fp32 channels-last", "reference", fp32, channels_last=True),
        Setup("reference bf16 autocast", "reference", replace(fp32, precision="bf16")),
        Setup("reference bf16 autocast, flash attention", "reference", replace(fp32, precision="bf16"),
              flash_attention=True),
        Setup("reference default path", "reference", default),
        Setup("timm default path", "timm", default),
        Setup("textbook default path", "textbook", default),
    ]
    if not default.compile:  # show what compiling would have given, and what it costs
        setups.append(Setup("reference default path + compile", "reference", replace(default, compile=True)))
    return setups


def inference_setups(device) -> list[Setup]:
    default = SpeedPlan.for_device(device)
    fp32 = plain(device)
    return [
        Setup(BASELINE, "timm", fp32),
        Setup("reference fp32", "reference", fp32),
        Setup("textbook fp32", "textbook", fp32),
        Setup("reference default path", "reference", default),
        Setup("timm default path", "timm", default),
    ]


def make_batch(config: dict, batch: int, device, channels_last: bool = False):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, config["in_channels"], config["img_size"], config["img_size"], generator=generator)
    targets = torch.randint(0, config["num_classes"], (batch,), generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(device), targets.to(device)


def prepare(setup: Setup, config: dict) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(setup.model, config)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return setup.plan.prepare_model(model)


def training_step(setup: Setup, config: dict, batch: int):
    """A function that runs one training step (forward, loss, backward, AdamW) of `setup`."""
    model = prepare(setup, config).train()
    optimizer = setup.plan.make_optimizer(model.parameters(), "adamw", lr=1e-3, weight_decay=0.05)
    images, targets = make_batch(config, batch, setup.plan.device, setup.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        return loss
    return step


def inference_step(setup: Setup, config: dict, batch: int):
    model = prepare(setup, config).eval()
    images, _ = make_batch(config, batch, setup.plan.device, setup.channels_last)

    def step():
        with torch.inference_mode(), setup.autocast():
            return model(images)
    return step


def synchronize(device: str):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_cases(setups: list[Setup], make_step, config: dict, batch: int, steps: int, log):
    """Build every setup's step, run it once (compiles, warms caches) and wrap it as a Case."""
    cases, first_step_s = [], {}
    for setup in setups:
        step = make_step(setup, config, batch)
        start = time.perf_counter()
        step()
        synchronize(setup.plan.device)
        first_step_s[setup.name] = time.perf_counter() - start
        log(f"  ready: {setup.name} (first step {first_step_s[setup.name]:.1f} s)")

        def run(step=step, device=setup.plan.device):
            for _ in range(steps):
                step()
            synchronize(device)
        cases.append(Case(setup.name, run, work=steps * batch))
    return cases, first_step_s


def throughput(setups, make_step, config, batch, steps, rounds, log) -> dict:
    cases, first_step_s = timed_cases(setups, make_step, config, batch, steps, log)
    summary = summarise(interleave(cases, BASELINE, rounds, log), BASELINE)
    for setup in setups:
        entry = summary[setup.name]
        entry["plan"] = setup.plan.to_dict() | {"model": setup.model, "channels_last": setup.channels_last,
                                                "flash_attention": setup.flash_attention}
        entry["first_step_s"] = first_step_s[setup.name]
        entry["step_s"] = batch / entry["median_per_s"]
        # one-off cost of the first step (compilation, allocator warm-up) beyond a normal step
        entry["warmup_overhead_s"] = max(0.0, entry["first_step_s"] - entry["step_s"])
    return summary


def peak_memory_cpu(setup: Setup, mode: str, config_name: str, batch: int) -> dict:
    """Peak resident memory of a fresh process that builds `setup` and runs two steps."""
    args = [sys.executable, "-m", "bench.memory", json.dumps({
        "model": setup.model, "plan": setup.plan.to_dict(), "channels_last": setup.channels_last,
        "flash_attention": setup.flash_attention, "mode": mode, "config": config_name, "batch": batch})]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe for {setup.name!r} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_memory_cuda(setup: Setup, make_step, config: dict, batch: int) -> dict:
    step = make_step(setup, config, batch)
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mib": peak / 2**20, "step_mib": (peak - before) / 2**20}


def memory(setups, mode, config, config_name, batch, device, log) -> dict:
    make_step = training_step if mode == "train" else inference_step
    results = {}
    for setup in setups:
        if torch.device(device).type == "cuda":
            results[setup.name] = peak_memory_cuda(setup, make_step, config, batch)
        else:
            results[setup.name] = peak_memory_cpu(setup, mode, config_name, batch)
        log(f"  memory ({mode}) {setup.name}: {results[setup.name]}")
    return results


def run_device(device: str, config: dict, config_name: str, batch: int, rounds: int, steps: int,
               log=print, train_setups: list[Setup] | None = None, infer_setups: list[Setup] | None = None,
               measure_memory: bool = True) -> dict:
    """Everything measured on one device: throughput, FLOP/s, memory (of the setups given, else all)."""
    train_setups = train_setups or training_setups(device)
    infer_setups = infer_setups or inference_setups(device)
    forward_flops = flops.forward_flops(**config)["total"]
    train_flops = flops.training_flops(**config)
    log(f"training throughput on {device}, batch {batch}")
    training = throughput(train_setups, training_step, config, batch, steps, rounds, log)
    log(f"inference throughput on {device}, batch {batch}")
    inference = throughput(infer_setups, inference_step, config, batch, steps * 3, rounds, log)
    peak = None
    if torch.device(device).type == "cuda":
        peak = machine.gpu_peak_bf16_flops(torch.cuda.get_device_name())
    for table, per_image in ((training, train_flops), (inference, forward_flops)):
        for entry in table.values():
            entry["flops_per_s"] = entry["median_per_s"] * per_image
            entry["fraction_of_peak_bf16"] = entry["flops_per_s"] / peak if peak else None
    interesting = [s for s in train_setups
                   if s.name in (BASELINE, "reference fp32", "textbook fp32", "reference default path")]
    return {
        "device": device,
        "batch": batch,
        "flops_per_image": {"forward": forward_flops, "training": train_flops},
        "training": training,
        "inference": inference,
        "memory": {
            "train": memory(interesting, "train", config, config_name, batch, device, log),
            "inference": memory([s for s in infer_setups if s.name in {i.name for i in interesting}],
                                "inference", config, config_name, batch, device, log),
        } if measure_memory else {},
    }


def target(what: str, value: float, goal: float) -> dict:
    return {"what": what, "value": value, "goal": goal, "met": value >= goal}


def ratio(table: dict, name: str) -> float:
    return table[name][f"ratio_to_{slug(BASELINE)}"]


def throughput_rows(table: dict) -> list[list[str]]:
    rows = []
    for name, entry in table.items():
        plan = entry["plan"]
        speedups = [plan["precision"]] + [label for flag, label in (
            (plan["fused_optimizer"], "fused AdamW"), (plan["compile"], "compile"),
            (plan["channels_last"], "channels-last"),
            (plan["precision"] == "bf16" and plan["device"] == "cpu", "flash attention" if plan["flash_attention"]
             else "math attention")) if flag]
        rows.append([name, ", ".join(speedups), f"{entry['median_per_s']:.1f}",
                     f"{ratio(table, name):.2f}x", f"{entry['flops_per_s'] / 1e9:.3g}",
                     f"{entry['warmup_overhead_s']:.1f}"])
    return rows


def sections(device_results: dict, label: str) -> list[dict]:
    columns = ["setup", "speed-ups", "images/s (median)", f"vs {BASELINE} (median of per-round ratios)",
               "GFLOP/s", "first-step overhead s"]
    out = [
        {"title": f"Training throughput, {label}, batch {device_results['batch']}", "columns": columns,
         "rows": throughput_rows(device_results["training"])},
        {"title": f"Inference throughput, {label}, batch {device_results['batch']}", "columns": columns,
         "rows": throughput_rows(device_results["inference"])},
    ]
    memory_rows = []
    for mode, table in device_results["memory"].items():
        base = table[BASELINE]["peak_mib"]
        for name, entry in table.items():
            memory_rows.append([mode, name, f"{entry['peak_mib']:.0f}", f"{entry['step_mib']:.0f}",
                                f"{entry['peak_mib'] / base:.2f}x"])
    kind = "GPU memory allocated" if device_results["device"].startswith("cuda") else "process peak RSS"
    out.append({"title": f"Peak memory, {label} ({kind}), batch {device_results['batch']}",
                "columns": ["mode", "setup", "peak MiB", "MiB added by the steps", f"peak vs {BASELINE}"],
                "rows": memory_rows})
    peak_fractions = [[name, f"{entry['fraction_of_peak_bf16'] * 100:.1f}%"]
                      for name, entry in device_results["training"].items() if entry["fraction_of_peak_bf16"]]
    if peak_fractions:
        out.append({"title": f"Training FLOP/s as a fraction of the GPU's dense bf16 peak, batch {device_results['batch']}",
                    "columns": ["setup", "fraction of peak"], "rows": peak_fractions})
    return out


def short_run_accuracy(config: dict, quick: bool, log) -> dict:
    from vitlab.phantom import generate_phantom_dataset

    volumes, epochs = (4, 1) if quick else (10, 4)
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-phantom-") as root:
        generate_phantom_dataset(root, volumes=volumes, size=config["img_size"])
        log(f"short training run: fp32 against the default path, {epochs} epochs on {volumes} phantom volumes")
        return accuracy.compare(root, config, epochs, log)


def accuracy_section(result: dict) -> dict:
    runs = result["runs"]
    rows = [[name, f"{100 * r['test_accuracy']:.1f}%", f"{r['test_loss']:.4f}", f"{r['final_train_loss']:.4f}",
             f"{r['train_seconds']:.0f}", f"{runs['fp32']['train_seconds'] / r['train_seconds']:.2f}x"]
            for name, r in runs.items()]
    return {"title": (f"A short real run: course model, {result['epochs']} epochs on {result['train_slices']} phantom "
                      f"slices, tested on {result['test_slices']} (majority baseline "
                      f"{100 * result['majority_baseline']:.1f}%)"),
            "columns": ["path", "test accuracy", "test loss", "last epoch's train loss", "train seconds",
                        "speed vs fp32"],
            "rows": rows}


def notes(training: dict) -> list[str]:
    """What the CPU figures say about each speed-up the trainer could use."""
    r = {name: ratio(training, name) for name in training}
    out = [
        f"bf16 autocast: {r['reference bf16 autocast, flash attention']:.2f}x timm fp32 with PyTorch's flash "
        f"attention kernel, {r['reference bf16 autocast']:.2f}x with attention on the math kernel in bf16 "
        f"(what `vitlab.performance.autocast` picks on a CPU); the reference in fp32 is {r['reference fp32']:.2f}x.",
        f"fused AdamW: {r['reference fp32 + fused AdamW'] / r['reference fp32']:.2f}x the default AdamW "
        f"(same model, fp32).",
        f"channels-last: {r['reference fp32 channels-last'] / r['reference fp32']:.2f}x: with one input "
        f"channel both layouts are the same bytes, so the trainer leaves it off.",
    ]
    compiled = "reference default path + compile"
    if compiled in training:
        eager, entry = training["reference default path"], training[compiled]
        gain = 1 / eager["median_per_s"] - 1 / entry["median_per_s"]  # seconds saved per image
        verdict = (f"it is won back after {entry['warmup_overhead_s'] / (gain * BATCH):.0f} steps of batch "
                   f"{BATCH}, not counting the second compile for evaluation" if gain > 0 else "it is never won back")
        out.append(f"torch.compile (a cold compile, the first step): {entry['warmup_overhead_s']:.0f} s, then "
                   f"{r[compiled] / r['reference default path']:.2f}x the eager default path per step: "
                   f"{verdict}; the trainer compiles on CUDA only.")
    return out


@contextlib.contextmanager
def patched_environ(**values):
    """Set environment variables for the block; restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(rounds: int = 5, quick: bool = False, log=print) -> dict:
    # a cold compile, as on a student's first run
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-inductor-") as cache, \
            patched_environ(TORCHINDUCTOR_CACHE_DIR=cache):
        return run_all(rounds, quick, log)


def run_all(rounds: int, quick: bool, log) -> dict:
    config, config_name = (TINY_CONFIG, "tiny") if quick else (COURSE_CONFIG, "course")
    batch = 4 if quick else BATCH
    results = {
        "title": "Model",
        "config": config,
        "cpu": run_device("cpu", config, config_name, batch, rounds, steps=1, log=log),
    }
    cpu = results["cpu"]
    results["accuracy"] = short_run_accuracy(config, quick, log)
    runs = results["accuracy"]["runs"]
    results["targets"] = [
        target("training: reference fp32 vs timm fp32 (CPU)", ratio(cpu["training"], "reference fp32"), 1.0),
        target("training: trainer's default path vs timm fp32 (CPU)",
               ratio(cpu["training"], "reference default path"), 1.3),
        target("short run: test accuracy of the default path minus fp32's (points)",
               100 * (runs["default path"]["test_accuracy"] - runs["fp32"]["test_accuracy"]), 0.0),
    ]
    results["notes"] = notes(cpu["training"])
    results["sections"] = sections(cpu, "CPU") + [accuracy_section(results["accuracy"])]
    return results
