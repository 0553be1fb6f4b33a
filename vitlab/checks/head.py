"""Stage 5 — head: ClassificationHead, and the whole model (graded with this stage).

Which tokens the head uses is measured with autograd; a LayerNorm shows as invariance to
x -> a * x + b. The whole-model checks build the student's VisionTransformer on a small config,
nudge every parameter off its initial value (a zero-initialised head would hide everything), and
look at gradients, outputs and batch independence.
"""
from __future__ import annotations

import numpy as np
import torch

from vitlab.checks.base import Stage, describe_exception
from vitlab.checks.judging import CheckList, Fail, array, close, max_diff, need, shape_text
from vitlab.checks.probing import (Probe, batch_outputs, one_thread, seeded, tensor, to_array,
                                   token_influence, weighted_sum)

_no_grad = torch.no_grad
_randn_like = torch.randn_like

# The head alone: B samples of T = N + 1 tokens.
B, T, E, K = 2, 8, 15, 4
AFFINE = (2.5, 0.7)  # a LayerNorm does not see x -> 2.5 x + 0.7
# The whole model: a small odd config.
MODEL_B = 3
MODEL = dict(img_size=21, patch_size=7, in_channels=1, num_classes=K, embed_dim=E, depth=2,
             num_heads=3, mlp_ratio=2.0)
UNKNOWN_POOL = "max"


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng([seed, 5])
    image = (MODEL_B, MODEL["in_channels"], MODEL["img_size"], MODEL["img_size"])
    return {
        "seed": seed,
        "x": rng.standard_normal((B, T, E)).astype(np.float32),
        "perm": np.concatenate([[0], 1 + rng.permutation(T - 1)]).astype(np.int64),
        "images": rng.standard_normal(image).astype(np.float32),
        "other_images": rng.standard_normal(image).astype(np.float32),
    }


# --- probe ---------------------------------------------------------------------------------

def probe(symbols, inputs):
    ClassificationHead = symbols["ClassificationHead"]
    VisionTransformer = symbols.get("VisionTransformer")
    p = Probe()
    x = tensor(inputs["x"])
    heads, state = {}, {}

    def build(pool):
        def step():
            with seeded(inputs["seed"]):
                heads[pool] = ClassificationHead(E, K, pool=pool).eval()
        return step

    for pool in ("cls", "mean"):
        p.run(pool, build(pool))
        head = heads.get(pool)
        p.run(f"{pool}.out", lambda: to_array(head(x), f"head(x), pool={pool!r}"), needs=(pool,))
        p.run(f"{pool}.tokens", lambda: token_influence(head, x), needs=(pool,))
    p.run("cls.affine", lambda: to_array(heads["cls"](x * AFFINE[0] + AFFINE[1]), "head(x)"),
          needs=("cls",))
    p.run("mean.permuted", lambda: to_array(heads["mean"](x[:, inputs["perm"]]), "head(x)"),
          needs=("mean",))
    p.run("unknown_pool", lambda: unknown_pool(ClassificationHead, x, inputs["seed"]))

    def build_model():
        if VisionTransformer is None:
            return {"missing": True}
        with seeded(inputs["seed"]):
            model = VisionTransformer(**MODEL)
            with _no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.05 * _randn_like(parameter))
        state["model"] = model.eval()
        return {"missing": False}

    def outputs():
        model = state["model"].eval()
        return [to_array(model(tensor(inputs[k])), "model(x)") for k in ("images", "other_images")]

    def gradients():
        model = state["model"].train()
        model.zero_grad(set_to_none=True)
        weighted_sum(model(tensor(inputs["images"]))).backward()
        model.eval()
        return [[name, q.grad is not None] for name, q in model.named_parameters()]

    p.run("model", build_model, allow_not_implemented=True)
    for key, step in (("model.outputs", outputs), ("model.gradients", gradients),
                      ("model.batch", lambda: batch_outputs(state["model"], tensor(inputs["images"]),
                                                            train=True))):
        p.run(key, step, needs=("model",), allow_not_implemented=True)
    return p.data


def unknown_pool(ClassificationHead, x, seed):
    """Where an unknown pool raised (`__init__`, `forward` or None) and what."""
    for where in ("__init__", "forward"):
        try:
            if where == "__init__":
                with seeded(seed):
                    head = ClassificationHead(E, K, pool=UNKNOWN_POOL)
            else:
                head(x)
        except NotImplementedError:
            raise
        except Exception as exc:
            return {"where": where, "type": type(exc).__name__, "message": describe_exception(exc)}
    return {"where": None}


# --- judge ---------------------------------------------------------------------------------

checks = CheckList()
LOGITS = shape_text((B, K), "B, num_classes")


@checks.add("head output shape [B, num_classes]", 1, f"shape {LOGITS} for pool='cls' and 'mean'")
def head_shape(inputs, data, warn):
    for pool in ("cls", "mean"):
        out = array(need(data, f"{pool}.out"), what=f"head(x) with pool={pool!r}")
        if out.shape != (B, K):
            raise Fail(f"shape {shape_text(out.shape)} with pool={pool!r}",
                       "pool the tokens to [B, E], then a Linear(embed_dim, num_classes)")
    plain = array(need(data, "cls.out"), (B, K))
    moved = array(need(data, "cls.affine"), (B, K))
    if not close(moved, plain, rtol=1e-3, atol=1e-4):
        warn("head: no LayerNorm before the Linear (its output changes when every token is "
             "scaled and shifted) — the paper's head is LayerNorm, then Linear")


def token_use(data, pool: str) -> tuple[np.ndarray, np.ndarray]:
    """(influence [B, T] of each token on the head's output, whether each token is used)."""
    influence = array(need(data, f"{pool}.tokens"), (B, T), "the token dependence")
    return influence, influence > 1e-7 * max(float(influence.max(initial=0)), 1e-30)


@checks.add("pool='cls' uses the class token (token 0) only", 2,
            "the output to depend on x[:, 0] only")
def cls_pooling(inputs, data, warn):
    _, used = token_use(data, "cls")
    if used[:, 0].all() and not used[:, 1:].any():
        return
    if used[:, -1].all() and not used[:, :-1].any():
        raise Fail("an output that depends on the last token only",
                   "the head pools the last token x[:, -1]: the class token is x[:, 0]")
    if used.all():
        raise Fail("an output that depends on every token",
                   "pool='cls' must use the class token x[:, 0] only; averaging the tokens is pool='mean'")
    tokens = sorted({int(j) for j in np.nonzero(used)[1]})
    raise Fail(f"an output that depends on tokens {tokens}", "pool='cls' means x[:, 0]")


@checks.add("pool='mean' averages the tokens", 1.5,
            "an output that depends on every patch token, whatever their order")
def mean_pooling(inputs, data, warn):
    _, used = token_use(data, "mean")
    if not used[:, 1:].all():
        raise Fail("an output that ignores some tokens",
                   "pool='mean' is not used: average over the tokens, x.mean(dim=1)")
    plain = array(need(data, "mean.out"), (B, K))
    permuted = array(need(data, "mean.permuted"), (B, K))
    if not close(permuted, plain):
        raise Fail(f"an output that changes when the patch tokens are reordered ({max_diff(permuted, plain)})",
                   "a mean does not depend on the order of the tokens: x.mean(dim=1)")


@checks.add(f"an unknown pool ({UNKNOWN_POOL!r}) raises ValueError", 1,
            "ValueError from __init__ or from forward")
def unknown_pool_raises(inputs, data, warn):
    result = need(data, "unknown_pool")
    if result["where"] is None:
        raise Fail(f"no exception for pool={UNKNOWN_POOL!r}",
                   "raise ValueError(f\"Unknown pool {pool!r}: use 'cls' or 'mean'\") in __init__")
    if result["type"] != "ValueError":
        raise Fail(f"{result['message']} from {result['where']}",
                   "raise a ValueError that names the unknown pool and the valid ones")


def model_value(data, key: str):
    if need(data, "model")["missing"]:
        raise Fail("no VisionTransformer in the submission",
                   "the whole-model checks build your VisionTransformer: define it (stage 3)")
    return need(data, key)


@checks.add("whole model: output [B, num_classes]", 1,
            f"shape {shape_text((MODEL_B, K), 'B, num_classes')} from a 21x21 image, patch 7")
def model_shape(inputs, data, warn):
    for out in model_value(data, "model.outputs"):
        out = array(out, what="model(x)")
        if out.shape != (MODEL_B, K):
            raise Fail(f"shape {shape_text(out.shape)}",
                       "forward = head(forward_features(x)), and the head gives [B, num_classes]")


@checks.add("whole model: every parameter gets a gradient", 1.5,
            "param.grad is not None for every parameter after backward")
def model_gradients(inputs, data, warn):
    flags = model_value(data, "model.gradients")
    if not flags:
        raise Fail("a model without parameters", "build the layers in __init__ as nn.Module attributes")
    missing = [str(name) for name, has_grad in flags if has_grad is not True]
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise Fail(f"no gradient for {listed}",
                   "every module you create must be used in forward (not skipped, not detached)")


@checks.add("whole model: different inputs give different outputs", 1,
            "model(x) to change with x, and to differ between samples")
def model_outputs_differ(inputs, data, warn):
    first, second = (array(out, (MODEL_B, K), "model(x)") for out in model_value(data, "model.outputs"))
    scale = max(float(np.abs(first).max(initial=0)), 1e-12)
    if np.abs(first - second).max() <= 1e-6 * scale or np.abs(first - first[:1]).max() <= 1e-6 * scale:
        raise Fail("the same output for different images",
                   "the output must depend on the image: is the input used, and the class token "
                   "updated by the blocks?")


@checks.add("whole model: samples do not mix (train mode)", 1,
            "the output of sample i to be the same alone or in a batch")
def model_batch_independence(inputs, data, warn):
    result = model_value(data, "model.batch")
    together = array(result["together"], (MODEL_B, K), "model(x)")
    alone = array(result["alone"], (MODEL_B, K), "model(x)")
    if not close(together, alone):
        raise Fail(f"outputs {max_diff(together, alone)} between batch and alone",
                   "nothing may mix the samples of a batch: no BatchNorm (use LayerNorm), "
                   "attention within each sample only")


STAGE = Stage(
    name="head",
    title="Stage 5 — head and whole model",
    symbols=("ClassificationHead",),
    optional_symbols=("VisionTransformer",),
    max_points=checks.max_points,
    make_inputs=make_inputs,
    probe=one_thread(probe),
    judge=one_thread(checks.judge),
    time_limit_s=30.0,
)
