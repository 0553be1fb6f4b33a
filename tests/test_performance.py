"""The trainer's fast paths compute what the plain fp32 path computes, on this CPU.

bf16 autocast, fused optimizers and torch.compile are checked against plain fp32 eager
PyTorch; the CUDA plan's switches (bf16 + compile + fused) run here on the CPU, so the GPU
code path is exercised for correctness even without a GPU. No timings are asserted: speed is
measured by `make bench` (docs/performance.md). The benchmark's own arithmetic (FLOP count,
ratios, report) is checked at the end.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import solutions
from bench import flops, report
from bench.model import TINY_CONFIG, Setup, build_model, inference_step, plain, training_step
from bench.textbook import TextbookViT
from bench.timing import Case, interleave, summarise
from vitlab import performance
from vitlab.performance import SpeedPlan

SMALL = dict(img_size=32, patch_size=8, in_channels=1, num_classes=3, embed_dim=24, depth=2,
             num_heads=3, mlp_ratio=2.0)


def cpuinfo_flags() -> set[str]:
    return set(Path("/proc/cpuinfo").read_text().split())


def small_batch(n=8):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 32, 32, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def train_steps(plan: SpeedPlan, steps: int = 3, optimizer: str = "adamw", model=None):
    """Train a small reference ViT for a few steps under `plan`; return (losses, weight update)."""
    torch.manual_seed(0)
    model = plan.prepare_model(model or solutions.VisionTransformer(**SMALL))
    start = flat(model.parameters())
    opt = plan.make_optimizer(model.parameters(), optimizer, lr=1e-3, weight_decay=0.05)
    images, targets = small_batch()
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with plan.autocast():
            loss = F.cross_entropy(model(images), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, flat(model.parameters()) - start


def assert_trains_like(run, reference):
    """Same losses step by step, and weight updates pointing the same way."""
    losses, update = run
    reference_losses, reference_update = reference
    assert losses[-1] < losses[0]
    assert losses == pytest.approx(reference_losses, abs=0.02)
    assert F.cosine_similarity(update, reference_update, dim=0) > 0.95


@pytest.fixture(scope="module")
def fp32_run():
    return train_steps(plain("cpu"))


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux's /proc/cpuinfo")
def test_native_bf16_detection_agrees_with_cpuinfo():
    assert performance.cpu_has_native_bf16() == bool(cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_it():
    expected = "bf16" if performance.cpu_has_native_bf16() else "fp32"
    assert performance.choose_precision("cpu") == expected
    assert performance.choose_precision("cpu", "fp32") == "fp32"
    assert performance.choose_precision("cpu", "bf16") == "bf16"
    assert performance.choose_precision("meta") == "fp32"


def test_unknown_precision_and_optimizer_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="Unknown precision 'fp16'.*auto, fp32, bf16"):
        performance.choose_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="chosen precision"):
        performance.autocast("cpu", "auto")
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'.*adamw, sgd"):
        performance.make_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", lr=1e-3,
                                   weight_decay=0.0, fused=False)


def test_default_plans_for_cpu_and_cuda():
    cpu = SpeedPlan.for_device("cpu")
    assert cpu == SpeedPlan("cpu", performance.choose_precision("cpu"), compile=False, fused_optimizer=True)
    cuda = SpeedPlan.for_device("cuda")
    assert cuda.compile and cuda.fused_optimizer
    assert cuda.precision == ("bf16" if performance.has_native_bf16("cuda") else "fp32")
    assert SpeedPlan.for_device("cpu", precision="fp32", compile=True).to_dict() == {
        "device": "cpu", "precision": "fp32", "compile": True, "fused_optimizer": True}


def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_weights_fp32():
    torch.manual_seed(0)
    model = solutions.VisionTransformer(**SMALL)
    images, targets = small_batch()
    with performance.autocast("cpu", "bf16"):
        logits = model(images)
        loss = F.cross_entropy(logits, targets)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    with performance.autocast("cpu", "fp32"):
        assert model(images).dtype == torch.float32


def attention_kernels(precision: str) -> set[str]:
    """The aten attention kernels a forward of the reference model runs under `autocast`."""
    from torch.profiler import profile
    model = solutions.VisionTransformer(**SMALL)
    with profile() as prof, performance.autocast("cpu", precision):
        model(small_batch()[0])
    return {event.key for event in prof.key_averages() if "scaled_dot_product" in event.key}


def test_cpu_bf16_attention_takes_the_math_kernel_in_bf16_and_restores_the_settings():
    assert "aten::_scaled_dot_product_attention_math" in attention_kernels("bf16")
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in attention_kernels("fp32")
    assert not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    with pytest.raises(RuntimeError, match="inside"):
        with performance.autocast("cpu", "bf16"):
            assert torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
            raise RuntimeError("inside")
    assert not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    q, k, v = torch.randn(3, 2, 3, 9, 8).unbind(0)
    with performance.autocast("cpu", "bf16"):
        out = F.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v), atol=0.03, rtol=0.03)


def test_bf16_forward_and_gradients_agree_with_fp32():
    torch.manual_seed(0)
    model = solutions.VisionTransformer(**SMALL)
    images, targets = small_batch()

    def logits_and_grad(precision):
        model.zero_grad()
        with performance.autocast("cpu", precision):
            logits = model(images)
        F.cross_entropy(logits.float(), targets).backward()
        return logits.float(), torch.cat([p.grad.flatten() for p in model.parameters()])

    logits32, grad32 = logits_and_grad("fp32")
    logits16, grad16 = logits_and_grad("bf16")
    torch.testing.assert_close(logits16, logits32, atol=0.05, rtol=0.05)
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99


def test_default_cpu_path_trains_like_fp32(fp32_run):
    assert_trains_like(train_steps(SpeedPlan.for_device("cpu")), fp32_run)


def test_channels_last_is_the_same_bytes_for_one_channel_images():
    """Why the trainer leaves channels-last off: for [B, 1, H, W] it changes no byte and no result."""
    torch.manual_seed(0)
    model = solutions.VisionTransformer(**SMALL).eval()
    images = small_batch()[0]
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert channels_last.data_ptr() == images.data_ptr()
    weight = model.patch_embed.proj.weight
    assert weight.contiguous(memory_format=torch.channels_last).data_ptr() == weight.data_ptr()
    with torch.no_grad():
        expected = model(images)
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(channels_last), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_matches_the_loop_implementation(name):
    params = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(7, 5)
        opt = performance.make_optimizer(model.parameters(), name, lr=0.1, weight_decay=0.05, fused=fused)
        assert opt.defaults["fused"] is (True if fused else None)
        for _ in range(3):
            opt.zero_grad()
            model(torch.ones(2, 7)).square().sum().backward()
            opt.step()
        params[fused] = flat(model.parameters())
    torch.testing.assert_close(params[True], params[False], atol=1e-6, rtol=1e-5)


def test_gpu_plan_switches_compile_bf16_fused_are_correct_on_cpu(fp32_run):
    """What SpeedPlan.for_device("cuda") turns on, run on the CPU: torch.compile in place."""
    from torch._dynamo.utils import counters
    plan = SpeedPlan("cpu", precision="bf16", compile=True, fused_optimizer=True)
    torch.manual_seed(0)
    model = solutions.VisionTransformer(**SMALL)
    keys = list(model.state_dict())
    counters.clear()
    assert_trains_like(train_steps(plan, model=model), fp32_run)
    assert counters["stats"]["unique_graphs"] >= 1  # the model really ran compiled
    assert list(model.state_dict()) == keys          # compiled in place: checkpoints unchanged


def test_the_trainer_follows_the_default_plan_and_records_it(tmp_path):
    from vitlab.phantom import generate_phantom_dataset
    from vitlab.train import TrainConfig, TrainError, train

    generate_phantom_dataset(tmp_path / "data", volumes=4, size=32, slices=6, workers=1)
    summary = train(TrainConfig(data_dir=str(tmp_path / "data"), out=str(tmp_path / "run"), model="tiny",
                                epochs=1, batch_size=8, augment="none"))
    assert summary["speed"] == SpeedPlan.for_device("cpu").to_dict()
    assert summary["config"]["precision"] == "auto"
    with pytest.raises(TrainError, match="Unknown precision 'fp16'"):
        TrainConfig(precision="fp16")


def test_flop_count_matches_torch_flop_counter_on_the_textbook_model():
    from torch.utils.flop_counter import FlopCounterMode
    model = TextbookViT(**SMALL)
    images = torch.rand(1, 1, 32, 32)
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        model(images)
    assert forward_counter.get_total_flops() == flops.forward_flops(**SMALL)["total"]
    with FlopCounterMode(display=False) as training_counter:
        model(images).sum().backward()
    assert training_counter.get_total_flops() == flops.training_flops(**SMALL)


def test_benchmark_models_share_the_config_and_parameter_count():
    counts = {name: sum(p.numel() for p in build_model(name, TINY_CONFIG).parameters())
              for name in ("reference", "timm", "textbook")}
    assert counts["reference"] == counts["timm"] == counts["textbook"]
    with pytest.raises(ValueError, match="Unknown model 'vgg'"):
        build_model("vgg", TINY_CONFIG)


def test_benchmark_steps_run_for_every_model_and_plan():
    for name in ("reference", "timm", "textbook"):
        for plan in (plain("cpu"), SpeedPlan.for_device("cpu")):
            setup = Setup(f"{name} {plan.precision}", name, plan)
            first = training_step(setup, TINY_CONFIG, 4)()
            assert torch.isfinite(first)
            second = training_step(setup, TINY_CONFIG, 4)()
            assert first.item() == pytest.approx(second.item())  # same seed, same batch
            assert inference_step(setup, TINY_CONFIG, 4)().shape == (4, 3)


def test_each_case_is_timed_between_two_baseline_runs_in_rotating_order():
    ran = []
    cases = [Case(name, lambda name=name: ran.append(name), work=1) for name in ("base", "a", "b", "c")]
    measured = interleave(cases, "base", rounds=2, log=lambda line: None)
    assert ran == ["base", "a", "b", "base", "c", "base",
                   "base", "b", "c", "base", "a", "base"]
    assert {name: len(values["ratios"]) for name, values in measured.items()} == {"base": 2, "a": 2, "b": 2, "c": 2}
    summary = summarise({"base": {"rates": [10.0, 20.0, 40.0], "ratios": [1.0, 1.0, 1.0]},
                         "fast": {"rates": [15.0, 30.0, 40.0], "ratios": [1.5, 1.5, 1.0]}}, "base")
    assert summary["fast"]["ratio_to_base"] == 1.5
    assert summary["base"]["median_per_s"] == 20.0


def test_report_renders_targets_and_tables():
    results = {"model": {"title": "Model", "date": "today", "notes": ["a note"],
                         "targets": [{"what": "x vs y", "goal": 1.3, "value": 1.2, "met": False}],
                         "sections": [{"title": "T", "columns": ["a", "b"], "rows": [[1, 2]]}]}}
    text = report.render(results)
    assert "| x vs y | 1.3 | 1.20 | **missed** |" in text
    assert "### T\n\n| a | b |\n|---|---|\n| 1 | 2 |" in text
    assert "- a note" in text
    assert "## Data\n\nNot run yet" in text


def test_gpu_benchmark_code_path_runs_on_the_cpu(tmp_path):
    """bench.gpu measures on CUDA; its code (model tables, trainer runs, report) is run here on the CPU."""
    from bench import gpu

    results = gpu.run(rounds=1, quick=True, log=lambda line: None, device="cpu", measure_memory=False)
    (tmp_path / "gpu.json").write_text(__import__("json").dumps(results))
    assert [run["batch"] for run in results["runs"]] == [4]
    assert set(results["runs"][0]["training"]) == {setup.name for setup in gpu.training_setups("cpu")}
    assert set(results["trainer"]) == {f"{workers} workers" for workers in gpu.TRAINER_WORKERS}
    for entry in results["trainer"].values():
        assert entry["images_per_s"] > 0 and 0.0 <= entry["test_accuracy"] <= 1.0
    text = report.render(report.load(tmp_path))
    assert "vitlab train on the GPU" in text and "Training throughput, GPU, batch 4" in text
