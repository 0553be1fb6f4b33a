"""Stage 1 — patching: PatchEmbedding, [B, C, H, W] -> [B, N, E], one token per patch.

Which pixels each token depends on is measured with autograd (one backward pass per token); the
judge then checks the block pattern: token i sees the pixels of patch i only, in row-major order.
"""
from __future__ import annotations

import numpy as np

from vitlab.checks.base import Stage
from vitlab.checks.judging import CheckList, Fail, array, need, shape_text
from vitlab.checks.probing import Probe, gradient, one_thread, seeded, tensor, to_array

# Odd sizes, so that every dimension is told apart; one non-square image.
CONFIGS = {
    "rgb": dict(B=2, C=3, H=21, W=35, P=7, E=11),    # a 3 x 5 grid: N = 15
    "gray": dict(B=3, C=1, H=35, W=35, P=7, E=11),   # a 5 x 5 grid: N = 25
}
MAX_TOKENS = 64  # dependence is measured for at most this many tokens (one backward pass each)


def grid(cfg: dict) -> tuple[int, int, int]:
    rows, cols = cfg["H"] // cfg["P"], cfg["W"] // cfg["P"]
    return rows, cols, rows * cols


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng([seed, 1])
    inputs: dict = {"seed": seed}
    for name, cfg in CONFIGS.items():
        x = rng.standard_normal((cfg["B"], cfg["C"], cfg["H"], cfg["W"])).astype(np.float32)
        inputs[name] = {**cfg, "x": x}
    return inputs


def probe(symbols, inputs):
    PatchEmbedding = symbols["PatchEmbedding"]
    p = Probe()
    for name in CONFIGS:
        cfg = inputs[name]
        x = tensor(cfg["x"], requires_grad=True)
        state = {}

        def forward():
            with seeded(inputs["seed"]):
                module = PatchEmbedding(in_channels=cfg["C"], patch_size=cfg["P"],
                                        embed_dim=cfg["E"])
            state["out"] = module(x)
            return to_array(state["out"], "PatchEmbedding's output")

        p.run(f"{name}.out", forward)
        p.run(f"{name}.dependence", lambda: dependence(state["out"], x), needs=(f"{name}.out",))
    return p.data


def dependence(out, x):
    """[tokens, H, W]: how much token i depends on each pixel (summed over batch and channels);
    None when the output is not 3-D, so there are no tokens to speak of."""
    if out.dim() != 3:
        return None
    maps = [np.abs(gradient(out[:, i], x)).sum(axis=(0, 1))
            for i in range(min(out.shape[1], MAX_TOKENS))]
    return np.stack(maps)


# --- judge ---------------------------------------------------------------------------------

checks = CheckList()


def shape_hint(shape: tuple, cfg: dict) -> str:
    B, E = cfg["B"], cfg["E"]
    rows, cols, N = grid(cfg)
    if shape == (B, E, N):
        return "missing transpose: flatten(2) gives [B, E, N]; add .transpose(1, 2) to get [B, N, E]"
    if shape == (B, E, rows, cols):
        return "the patch grid is not flattened: [B, E, H/P, W/P] -> .flatten(2).transpose(1, 2)"
    if len(shape) == 3 and shape[0] == B and shape[2] == E:
        return (f"{shape[1]} tokens instead of N = (H // P) * (W // P) = {N}: patches must not "
                f"overlap — kernel_size = stride = patch_size")
    return "PatchEmbedding must return one token of length E per patch: [B, N, E]"


def add_shape_check(name: str, points: float, label: str) -> None:
    cfg = CONFIGS[name]
    rows, cols, N = grid(cfg)
    expected = shape_text((cfg["B"], N, cfg["E"]), "B, N, E")

    @checks.add(f"output shape, {label}", points, f"shape {expected}")
    def run(inputs, data, warn):
        out = array(need(data, f"{name}.out"), what="the output")
        if out.shape != (cfg["B"], N, cfg["E"]):
            raise Fail(f"shape {shape_text(out.shape)}", shape_hint(out.shape, cfg))
        if not np.isfinite(out).all():
            raise Fail("NaN or inf in the output", "check the weights your module creates")


add_shape_check("rgb", 2, "3 channels, 21x35 image, P=7")
add_shape_check("gray", 2, "1 channel, 35x35 image, P=7")


def patch_dependence(data: dict, name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(pixel maps [N, H, W], per-patch mass [N, rows, cols], threshold for "depends")."""
    cfg = CONFIGS[name]
    rows, cols, N = grid(cfg)
    value = need(data, f"{name}.dependence")
    if value is None:
        raise Fail("not measured: the output is not [B, N, E]", "see the shape check")
    maps = array(value, (N, cfg["H"], cfg["W"]), what="the token-to-pixel dependence")
    P = cfg["P"]
    mass = maps.reshape(N, rows, P, cols, P).sum(axis=(2, 4))
    return maps, mass, 1e-7 * max(float(maps.max(initial=0)), 1e-30)


@checks.add("token i depends on the pixels of patch i only", 3,
            "every token to depend on the pixels of exactly one patch, a different one each")
def locality(inputs, data, warn):
    for name in CONFIGS:
        cfg = CONFIGS[name]
        maps, mass, threshold = patch_dependence(data, name)
        owner: dict[tuple[int, int], int] = {}
        for i in range(len(maps)):
            touched = np.argwhere(touched_patches(maps[i] > threshold, cfg))
            if len(touched) == 0:
                raise Fail(f"token {i} does not depend on the image at all ({name} image)",
                           "every token must be computed from the pixels of its patch")
            if len(touched) > 1:
                raise Fail(f"token {i} depends on pixels of {len(touched)} patches ({name} image)",
                           mixing_hint(maps[i] > threshold, cfg))
            patch = tuple(int(v) for v in touched[0])
            if patch in owner:
                raise Fail(f"tokens {owner[patch]} and {i} both come from the patch at row "
                           f"{patch[0]}, column {patch[1]} ({name} image)",
                           "every patch must become exactly one token")
            owner[patch] = i


def touched_patches(mask: np.ndarray, cfg: dict) -> np.ndarray:
    """[rows, cols]: which patches hold at least one pixel of `mask` [H, W]."""
    rows, cols, _ = grid(cfg)
    P = cfg["P"]
    return mask.reshape(rows, P, cols, P).any(axis=(1, 3))


def mixing_hint(mask: np.ndarray, cfg: dict) -> str:
    rows, cols = np.nonzero(mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    if mask.sum() == height * width and min(height, width) >= cfg["P"]:
        return (f"the token sees a {height}x{width} window instead of a {cfg['P']}x{cfg['P']} "
                f"patch: the patches overlap — use kernel_size = stride = patch_size, no padding")
    return ("the token gathers pixels scattered over several patches: check the reshape/permute "
            "that cuts the image: [B, C, H/P, P, W/P, P] -> permute(0, 2, 4, 1, 3, 5)")


@checks.add("tokens in row-major order", 3,
            "token i to be the patch at row i // (W // P), column i % (W // P)")
def row_major(inputs, data, warn):
    for name in CONFIGS:
        rows, cols, N = grid(CONFIGS[name])
        _, mass, _ = patch_dependence(data, name)
        found = [divmod(int(np.argmax(m)), cols) for m in mass]
        if found == [divmod(i, cols) for i in range(N)]:
            continue
        if found == [(i % rows, i // rows) for i in range(N)]:
            raise Fail(f"column-major order: token 1 is the patch at row 1, column 0 ({name} image)",
                       "the patch grid is transposed: tokens must run along the rows, "
                       "flatten [B, E, H/P, W/P] as it is (no transpose of H/P and W/P)")
        i = next(i for i in range(N) if found[i] != divmod(i, cols))
        raise Fail(f"token {i} is the patch at row {found[i][0]}, column {found[i][1]} "
                   f"({name} image)",
                   "tokens must follow the patches row by row, as flatten(2) of "
                   "[B, E, H/P, W/P] gives them")


STAGE = Stage(
    name="patching",
    title="Stage 1 — patching",
    symbols=("PatchEmbedding",),
    max_points=checks.max_points,
    make_inputs=make_inputs,
    probe=one_thread(probe),
    judge=one_thread(checks.judge),
    time_limit_s=30.0,
)
