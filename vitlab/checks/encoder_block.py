"""Stage 4 — encoder block: scaled_dot_product_attention, MultiHeadSelfAttention and
TransformerEncoderBlock, checked from outside.

The formula is compared with torch's own attention (computed by the judge); the modules are
checked for what every correct layout has: q/k/v shapes, permutation equivariance, the identity
with every Linear zeroed (residual paths), tokens that mix, samples that do not, and the
`return_attention` pair. When a result matches a known wrong formula the hint names it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.checks.base import Stage
from vitlab.checks.judging import CheckList, Fail, array, close, max_diff, need, shape_text
from vitlab.checks.probing import (Probe, as_pair, batch_outputs, one_thread, seeded, tensor,
                                   to_array, token_influence)

_sdpa = F.scaled_dot_product_attention
_softmax = torch.softmax
_from_numpy = torch.from_numpy
_Linear = nn.Linear
_no_grad = torch.no_grad

B, NH, N, D = 2, 3, 7, 5
E = NH * D
MLP_RATIO = 2.0
LAYER_SCALES = {"small": 1e-3, "one": 1.0}

QKV_SPLIT_HINT = ("Q/K/V are split per head in the wrong order: reshape to [B, N, NH, d], "
                  "then permute to [B, NH, N, d]")
FORMULA_HINT = "weights = softmax(q @ k.transpose(-2, -1) / sqrt(d), dim=-1); out = weights @ v"
SCALE_INSIDE_HINT = ("the 1/sqrt(d) scale is applied after the softmax: divide the scores "
                     "q @ k^T by sqrt(d) before the softmax")
RESIDUAL_HINT = ("with every Linear zeroed the attention and MLP branches give 0, so the block must "
                 "return x: a skip connection is missing (x = x + attn(norm1(x)), then "
                 "x = x + mlp(norm2(x)))")


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng([seed, 4])
    perm = rng.permutation(N)
    while (perm == np.arange(N)).any():  # every token moves
        perm = rng.permutation(N)
    q, k, v = (rng.standard_normal((B, NH, N, D)).astype(np.float32) for _ in range(3))
    return {"seed": seed, "q": q, "k": k, "v": v, "perm": perm.astype(np.int64),
            "x": rng.standard_normal((B, N, E)).astype(np.float32)}


# --- probe ---------------------------------------------------------------------------------

def probe(symbols, inputs):
    sdpa = symbols["scaled_dot_product_attention"]
    MultiHeadSelfAttention = symbols["MultiHeadSelfAttention"]
    TransformerEncoderBlock = symbols["TransformerEncoderBlock"]
    p = Probe()
    x = tensor(inputs["x"])
    x_perm = tensor(np.asarray(inputs["x"])[:, inputs["perm"]])
    modules = {}

    def attention():
        out, weights = as_pair(sdpa(tensor(inputs["q"]), tensor(inputs["k"]), tensor(inputs["v"])),
                               "scaled_dot_product_attention")
        return {"out": to_array(out, "out"), "weights": to_array(weights, "weights")}

    def build(name, cls, **kwargs):
        def step():
            with seeded(inputs["seed"]):
                modules[name] = cls(E, NH, **kwargs).eval()
        return step

    def qkv(tokens):
        triple = modules["mhsa"].qkv(tokens)
        if not isinstance(triple, (tuple, list)) or len(triple) != 3:
            raise TypeError(f"qkv should return (q, k, v), got {type(triple).__name__}")
        return [to_array(t, name) for t, name in zip(triple, "qkv")]

    p.run("sdpa", attention)
    p.run("mhsa", build("mhsa", MultiHeadSelfAttention))
    p.run("mhsa.qkv", lambda: qkv(x), needs=("mhsa",))
    p.run("mhsa.qkv_permuted", lambda: qkv(x_perm), needs=("mhsa",))
    p.run("block", build("block", TransformerEncoderBlock, mlp_ratio=MLP_RATIO))
    for name in ("mhsa", "block"):
        module = modules.get(name)
        what = f"{name}(x)"
        p.run(f"{name}.out", lambda: to_array(module(x), what), needs=(name,))
        p.run(f"{name}.out_permuted", lambda: to_array(module(x_perm), what), needs=(name,))
        p.run(f"{name}.attention", lambda: attention_pair(module, x, name), needs=(name,))
        p.run(f"{name}.mixing", lambda: token_influence(module, x, token=0), needs=(name,))
        p.run(f"{name}.batch", lambda: batch_outputs(module, x, train=True), needs=(name,))
    p.run("block.batch_eval", lambda: batch_outputs(modules["block"], x, train=False),
          needs=("block",))
    p.run("block.zeroed", lambda: zeroed_output(modules["block"], x), needs=("block",))
    p.run("block.layer_scale", lambda: layer_scale_outputs(TransformerEncoderBlock, x, inputs))
    return p.data


def attention_pair(module, x, name):
    out, weights = as_pair(module(x, return_attention=True), f"{name}(x, return_attention=True)")
    return {"out": to_array(out, "out"), "weights": to_array(weights, "weights")}


def zeroed_output(block, x):
    """The block's output with the weight and bias of every nn.Linear set to zero."""
    linears = [m for m in block.modules() if isinstance(m, _Linear)]
    with _no_grad():
        for linear in linears:
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
    return {"out": to_array(block(x), "the block's output"), "linears": len(linears)}


def layer_scale_outputs(TransformerEncoderBlock, x, inputs):
    """The block's output for layer_scale 1e-3 and 1.0, from the same seed (same weights)."""
    outputs = {}
    for name, value in LAYER_SCALES.items():
        with seeded(inputs["seed"] + 1):
            block = TransformerEncoderBlock(E, NH, mlp_ratio=MLP_RATIO, layer_scale=value).eval()
        outputs[name] = to_array(block(x), f"the block with layer_scale={value}")
    return outputs


# --- judge ---------------------------------------------------------------------------------

checks = CheckList()


def reference_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray):
    """torch's scaled_dot_product_attention, and its weights, in float64."""
    q, k, v = (_from_numpy(np.asarray(t, dtype=np.float64)) for t in (q, k, v))
    weights = _softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return _sdpa(q, k, v).numpy(), weights.numpy()


def wrong_formulas(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int):
    """(out, weights, hint) for the usual wrong attention formulas."""
    d, n = q.shape[-1], q.shape[-2]
    q, k, v = (_from_numpy(np.asarray(t, dtype=np.float64)) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1)
    plain = _softmax(scores, dim=-1)
    formulas = [  # weights alone cannot tell "no scale" from "output scaled": "no scale" first
        (plain @ v, plain, "the scores are not scaled: divide q @ k^T by sqrt(d) before the softmax"),
        (plain / math.sqrt(d) @ v, plain / math.sqrt(d), SCALE_INSIDE_HINT),
        ((plain @ v) / math.sqrt(d), plain, SCALE_INSIDE_HINT),
    ]
    wrong_dim = _softmax(scores / math.sqrt(d), dim=-2)
    formulas.append((wrong_dim @ v, wrong_dim,
                     "softmax over the wrong dimension: use dim=-1, so that each query's "
                     "weights over the keys sum to 1"))
    for scale, hint in (
        (math.sqrt(heads * d), "scaled by 1/sqrt(E) (embed_dim): each head has d = E // NH "
                               "channels, so scale by 1/sqrt(d) = 1/sqrt(head_dim)"),
        (math.sqrt(n), "scaled by 1/sqrt(N) (the number of tokens): d = q.shape[-1], the head size"),
        (d, "scaled by 1/d: the scale is 1/sqrt(d)"),
    ):
        w = _softmax(scores / scale, dim=-1)
        formulas.append((w @ v, w, hint))
    return [(o.numpy(), w.numpy(), hint) for o, w, hint in formulas]


def diagnose(q, k, v, out, weights, heads: int) -> str:
    for wrong_out, wrong_weights, hint in wrong_formulas(q, k, v, heads):
        if (weights is None or close(weights, wrong_weights)) and (out is None or close(out, wrong_out)):
            return hint
    return FORMULA_HINT


@checks.add("scaled_dot_product_attention = softmax(q k^T / sqrt(d)) v, as torch's", 1.5,
            "out and weights equal to torch's attention on the same q, k, v")
def sdpa_formula(inputs, data, warn):
    result = need(data, "sdpa")
    out = array(result["out"], what="out")
    weights = array(result["weights"], what="weights")
    expected_out, expected_weights = reference_attention(inputs["q"], inputs["k"], inputs["v"])
    if out.shape != expected_out.shape or weights.shape != expected_weights.shape:
        raise Fail(f"out {shape_text(out.shape)}, weights {shape_text(weights.shape)}",
                   "out is weights @ v: [B, NH, N, d]; weights [B, NH, N, N]",
                   expected=f"out {shape_text(expected_out.shape, 'B, NH, N, d')}, weights "
                            f"{shape_text(expected_weights.shape, 'B, NH, N, N')}")
    if close(out, expected_out) and close(weights, expected_weights):
        return
    what = "weights" if not close(weights, expected_weights) else "out"
    got = max_diff(weights, expected_weights) if what == "weights" else max_diff(out, expected_out)
    raise Fail(f"{what} {got}", diagnose(inputs["q"], inputs["k"], inputs["v"], out, weights, NH))


@checks.add("attention weights: every row sums to 1", 1, "weights >= 0 and weights.sum(-1) == 1")
def rows_sum_to_one(inputs, data, warn):
    weights = array(need(data, "sdpa")["weights"], (B, NH, N, N), "weights")
    rows = weights.sum(axis=-1)
    if (weights >= -1e-6).all() and close(rows, np.ones_like(rows)):
        return
    if close(weights.sum(axis=-2), np.ones_like(rows)):
        raise Fail("the columns sum to 1, not the rows",
                   "softmax over the wrong dimension: use dim=-1 (the keys)")
    if close(rows, np.full_like(rows, 1 / math.sqrt(D))):
        raise Fail(f"rows that sum to 1/sqrt(d) = {1 / math.sqrt(D):.3f}", SCALE_INSIDE_HINT)
    raise Fail(f"row sums from {rows.min():.3g} to {rows.max():.3g}",
               "the weights are the softmax of the scores over the last dimension")


def qkv_arrays(data, key: str) -> list[np.ndarray]:
    value = need(data, key)
    if not isinstance(value, list) or len(value) != 3:
        raise Fail("not three arrays", "qkv must return (q, k, v)")
    return [array(t, what=name) for t, name in zip(value, "qkv")]


@checks.add("qkv(x): q, k, v each [B, NH, N, d]", 1,
            f"q, k, v of shape {shape_text((B, NH, N, D), 'B, NH, N, d')}")
def qkv_shapes(inputs, data, warn):
    for t, name in zip(qkv_arrays(data, "mhsa.qkv"), "qkv"):
        if t.shape == (B, NH, N, D):
            continue
        hint = {
            (B, N, NH, D): "permute the heads in front of the tokens: [B, N, NH, d] -> [B, NH, N, d]",
            (B, N, E): "split the E channels into NH heads of d: reshape to [B, N, NH, d], then "
                       "permute to [B, NH, N, d]",
        }.get(t.shape, "q, k and v are [B, NH, N, d]: one [N, d] matrix per sample and head")
        raise Fail(f"{name} of shape {shape_text(t.shape)}", hint)


def equivariant(inputs, data, name: str) -> bool:
    """module(x[:, perm]) == module(x)[:, perm] for the module `name` ("mhsa" or "block")."""
    out = array(need(data, f"{name}.out"), (B, N, E), f"{name}(x)")
    out_perm = array(need(data, f"{name}.out_permuted"), (B, N, E), f"{name}(x)")
    return close(out_perm, out[:, np.asarray(inputs["perm"])])


@checks.add("qkv and attention are permutation-equivariant", 1,
            "permuting the input tokens permutes q, k, v and the attention output the same way")
def attention_equivariance(inputs, data, warn):
    perm = np.asarray(inputs["perm"])
    plain, permuted = qkv_arrays(data, "mhsa.qkv"), qkv_arrays(data, "mhsa.qkv_permuted")
    for name, a, b in zip("qkv", plain, permuted):
        a, b = array(a, (B, NH, N, D), name), array(b, (B, NH, N, D), name)
        if not close(b, a[:, :, perm]):
            raise Fail(f"{name} of the permuted tokens is not {name} permuted", QKV_SPLIT_HINT)
    if not equivariant(inputs, data, "mhsa"):
        raise Fail("the output of the permuted tokens is not the output permuted",
                   "the heads are merged in the wrong order: transpose [B, NH, N, d] to "
                   "[B, N, NH, d] before reshaping to [B, N, E]")


def attention_weights(data, name: str, hint: str) -> np.ndarray:
    """The weights [B, NH, N, N] that `name`(x, return_attention=True) returned, after checking
    that its out is the plain forward's."""
    pair = need(data, f"{name}.attention")
    plain = array(need(data, f"{name}.out"), (B, N, E), f"{name}(x)")
    out = array(pair["out"], (B, N, E), "out")
    if not close(out, plain):
        raise Fail(f"out {max_diff(out, plain)} from the plain {name}(x)", hint)
    return array(pair["weights"], (B, NH, N, N), "weights")


@checks.add("MultiHeadSelfAttention(x, return_attention=True)", 1,
            "(out, weights [B, NH, N, N]): the same out as forward(x), weights = "
            "softmax(q k^T / sqrt(d)) of your own qkv(x)")
def mhsa_attention(inputs, data, warn):
    weights = attention_weights(data, "mhsa",
                                "forward(x) and forward(x, return_attention=True) must compute "
                                "the same attention (is one path scaled differently?)")
    q, k, v = (array(t, (B, NH, N, D), name) for t, name in zip(qkv_arrays(data, "mhsa.qkv"), "qkv"))
    _, expected = reference_attention(q, k, v)
    if not close(weights, expected):
        raise Fail(f"weights {max_diff(weights, expected)}", diagnose(q, k, v, None, weights, NH))


@checks.add("TransformerEncoderBlock is permutation-equivariant", 1,
            "block(x[:, perm]) == block(x)[:, perm]")
def block_equivariance(inputs, data, warn):
    if not equivariant(inputs, data, "block"):
        raise Fail("the output of the permuted tokens is not the output permuted",
                   "a token's output must not depend on where it sits: look for a reshape that "
                   "mixes the token dimension with heads or channels")


@checks.add("with every Linear zeroed the block is the identity (residual connections)", 1,
            "block(x) == x once the weight and bias of every nn.Linear are zero")
def residuals(inputs, data, warn):
    result = need(data, "block.zeroed")
    if result["linears"] == 0:
        raise Fail("a block without any nn.Linear",
                   "build the projections and the MLP from nn.Linear layers")
    out = array(result["out"], (B, N, E), "the block's output")
    x = np.asarray(inputs["x"], dtype=np.float64)
    if not close(out, x):
        raise Fail(f"an output {max_diff(out, x)} from x", RESIDUAL_HINT)


@checks.add("tokens mix: output token 0 depends on every token", 0.5,
            "d out[:, 0] / d x[:, j] != 0 for every token j, in attention and in the block")
def tokens_mix(inputs, data, warn):
    for name in ("mhsa", "block"):
        influence = array(need(data, f"{name}.mixing"), (B, N), "the token dependence")
        blind = np.argwhere(influence <= 1e-7 * max(float(influence.max(initial=0)), 1e-30))
        if len(blind):
            raise Fail(f"output token 0 of {name} does not depend on token {int(blind[0][1])}",
                       "attention must let every token see every token of its own sample "
                       "(weights [B, NH, N, N] @ v; with nn.MultiheadAttention pass batch_first=True)")


@checks.add("samples do not mix: batch independence in train mode", 1,
            "the output of sample i to be the same alone or in a batch")
def batch_independence(inputs, data, warn):
    for name in ("mhsa", "block"):
        result = need(data, f"{name}.batch")
        together = array(result["together"], (B, N, E), "the output")
        alone = array(result["alone"], (B, N, E), "the output")
        if close(together, alone):
            continue
        hint = ("attention mixes the samples of the batch: each sample's tokens must attend only "
                "to its own tokens (weights [B, NH, N, N]; nn.MultiheadAttention needs batch_first=True)")
        if name == "block":
            eval_mode = need(data, "block.batch_eval")
            if close(array(eval_mode["together"]), array(eval_mode["alone"])):
                hint = ("sample i's output changes with the other samples in train mode only: a "
                        "BatchNorm normalises over the batch — use nn.LayerNorm(embed_dim)")
        raise Fail(f"{name}: sample outputs {max_diff(together, alone)} between batch and alone", hint)


@checks.add("TransformerEncoderBlock(x, return_attention=True)", 0.5,
            "(out, weights [B, NH, N, N]): the same out as block(x), weight rows summing to 1")
def block_attention(inputs, data, warn):
    weights = attention_weights(data, "block", "return_attention must not change the output, "
                                               "only return the weights too")
    if not close(weights.sum(axis=-1), np.ones((B, NH, N))):
        raise Fail("weight rows that do not sum to 1",
                   "return the attention weights of the block's own attention layer")


@checks.add("layer_scale multiplies both residual branches", 0.5,
            "block(x) - x about 1000 times smaller with layer_scale=1e-3 than with 1.0")
def layer_scale(inputs, data, warn):
    result = need(data, "block.layer_scale")
    x = np.asarray(inputs["x"], dtype=np.float64)
    small = np.abs(array(result["small"], (B, N, E), "the output") - x).max()
    one = np.abs(array(result["one"], (B, N, E), "the output") - x).max()
    if not (one > 0 and small < 0.05 * one):
        raise Fail(f"|block(x) - x| = {small:.3g} with layer_scale=1e-3 and {one:.3g} with 1.0",
                   "with layer_scale a learnable gamma (shape [E], initialised to layer_scale) "
                   "multiplies each branch: x = x + gamma1 * attn(...), x = x + gamma2 * mlp(...)")


STAGE = Stage(
    name="encoder_block",
    title="Stage 4 — encoder block",
    symbols=("scaled_dot_product_attention", "MultiHeadSelfAttention", "TransformerEncoderBlock"),
    max_points=checks.max_points,
    make_inputs=make_inputs,
    probe=one_thread(probe),
    judge=one_thread(checks.judge),
    time_limit_s=30.0,
)
