"""GPU benchmark: the model benchmark on a CUDA GPU, and `vitlab train` end to end there.

Model: the reference against timm's ViT and the textbook one, course config, at batch 32 (the CPU
benchmark's) and 256 (a batch that fills a large GPU): fp32, bf16 autocast with fused AdamW, and
the trainer's default path (bf16 autocast, fused AdamW, torch.compile), as images/s and as a
fraction of the GPU's dense bf16 peak (FLOPs counted by bench.flops).

Trainer: `vitlab.train.train` on the built-in phantom set, course model, with 0 and with 4
DataLoader workers (fewer on a machine with fewer cores), against the same model's training step
alone at the same batch: how much of the GPU's speed the whole run keeps, data loading included.

Skipped where there is no CUDA GPU.
"""
import tempfile
import time
from dataclasses import replace

import torch

from bench import model
from bench.model import BASELINE, COURSE_CONFIG, TINY_CONFIG, Setup
from vitlab.performance import SpeedPlan
from vitlab.phantom import available_cores, generate_phantom_dataset

BATCHES = (32, 256)
TRAINER_BATCH = 256
TRAINER_WORKERS = (0, min(4, available_cores()))


def missing() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


GPU_TRAINING = (BASELINE, "reference fp32", "textbook fp32", "reference default path", "timm default path")
GPU_INFERENCE = (BASELINE, "reference fp32", "reference default path")


def training_setups(device) -> list[Setup]:
    """The model benchmark's setups less the CPU-only ones (channels-last, CPU attention kernels),
    plus the default path without compile, to show what torch.compile adds on the GPU."""
    default = SpeedPlan.for_device(device)
    return ([setup for setup in model.training_setups(device) if setup.name in GPU_TRAINING]
            + [Setup("reference default path without compile", "reference", replace(default, compile=False))])


def inference_setups(device) -> list[Setup]:
    return [setup for setup in model.inference_setups(device) if setup.name in GPU_INFERENCE]


def trainer_runs(config_name: str, epochs: int, batch: int, device: str, log, data_dir=None) -> dict:
    """`vitlab train` per worker count, on `data_dir` or the built-in set (made in a temporary cache)."""
    from vitlab.train import TrainConfig, train

    runs = {}
    with tempfile.TemporaryDirectory(prefix="vitlab-bench-gpu-") as tmp, model.patched_environ(VITLAB_CACHE=tmp):
        for workers in TRAINER_WORKERS:
            start = time.perf_counter()
            summary = train(TrainConfig(data_dir=data_dir, model=config_name, device=device, epochs=epochs,
                                        batch_size=batch, workers=workers, out=f"{tmp}/run-{workers}"))
            runs[f"{workers} workers"] = {
                "images_per_s": summary["images_per_second"], "test_accuracy": summary["test_accuracy"],
                "majority_baseline": summary["majority_baseline"], "wall_s": time.perf_counter() - start,
                "epochs": epochs, "batch": batch, "model": config_name, "speed": summary["speed"],
                "data": "built-in set" if data_dir is None else f"{summary['split_sizes']['train']} training slices"}
            log(f"  trainer, {workers} workers: {runs[f'{workers} workers']}")
    return runs


def run(rounds: int = 5, quick: bool = False, log=print, batches=BATCHES, trainer: bool = True,
        device: str = "cuda", measure_memory: bool = True) -> dict:
    """`device` other than CUDA only for the tests, which run this code path on the CPU in quick mode."""
    config, config_name = (TINY_CONFIG, "tiny") if quick else (COURSE_CONFIG, "course")
    results = {"title": "GPU", "config": config, "runs": [
        model.run_device(device, config, config_name, batch, rounds, steps=2 if quick else 20, log=log,
                         train_setups=training_setups(device), infer_setups=inference_setups(device),
                         measure_memory=measure_memory)
        for batch in ((4,) if quick else batches)]}
    if trainer and quick:
        with tempfile.TemporaryDirectory(prefix="vitlab-bench-gpu-data-") as data_dir:
            generate_phantom_dataset(data_dir, volumes=4, size=32, slices=8, workers=1)
            results["trainer"] = trainer_runs(config_name, 1, 4, device, log, data_dir=data_dir)
    elif trainer:
        results["trainer"] = trainer_runs(config_name, 4, TRAINER_BATCH, device, log)
    return finish(results)


def finish(results: dict) -> dict:
    """The report's tables from the measured runs."""
    results["sections"] = [section for device_run in results["runs"] for section in model.sections(device_run, "GPU")]
    trainer = results.get("trainer")
    if trainer:
        step_alone = {r["batch"]: r["training"]["reference default path"]["median_per_s"] for r in results["runs"]}
        rows = []
        for name, entry in trainer.items():
            alone = step_alone.get(entry["batch"])
            rows.append([name, f"{entry['images_per_s']:.0f}",
                         f"{entry['images_per_s'] / alone:.2f}" if alone else "not measured",
                         f"{100 * entry['test_accuracy']:.1f}%", f"{100 * entry['majority_baseline']:.1f}%",
                         f"{entry['wall_s']:.0f}"])
        first = next(iter(trainer.values()))
        results["sections"].append({
            "title": (f"vitlab train on the GPU: {first['model']} model, {first['data']}, {first['epochs']} "
                      f"epoch(s), batch {first['batch']}"),
            "columns": ["DataLoader", "training images/s", "share of the step alone (same batch)",
                        "test accuracy", "majority baseline", "wall s (compile and evaluation included)"],
            "rows": rows})
    return results
