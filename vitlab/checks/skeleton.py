"""Stage 3 — skeleton: VisionTransformer's wiring, forward_features and forward.

The probe builds the student's model (with identity blocks and a placeholder head standing in for
the stage-4 and stage-5 classes, as lesson 03 does), then swaps in the grader's own stand-ins for the parts other
stages grade (a fixed linear patch embedding, a fixed class token, a fixed head) and replaces
every block: first by nn.Identity, then by affine "marker" blocks that tell the order they ran in.
So the judge can recompute every expected value from the inputs alone, and a bug in stage 1, 2, 4
or 5 does not fail this stage.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from vitlab.checks.base import Stage
from vitlab.checks.judging import CheckList, Fail, array, close, need, shape_text
from vitlab.checks.probing import RAISED, Probe, one_thread, seeded, tensor, to_array

_Tensor = torch.Tensor
_Parameter = nn.Parameter
_no_grad = torch.no_grad
_cat = torch.cat

B, C, IMG, P, E, DEPTH, NH, K = 2, 3, 35, 7, 15, 2, 3, 4
N = (IMG // P) ** 2  # 25 patches, 26 tokens
CONFIG = dict(img_size=IMG, patch_size=P, in_channels=C, num_classes=K, embed_dim=E,
              depth=DEPTH, num_heads=NH, mlp_ratio=2.0)
NO_BLOCKS_HINT = ("forward_features never applies self.blocks: end with x = self.blocks(x) "
                  "(or loop over an nn.ModuleList)")
HEAD_HINT = "forward must return self.head(self.forward_features(x))"
FEATURES_HINT = ("forward_features must be: x = self.patch_embed(x); x = self.class_token(x); "
                 "x = x + self.pos_embed; then the blocks")


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng([seed, 3])

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {
        "seed": seed,
        "x": normal(B, C, IMG, IMG),
        "patch_weight": normal(C * P * P, E, scale=(C * P * P) ** -0.5),
        "patch_bias": normal(E),
        "token": normal(E),
        "pos": normal(1, N + 1, E),
        "marker_scale": (rng.uniform(0.5, 1.5, DEPTH) * np.array([1, -1] * DEPTH)[:DEPTH]).astype(np.float32),
        "marker_shift": normal(DEPTH, E),
        "head_weight": normal(2, E, K),
    }


# --- the grader's stand-ins ----------------------------------------------------------------

class StandInPatchEmbedding(nn.Module):
    """A fixed linear map of every P x P patch, in row-major order: [B, C, H, W] -> [B, N, E]."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, patch_size: int):
        super().__init__()
        self.weight, self.bias, self.patch_size = tensor(weight), tensor(bias), patch_size

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch_size
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(b, (h // p) * (w // p), c * p * p) @ self.weight + self.bias


class StandInClassToken(nn.Module):
    def __init__(self, token: np.ndarray):
        super().__init__()
        self.token = tensor(token)

    def forward(self, x):
        return _cat([self.token.expand(x.shape[0], 1, -1), x], dim=1)


class StandInHead(nn.Module):
    """x[:, 0] @ W0 + mean(x) @ W1: any [B, T, E] -> [B, K]."""

    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.weight = tensor(weight)

    def forward(self, x):
        return x[:, 0] @ self.weight[0] + x.mean(dim=1) @ self.weight[1]


class MarkerBlock(nn.Module):
    """x * scale + shift, counting its calls: blocks that are told apart by what they do."""

    def __init__(self, scale: float, shift: np.ndarray):
        super().__init__()
        self.scale, self.shift, self.calls = float(scale), tensor(shift), 0

    def forward(self, x, *args, **kwargs):
        self.calls += 1
        return x * self.scale + self.shift


class _IdentityBlock(nn.Identity):
    """Built in place of the student's TransformerEncoderBlock while the skeleton is checked."""

    def __init__(self, *args, **kwargs):
        super().__init__()


class _PlaceholderHead(nn.Module):
    """Built in place of the student's ClassificationHead while the skeleton is checked."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x[:, 0]


LATER_STAGES = {"TransformerEncoderBlock": _IdentityBlock, "ClassificationHead": _PlaceholderHead}


@contextlib.contextmanager
def later_stages_stood_in(VisionTransformer):
    """Build the skeleton with identity blocks and a placeholder head, as lesson 03 does.

    The stage-4 and stage-5 classes are looked up by name in the namespace the student's
    VisionTransformer was defined in; while the model is built they are replaced there, so an
    unfinished encoder block or head (still raising NotImplementedError) does not stop the
    skeleton from being graded. A model that gets its parts some other way is built as it is.
    """
    namespace = getattr(getattr(VisionTransformer, "__init__", None), "__globals__", None)
    saved = {}
    if isinstance(namespace, dict):
        for name, stand_in in LATER_STAGES.items():
            if name in namespace:
                saved[name] = namespace[name]
                namespace[name] = stand_in
    try:
        yield
    finally:
        if saved:
            namespace.update(saved)


def replace_blocks(blocks, make) -> list:
    """Replace every element of the student's blocks container in place (keeping its type)."""
    if not hasattr(blocks, "__setitem__") or not hasattr(blocks, "__len__"):
        raise TypeError(f"model.blocks should be an nn.Sequential or nn.ModuleList, "
                        f"got {type(blocks).__name__}")
    new = [make(i) for i in range(len(blocks))]
    for i, block in enumerate(new):
        blocks[i] = block
    return new


# --- probe ---------------------------------------------------------------------------------

def probe(symbols, inputs):
    VisionTransformer = symbols["VisionTransformer"]
    p = Probe()
    state = {}
    x = tensor(inputs["x"])

    def build():
        with seeded(inputs["seed"]), later_stages_stood_in(VisionTransformer):
            model = VisionTransformer(**CONFIG)
        model.eval()
        state["model"] = model
        blocks = getattr(model, "blocks", None)
        pos = getattr(model, "pos_embed", None)
        return {
            "modules": [name for name in ("patch_embed", "class_token", "blocks", "head")
                        if isinstance(getattr(model, name, None), nn.Module)],
            "blocks_type": type(blocks).__name__,
            "blocks_len": len(blocks) if hasattr(blocks, "__len__") else None,
            "pos_embed": None if not isinstance(pos, _Tensor) else {
                "shape": list(pos.shape), "parameter": isinstance(pos, _Parameter)},
        }

    def install_stand_ins():
        model = state["model"]
        model.patch_embed = StandInPatchEmbedding(inputs["patch_weight"], inputs["patch_bias"], P)
        model.class_token = StandInClassToken(inputs["token"])
        model.head = StandInHead(inputs["head_weight"])
        pos = getattr(model, "pos_embed", None)
        if isinstance(pos, _Tensor):
            with _no_grad():
                pos.copy_(tensor(position_values(inputs, tuple(pos.shape))))

    def identity_blocks():
        replace_blocks(state["model"].blocks, lambda i: nn.Identity())

    def features():
        identity_blocks()
        return to_array(state["model"].forward_features(x), "forward_features(x)")

    def logits():
        identity_blocks()
        return to_array(state["model"](x), "forward(x)")

    def marked_features():
        scales, shifts = inputs["marker_scale"], inputs["marker_shift"]
        markers = replace_blocks(state["model"].blocks,
                                 lambda i: MarkerBlock(scales[i % DEPTH], shifts[i % DEPTH]))
        out = to_array(state["model"].forward_features(x), "forward_features(x)")
        return {"features": out, "calls": [m.calls for m in markers]}

    p.run("structure", build)
    p.run("stand_ins", install_stand_ins, needs=("structure",))
    for key, step in (("features", features), ("logits", logits), ("markers", marked_features)):
        p.run(key, step, needs=("stand_ins",))
    return p.data


def position_values(inputs, shape: tuple) -> np.ndarray:
    """The non-zero values the probe gives pos_embed (any shape, so a wrong one shows too)."""
    return np.resize(np.asarray(inputs["pos"], dtype=np.float32), shape)


# --- judge ---------------------------------------------------------------------------------

checks = CheckList()


def patch_tokens(inputs) -> np.ndarray:
    """[B, N, E]: what the stand-in patch embedding computes, recomputed here."""
    x = np.asarray(inputs["x"], dtype=np.float64)
    g = IMG // P
    patches = x.reshape(B, C, g, P, g, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, N, C * P * P)
    return patches @ inputs["patch_weight"] + inputs["patch_bias"]


def with_token(inputs, tokens: np.ndarray) -> np.ndarray:
    token = np.broadcast_to(np.asarray(inputs["token"], dtype=np.float64), (B, 1, E))
    return np.concatenate([token, tokens], axis=1)


def layer_norm(tokens: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    centred = tokens - tokens.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps)


def pos_shape(data) -> tuple | None:
    pos = need(data, "structure")["pos_embed"]
    return None if pos is None else tuple(pos["shape"])


@checks.add("attributes patch_embed, class_token, blocks (depth of them), head", 1.5,
            f"the modules patch_embed, class_token, head, and blocks holding depth={DEPTH} modules")
def structure(inputs, data, warn):
    info = need(data, "structure")
    if info["blocks_type"] not in ("Sequential", "ModuleList", "NoneType"):
        raise Fail(f"blocks is a {info['blocks_type']}",
                   "use nn.Sequential or nn.ModuleList so the blocks' parameters are registered")
    missing = [m for m in ("patch_embed", "class_token", "blocks", "head") if m not in info["modules"]]
    if missing:
        raise Fail(f"no module attribute {', '.join(missing)}",
                   "the contract's attribute names are patch_embed, class_token, blocks and head")
    if info["blocks_len"] != DEPTH:
        raise Fail(f"{info['blocks_len']} blocks with depth={DEPTH}",
                   "build one block per layer: [... for _ in range(depth)]")


@checks.add("pos_embed: shape [1, N + 1, E], added after the class token", 1.5,
            f"no pos_embed (a warning), or one of shape {shape_text((1, N + 1, E), '1, N + 1, E')}")
def position_embedding(inputs, data, warn):
    pos = need(data, "structure")["pos_embed"]
    if pos is None:
        warn("skeleton: no pos_embed — without a position embedding the encoder sees an "
             "unordered bag of patches (recommended: nn.Parameter of shape [1, N + 1, E])")
        return
    if tuple(pos["shape"]) == (1, N, E):
        raise Fail(f"shape {shape_text(pos['shape'])}",
                   "pos_embed covers the patches only: it needs a row for the class token too, "
                   "shape [1, N + 1, E], added after the class token")
    if tuple(pos["shape"]) != (1, N + 1, E):
        raise Fail(f"shape {shape_text(pos['shape'])}",
                   "one learnable vector per token: nn.Parameter(torch.zeros(1, N + 1, E))")
    if not pos["parameter"]:
        warn("skeleton: pos_embed is not an nn.Parameter, so it is not learned")


@checks.add("forward_features output shape [B, N + 1, E]", 1.5,
            f"shape {shape_text((B, N + 1, E), 'B, N + 1, E')}")
def features_shape(inputs, data, warn):
    out = array(need(data, "features"), what="forward_features(x)")
    if out.shape != (B, N + 1, E):
        raise Fail(f"shape {shape_text(out.shape)}", FEATURES_HINT)


@checks.add("forward_features = patch_embed -> class_token -> + pos_embed (blocks as identities)",
            2.5, "forward_features(x) == class_token(patch_embed(x)) + pos_embed")
def pipeline(inputs, data, warn):
    got = array(need(data, "features"), (B, N + 1, E), "forward_features(x)")
    shape = pos_shape(data)
    no_pos = with_token(inputs, patch_tokens(inputs))
    pos = None if shape is None else position_values(inputs, shape).astype(np.float64)
    expected = no_pos + pos if shape == (1, N + 1, E) else no_pos
    if shape in (None, (1, N + 1, E)) and close(got, expected):
        return
    hint = FEATURES_HINT
    if close(got, layer_norm(expected)):
        hint = ("forward_features normalises its output: it ends with the blocks, the final "
                "LayerNorm belongs to the head")
    elif shape == (1, N + 1, E) and close(got, no_pos):
        hint = "pos_embed is never added: x = x + self.pos_embed, after the class token"
    elif shape == (1, N, E) and close(got, with_token(inputs, patch_tokens(inputs) + pos)):
        hint = "pos_embed is added before the class token: add it after, shape [1, N + 1, E]"
    elif shape is None and close(got - no_pos, np.broadcast_to((got - no_pos)[:1], got.shape)):
        hint = ("something the same for every sample is added: if it is your position "
                "embedding, name it pos_embed")
    raise Fail("other values than patch_embed -> class_token -> + pos_embed", hint)


@checks.add("forward_features applies the blocks in order, each once", 1.5,
            "blocks[1](blocks[0](tokens)), every block called once")
def blocks_in_order(inputs, data, warn):
    base = array(need(data, "features"), (B, N + 1, E), "forward_features(x)")
    marked = need(data, "markers")
    got = array(marked["features"], (B, N + 1, E), "forward_features(x)")
    calls = list(marked["calls"])
    if not any(calls):
        raise Fail("no block called", NO_BLOCKS_HINT)
    if calls != [1] * len(calls):
        raise Fail(f"block calls {calls}", "call every block exactly once per forward")
    scale, shift = inputs["marker_scale"], inputs["marker_shift"]
    forward, backward = base.copy(), base.copy()
    for i in range(DEPTH):
        forward = forward * scale[i] + shift[i]
        backward = backward * scale[DEPTH - 1 - i] + shift[DEPTH - 1 - i]
    if close(got, forward):
        return
    if close(got, base):
        raise Fail("the same output as without blocks", NO_BLOCKS_HINT)
    if close(got, backward):
        raise Fail("the blocks applied last to first", "apply self.blocks in order")
    raise Fail("other values than the blocks applied in order to the tokens",
               "the blocks come after pos_embed, one after the other, and their output is returned")


@checks.add("forward = head(forward_features(x))", 1.5, "forward(x) == self.head(self.forward_features(x))")
def forward_uses_head(inputs, data, warn):
    features = array(need(data, "features"), (B, N + 1, E), "forward_features(x)")
    logits = data.get("logits")
    if isinstance(logits, dict) and "StandIn" in str(logits.get(RAISED, "")):
        raise Fail("forward(x) reaches inside self.head, which the check replaces with a module "
                   f"of its own ({logits[RAISED]})", HEAD_HINT)
    got = array(need(data, "logits"), what="forward(x)")
    w = np.asarray(inputs["head_weight"], dtype=np.float64)
    expected = features[:, 0] @ w[0] + features.mean(axis=1) @ w[1]
    if not close(got, expected):
        raise Fail(f"forward(x) of shape {shape_text(got.shape)} that is not the head's output",
                   HEAD_HINT)


STAGE = Stage(
    name="skeleton",
    title="Stage 3 — skeleton",
    symbols=("VisionTransformer",),
    max_points=checks.max_points,
    make_inputs=make_inputs,
    probe=one_thread(probe),
    judge=one_thread(checks.judge),
    time_limit_s=30.0,
)
