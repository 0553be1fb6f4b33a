"""A synthetic CT-like dataset in the course's Clean_LiTS layout: the built-in default data.

Each volume is a 3-D phantom of an abdomen drawn from a seed: body outline, subcutaneous fat,
muscle, spine, ribs and pelvis, lungs and heart at the top, kidneys, spleen, stomach, bowel with
gas, and the liver over a contiguous range of slices, with hypodense tumours of varied size and
contrast in most volumes. Organs are ellipsoid-like shapes whose cross-section changes along z;
every slice is rendered in Hounsfield units, then blurred, made noisy and windowed to 8 bits with
per-volume brightness and contrast.

Orientation is the radiological convention: the patient's anterior is at the top of the image and
the patient's right on the image's left, so the liver sits on the left of the image. In-plane
coordinates run from -1 to 1 (x to the image's right, y down); along the body, ``u`` runs from the
pelvis (0) to the lower thorax (1). One unit is about 200 mm.

Written layout (what ``vitlab.data.LiTSDataset`` reads), split by volume (~70/15/15):

    OUT_DIR/<split>/volumes/volume-<v>_<s>.png                      8-bit grayscale slice
    OUT_DIR/<split>/segmentations/segmentation-<v>_livermask_<s>.png   0/255
    OUT_DIR/<split>/segmentations/segmentation-<v>_lesionmask_<s>.png  0/255
    OUT_DIR/<split>/classes.csv   volume_file,liver_file,liver_visible,tumors_file,tumors_visible

Every volume draws its random numbers from (seed, volume index) alone, so the bytes written do not
depend on how many worker processes render them.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import shutil
import socket
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

PHANTOM_VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # the rest is train
CSV_COLUMNS = ("volume_file", "liver_file", "liver_visible", "tumors_file", "tumors_visible")  # classes.csv
CSV_HEADER = ",".join(CSV_COLUMNS)
DEFAULT_VOLUMES = 48
SLICES_RANGE = (48, 80)  # slices per volume when not fixed; mean 64
PNG_COMPRESS_LEVEL = 1   # fast, and deterministic for a given Pillow
LUMEN = 0.72             # a tube's lumen, relative to its outer radius
AIR, LUNG, FAT, WATER, MUSCLE, BONE = -1000.0, -850.0, -100.0, 10.0, 50.0, 750.0


# ---------------------------------------------------------------------------------------------
# Geometry: ellipses with a wobbly outline, painted into a slice in HU
# ---------------------------------------------------------------------------------------------

@dataclass
class Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float
    angle: float = 0.0
    wobble: tuple = ()  # ((k, amplitude, phase), ...): radius * (1 + sum a cos(k theta + phase))

    def scaled(self, factor: float) -> "Ellipse":
        return Ellipse(self.cx, self.cy, self.rx * factor, self.ry * factor, self.angle, self.wobble)

    def shrunk(self, margin: float) -> "Ellipse":
        return Ellipse(self.cx, self.cy, max(self.rx - margin, 1e-3), max(self.ry - margin, 1e-3),
                       self.angle, self.wobble)


class Canvas:
    """One S x S slice in HU, painted organ by organ (a later organ covers an earlier one).

    `label` follows the painting: 1 where the liver shows, 2 where a tumour shows, 0 elsewhere.
    """

    def __init__(self, size: int):
        self.size = size
        self.axis = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0)
        self.hu = np.full((size, size), AIR, np.float32)
        self.label = np.zeros((size, size), np.uint8)
        self.everywhere = (slice(0, size), slice(0, size))

    def box(self, shape: Ellipse) -> tuple[slice, slice] | None:
        reach = max(shape.rx, shape.ry) * (1.0 + sum(abs(a) for _, a, _ in shape.wobble)) + 2.0 / self.size
        def span(center):
            lo = max(int((center - reach + 1.0) * self.size / 2.0), 0)
            hi = min(int(math.ceil((center + reach + 1.0) * self.size / 2.0)), self.size)
            return slice(lo, hi) if hi > lo else None
        rows, cols = span(shape.cy), span(shape.cx)
        return (rows, cols) if rows and cols else None

    def radius(self, shape: Ellipse, box: tuple[slice, slice]) -> np.ndarray:
        """Normalised radius over `box`: < 1 inside the shape, 1 on its outline."""
        y = self.axis[box[0]][:, None] - shape.cy
        x = self.axis[box[1]][None, :] - shape.cx
        if shape.angle:
            c, s = math.cos(shape.angle), math.sin(shape.angle)
            x, y = x * c + y * s, y * c - x * s
        x, y = x / shape.rx, y / shape.ry
        d = np.sqrt(x * x + y * y)
        if shape.wobble:
            theta = np.arctan2(y, x)
            outline = 1.0
            for k, amplitude, phase in shape.wobble:
                outline = outline + amplitude * np.cos(k * theta + phase)
            d = d / outline
        return d

    def coverage(self, shape: Ellipse, box, softness: float = 1.0) -> np.ndarray:
        """Fraction of each pixel inside the shape (an edge `softness` pixels wide)."""
        d = self.radius(shape, box)
        edge_px = min(shape.rx, shape.ry) * self.size / 2.0 / softness
        return np.clip(0.5 + (1.0 - d) * edge_px, 0.0, 1.0)

    def paint(self, shape: Ellipse, hu: float, within: np.ndarray | None = None, label: int | None = 0,
              softness: float = 1.0) -> None:
        """Fill `shape` with `hu`, clipped to the coverage map `within` (S x S, 0..1) if given;
        set `label` where the result covers more than half a pixel."""
        box = self.box(shape)
        if box is None:
            return
        alpha = self.coverage(shape, box, softness)
        if within is not None:
            alpha *= within[box]
        self.blend(box, alpha, hu, label)

    def blend(self, box, alpha: np.ndarray, hu, label: int | None = 0) -> None:
        region = self.hu[box]
        region += alpha * (hu - region)
        if label is not None:
            self.label[box][alpha > 0.5] = label


def wobble(rng: np.random.Generator, amplitude: float, orders=(2, 3, 4, 5)) -> tuple:
    return tuple((k, float(rng.uniform(0.3, 1.0) * amplitude / k ** 0.5), float(rng.uniform(0, 2 * math.pi)))
                 for k in orders)


def bump(u: float, lo: float, hi: float, floor: float = 0.0, peak: float = 0.5) -> float:
    """A size profile along the body: 0 outside [lo, hi], rising from `floor` to 1 at the relative
    position `peak`, then falling back to `floor` at `hi`."""
    if hi <= lo or not lo <= u <= hi:
        return 0.0
    t = (u - lo) / (hi - lo)
    t = 0.5 * t / peak if t <= peak else 0.5 + 0.5 * (t - peak) / (1.0 - peak)
    return floor + (1.0 - floor) * math.sin(math.pi * t) ** 0.7


# ---------------------------------------------------------------------------------------------
# One volume: its plan (every random choice) and the rendering of a slice
# ---------------------------------------------------------------------------------------------

@dataclass
class Tube:
    """A tubular structure (bowel loop, vessel): a wall around a lumen of fluid and maybe gas,
    whose centre drifts as u runs from u_lo to u_hi."""
    u_lo: float
    u_hi: float
    cx: float
    cy: float
    drift_x: float
    drift_y: float
    radius: float
    wall_hu: float
    content_hu: float
    gas_level: float  # gas fills the lumen above this height (-1 top .. 1 bottom of the lumen)

    @classmethod
    def draw(cls, rng, u_span, x_span, y_span, r_span, wall_hu, content_hu, gas_level) -> "Tube":
        u_lo = rng.uniform(u_span[0], u_span[1] - 0.05)
        return cls(u_lo, min(u_lo + rng.uniform(0.05, 0.35), u_span[1] + 0.1), rng.uniform(*x_span),
                   rng.uniform(*y_span), rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15),
                   rng.uniform(*r_span), wall_hu, content_hu, gas_level)

    def centre(self, u: float) -> tuple[float, float]:
        t = (u - self.u_lo) / (self.u_hi - self.u_lo)
        return self.cx + self.drift_x * math.sin(math.pi * t), self.cy + self.drift_y * t

    def paint(self, c: "Canvas", u: float, within: np.ndarray) -> None:
        x, y = self.centre(u)
        outer = Ellipse(x, y, self.radius, self.radius * 0.85)
        box = c.box(outer)
        if box is None:
            return
        d = c.radius(outer, box)
        edge_px = outer.ry * c.size / 2.0
        wall = np.clip(0.5 + (1.0 - d) * edge_px, 0.0, 1.0) * within[box]
        c.blend(box, wall, self.wall_hu)
        lumen = np.clip(0.5 + (LUMEN - d) * edge_px, 0.0, 1.0) * within[box]
        c.blend(box, lumen, self.content_hu)
        if self.gas_level > -1.0:
            gas_line = y + self.gas_level * LUMEN * outer.ry
            above = np.clip((gas_line - c.axis[box[0]][:, None]) * c.size / 2.0 + 0.5, 0.0, 1.0)
            c.blend(box, lumen * above, AIR + 100)


@dataclass
class Tumour:
    centre_slice: int
    half_extent: int      # in slices: the tumour shows on centre_slice +- half_extent
    cx: float
    cy: float
    radius: float
    contrast: float       # HU below the liver
    rim: float            # HU of an enhancing rim above the tumour's value (0: none)
    wobble: tuple

    def section(self, slice_index: int) -> float:
        """Radius of the cross-section on a slice (0 where the tumour does not reach)."""
        t = (slice_index - self.centre_slice) / (self.half_extent + 0.5)
        return self.radius * math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0


class Volume:
    """Every random choice of one phantom volume, drawn from its own generator, and its slices."""

    def __init__(self, seed: int, index: int, slices: int | None):
        self.seed = (seed, index, PHANTOM_VERSION)
        rng = np.random.default_rng(np.random.SeedSequence(self.seed))
        self.slices = int(slices) if slices else int(rng.integers(SLICES_RANGE[0], SLICES_RANGE[1] + 1))
        # the part of the body scanned, and where the organs are along it
        self.u_start, self.u_end = rng.uniform(0.0, 0.3), rng.uniform(0.93, 1.02)
        self.liver_lo, self.liver_hi = rng.uniform(0.52, 0.6), rng.uniform(0.86, 0.92)
        self.liver_peak = rng.uniform(0.55, 0.75)
        self.lung_base = self.liver_hi - rng.uniform(0.06, 0.12)
        self.heart_base = self.liver_hi + rng.uniform(0.0, 0.04)
        self.kidney_ranges = [(rng.uniform(0.38, 0.44), rng.uniform(0.6, 0.66)),   # right, lower
                              (rng.uniform(0.42, 0.48), rng.uniform(0.64, 0.7))]
        self.spleen_range = (rng.uniform(0.6, 0.66), rng.uniform(0.82, 0.9))
        self.stomach_range = (rng.uniform(0.6, 0.66), rng.uniform(0.84, 0.9))
        # body habitus
        self.body = Ellipse(rng.uniform(-0.04, 0.04), rng.uniform(-0.08, 0.0), rng.uniform(0.74, 0.9),
                            rng.uniform(0.52, 0.66), wobble=wobble(rng, 0.05))
        self.body_swing = rng.uniform(0.0, 2 * math.pi)
        self.fat = rng.uniform(0.025, 0.14)
        self.muscle = rng.uniform(0.03, 0.05)
        self.table = rng.random() < 0.7
        self.spine_phase = rng.uniform(0, 1)
        # intensities: contrast phase, per-volume window (brightness and contrast), noise
        self.enhanced = rng.random() < 0.85
        self.liver_hu = rng.uniform(95, 130) if self.enhanced else rng.uniform(50, 65)
        self.spleen_hu = self.liver_hu + rng.uniform(-10, 20)
        self.kidney_hu = rng.uniform(150, 200) if self.enhanced else rng.uniform(30, 40)
        self.vessel_hu = rng.uniform(150, 220) if self.enhanced else rng.uniform(35, 45)
        self.window_level = rng.uniform(30, 70)
        self.window_width = rng.uniform(330, 450)
        self.noise_hu = rng.uniform(8, 20)
        # the organs that are more than an ellipse
        self.liver_wobble = wobble(rng, 0.12)
        self.left_lobe = rng.uniform(0.6, 1.2)
        self.gallbladder = rng.random() < 0.5
        self.bowel = self._bowel(rng)
        self.liver_vessels = [Tube.draw(rng, (self.liver_lo, self.liver_hi), (-0.35, 0.35), (-0.4, 0.4),
                                        (0.012, 0.03), self.vessel_hu - 20, self.vessel_hu - 20, -2.0)
                              for _ in range(int(rng.integers(3, 8)))]
        self.tumours = self._tumours(rng)

    def u(self, slice_index: int) -> float:
        return self.u_start + (slice_index + 0.5) / self.slices * (self.u_end - self.u_start)

    def body_at(self, u: float) -> Ellipse:
        b = self.body
        swing = 1.0 + 0.05 * math.sin(2 * math.pi * u * 0.8 + self.body_swing)
        pelvis = 1.0 + 0.08 * max(0.0, 0.3 - u) / 0.3
        thorax = 1.0 + 0.06 * max(0.0, u - 0.85) / 0.15
        return Ellipse(b.cx, b.cy, b.rx * swing * pelvis, b.ry * swing * thorax, wobble=b.wobble)

    def cavity(self, u: float) -> Ellipse:
        """The inside of the abdominal wall, where the organs are."""
        return self.body_at(u).shrunk(self.fat + self.muscle)

    def liver_lobes(self, u: float, cavity: Ellipse) -> tuple[Ellipse, Ellipse] | None:
        """Right lobe (left of the image) and left lobe on the slice at `u`, or None."""
        size = bump(u, self.liver_lo, self.liver_hi, floor=0.2, peak=self.liver_peak)
        if size == 0.0:
            return None
        t = (u - self.liver_lo) / (self.liver_hi - self.liver_lo)
        right = Ellipse(cavity.cx - 0.42 * cavity.rx, cavity.cy - 0.02 + 0.05 * t, 0.5 * cavity.rx * size,
                        0.78 * cavity.ry * size, angle=-0.3, wobble=self.liver_wobble)
        left_size = self.left_lobe * bump(t, 0.35, 1.05)
        left = Ellipse(cavity.cx + 0.05 * cavity.rx, cavity.cy - 0.5 * cavity.ry, 0.38 * cavity.rx * left_size + 1e-3,
                       0.3 * cavity.ry * left_size + 1e-3, angle=0.25, wobble=self.liver_wobble)
        return right, left

    def _bowel(self, rng) -> list[Tube]:
        loops = []
        for _ in range(int(rng.integers(80, 120))):
            gas = rng.random()
            gas_level = -2.0 if gas < 0.45 else (2.0 if gas > 0.8 else rng.uniform(-0.6, 0.4))
            loops.append(Tube.draw(rng, (0.02, 0.72), (-0.65, 0.65), (-0.6, 0.3), (0.03, 0.075),
                                   rng.uniform(40, 90) if self.enhanced else 40.0, rng.uniform(5, 45), gas_level))
        for side in (-1, 1):  # ascending and descending colon, often with gas
            loops.append(Tube(0.2, 0.68, side * rng.uniform(0.55, 0.7), rng.uniform(-0.2, 0.1), 0.05, 0.05,
                              rng.uniform(0.07, 0.1), 50.0, rng.uniform(0, 40), rng.uniform(-0.8, 0.3)))
        return loops

    def _tumours(self, rng) -> list[Tumour]:
        """Hypodense tumours inside the liver; a fifth of the volumes have none."""
        liver_slices = [s for s in range(self.slices) if self.liver_lo < self.u(s) < self.liver_hi]
        if rng.random() < 0.2 or len(liver_slices) < 3:
            return []
        coarse = Canvas(48)
        tumours = []
        for _ in range(min(int(rng.geometric(0.4)), 6)):
            centre = int(rng.choice(liver_slices[1:-1]))
            u = self.u(centre)
            lobes = self.liver_lobes(u, self.cavity(u))
            inside = np.minimum(*(coarse.radius(lobe, coarse.everywhere) for lobe in lobes)) < 0.7
            ys, xs = np.nonzero(inside)
            if len(ys) == 0:
                continue
            pick = int(rng.integers(len(ys)))
            kind = rng.random()  # small, medium or large
            low, high = (0.025, 0.07) if kind < 0.45 else (0.07, 0.13) if kind < 0.85 else (0.13, 0.2)
            radius = rng.uniform(low, high)
            rim = rng.uniform(15, 40) if rng.random() < 0.25 else 0.0
            tumours.append(Tumour(centre, max(1, round(radius * 30 * rng.uniform(0.7, 1.3))),
                                  float(coarse.axis[xs[pick]]), float(coarse.axis[ys[pick]]), float(radius),
                                  float(rng.uniform(25, 85)), float(rim), wobble(rng, 0.15)))
        return tumours

    # -- one slice -----------------------------------------------------------------------------

    def render(self, slice_index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The slice as 8-bit pixels and its label map (0 background, 1 liver, 2 tumour)."""
        u = self.u(slice_index)
        c = Canvas(size)
        body = self.body_at(u)
        cavity = body.shrunk(self.fat + self.muscle)
        spine = (body.cx, body.cy + body.ry - self.fat - 0.27)  # centre of the vertebral body
        if self.table:
            self._table(c, body)
        c.paint(body, FAT + 10)
        c.paint(body.shrunk(self.fat), MUSCLE)
        inside = c.coverage(cavity, c.everywhere)  # [S, S]: organs stay within the abdominal wall
        c.blend(c.everywhere, inside, -90.0)        # visceral fat
        self._thorax(c, u, cavity, inside)
        self._pelvis(c, u, cavity, inside, spine)
        for loop in self.bowel:
            if loop.u_lo <= u <= loop.u_hi:
                loop.paint(c, u, inside)
        self._kidneys_spleen_stomach(c, u, cavity, inside, spine)
        self._liver(c, u, cavity, inside, slice_index)
        self._vessels(c, u, inside, spine)
        self._bones(c, u, cavity, spine)
        return self._finish(c, slice_index), c.label

    def _table(self, c: Canvas, body: Ellipse) -> None:
        top = body.cy + body.ry + 0.04
        y, x = c.axis[:, None], c.axis[None, :]
        curve = top + 0.12 * x * x
        alpha = ((y > curve) & (y < curve + 0.035) & (np.abs(x) < 0.85)).astype(np.float32)
        c.blend(c.everywhere, alpha, 150.0)

    def _thorax(self, c: Canvas, u: float, cavity: Ellipse, inside: np.ndarray) -> None:
        """Lung bases (the right one higher, over the liver dome) and the heart."""
        if u > self.lung_base:
            grow = 0.25 + 0.55 * min((u - self.lung_base) / 0.15, 1.0)
            for side in (-1, 1):
                lung = Ellipse(cavity.cx + side * 0.5 * cavity.rx, cavity.cy + 0.2 * cavity.ry,
                               0.45 * cavity.rx * grow, 0.75 * cavity.ry * grow, angle=side * 0.2,
                               wobble=((2, 0.05, 0.0), (3, 0.04, 1.0)))
                c.paint(lung, LUNG, within=inside)
        if u > self.heart_base:
            grow = min((u - self.heart_base) / 0.1, 1.0)
            heart = Ellipse(cavity.cx + 0.12, cavity.cy - 0.3 * cavity.ry, 0.35 * cavity.rx * grow + 1e-3,
                            0.35 * cavity.ry * grow + 1e-3, angle=0.5)
            c.paint(heart, 45.0, within=inside)
            c.paint(heart.scaled(0.5), self.vessel_hu * 0.8, within=inside)

    def _pelvis(self, c: Canvas, u: float, cavity: Ellipse, inside: np.ndarray, spine) -> None:
        """Bladder low in the pelvis; psoas muscles beside the lumbar spine."""
        if u < 0.14:
            grow = 1.0 - u / 0.14
            c.paint(Ellipse(cavity.cx, cavity.cy - 0.25 * cavity.ry, 0.25 * grow + 0.05, 0.18 * grow + 0.04),
                    WATER, within=inside)
        psoas = bump(u, 0.12, 0.62, floor=0.3, peak=0.25)
        if psoas:
            for side in (-1, 1):
                c.paint(Ellipse(spine[0] + side * (0.13 + 0.12 * psoas), spine[1] - 0.02, 0.05 + 0.06 * psoas,
                                0.05 + 0.04 * psoas), MUSCLE - 5)

    def _kidneys_spleen_stomach(self, c: Canvas, u: float, cavity: Ellipse, inside: np.ndarray, spine) -> None:
        for side, (lo, hi) in zip((-1, 1), self.kidney_ranges):
            size = bump(u, lo, hi, floor=0.25)
            if size:
                kidney = Ellipse(spine[0] + side * 0.33, spine[1] - 0.02, 0.09 * size + 0.01, 0.13 * size + 0.01,
                                 angle=side * 0.45)
                c.paint(kidney, self.kidney_hu, within=inside)
                c.paint(kidney.scaled(0.55), self.kidney_hu * 0.65, within=inside)  # medulla
        size = bump(u, *self.spleen_range, floor=0.2)
        if size:
            c.paint(Ellipse(cavity.cx + 0.6 * cavity.rx, cavity.cy + 0.3 * cavity.ry, 0.2 * cavity.rx * size,
                            0.38 * cavity.ry * size, angle=-0.5, wobble=self.liver_wobble[:2]),
                    self.spleen_hu, within=inside)
        size = bump(u, *self.stomach_range, floor=0.3)
        if size:
            stomach = Tube(0.0, 1.0, cavity.cx + 0.32 * cavity.rx, cavity.cy - 0.3 * cavity.ry, 0.0, 0.0,
                           0.3 * cavity.rx * size, 55.0, 25.0, -0.2)
            stomach.paint(c, 0.0, inside)

    def _liver(self, c: Canvas, u: float, cavity: Ellipse, inside: np.ndarray, slice_index: int) -> None:
        """The liver with its vessels and tumours (label 1 and 2), then the gallbladder below it."""
        lobes = self.liver_lobes(u, cavity)
        if lobes is None:
            return
        for lobe in lobes:
            c.paint(lobe, self.liver_hu, within=inside, label=1)
        liver = (c.label == 1).astype(np.float32)  # [S, S]
        right = lobes[0]
        for vessel in self.liver_vessels:
            if vessel.u_lo <= u <= vessel.u_hi:
                x, y = vessel.centre(u)
                c.paint(Ellipse(right.cx + x * right.rx, right.cy + y * right.ry, vessel.radius, vessel.radius),
                        vessel.wall_hu, within=liver, label=None)
        for tumour in self.tumours:
            radius = tumour.section(slice_index)
            if radius > 0.0:
                shape = Ellipse(tumour.cx, tumour.cy, radius, radius * 0.9, wobble=tumour.wobble)
                value = self.liver_hu - tumour.contrast
                c.paint(shape, value + tumour.rim, within=liver, label=None, softness=2.0)
                c.paint(shape.scaled(0.8), value, within=liver, label=None, softness=2.0)
                box = c.box(shape)
                if box is not None:
                    c.label[box][(c.radius(shape, box) < 1.0) & (liver[box] > 0)] = 2
        if self.gallbladder:
            size = bump(u, self.liver_lo, self.liver_lo + 0.15, floor=0.3)
            if size:
                c.paint(Ellipse(right.cx + 0.6 * right.rx, right.cy - 0.5 * right.ry, 0.07 * size, 0.1 * size,
                                angle=0.4), WATER + 5)

    def _vessels(self, c: Canvas, u: float, inside: np.ndarray, spine) -> None:
        c.paint(Ellipse(spine[0] + 0.05, spine[1] - 0.15, 0.045, 0.045), self.vessel_hu, within=inside)  # aorta
        if u > 0.3:  # inferior vena cava
            c.paint(Ellipse(spine[0] - 0.11, spine[1] - 0.14, 0.05, 0.035), self.vessel_hu * 0.7, within=inside)

    def _bones(self, c: Canvas, u: float, cavity: Ellipse, spine) -> None:
        x0, y0 = spine
        disc = math.cos(2 * math.pi * (u * 9.0 + self.spine_phase)) > 0.8
        vertebra = Ellipse(x0, y0, 0.1, 0.085)
        c.paint(vertebra, 90.0 if disc else BONE)
        if not disc:
            c.paint(vertebra.shrunk(0.015), 230.0)                                 # cancellous bone
        c.paint(Ellipse(x0, y0 + 0.14, 0.045, 0.04), WATER)                        # spinal canal
        c.paint(Ellipse(x0, y0 + 0.24, 0.025, 0.06), BONE)                         # spinous process
        for side in (-1, 1):
            c.paint(Ellipse(x0 + side * 0.075, y0 + 0.16, 0.06, 0.018, angle=side * 0.7), BONE)  # lamina
            c.paint(Ellipse(x0 + side * 0.15, y0 + 0.24, 0.08, 0.07), MUSCLE + 5)   # paraspinal muscle
        if u < 0.28:  # iliac wings
            grow = 1.0 - u / 0.28
            for side in (-1, 1):
                wing = Ellipse(x0 + side * (0.32 + 0.12 * grow), y0 - 0.02, 0.06 + 0.2 * grow, 0.05,
                               angle=side * (0.9 - 0.4 * grow))
                c.paint(wing, BONE)
                c.paint(wing.shrunk(0.015), 200.0)
        if u > 0.5:
            self._ribs(c, u, cavity)

    def _ribs(self, c: Canvas, u: float, cavity: Ellipse) -> None:
        """Oblique ribs cut by the axial plane: bright arcs just inside the muscle wall."""
        ring = cavity.scaled(1.02)
        d = c.radius(ring, c.everywhere)
        y = c.axis[:, None] - ring.cy
        x = c.axis[None, :] - ring.cx
        theta = np.arctan2(y / ring.ry, np.abs(x) / ring.rx)  # -pi/2 (front) .. pi/2 (back), both sides
        reach = min((u - 0.5) / 0.3, 1.0)                        # the low ribs only reach the flanks
        stripes = np.cos(2 * math.pi * (u * 14.0 + self.spine_phase + theta * 0.5)) > 0.55
        band = (d > 0.9) & (d < 0.985) & (theta > -0.3 - 1.0 * reach) & (theta < 1.2) & stripes
        c.blend(c.everywhere, band.astype(np.float32), BONE - 150)

    def _finish(self, c: Canvas, slice_index: int) -> np.ndarray:
        """Correlated noise, a soft low-frequency shading, then the volume's window to 8 bits."""
        rng = np.random.default_rng(np.random.SeedSequence((*self.seed, slice_index)))  # any order, same noise
        noise = rng.standard_normal(c.hu.shape, dtype=np.float32) * (self.noise_hu * 2.5)  # the blur takes 60% off
        hu = blur(c.hu + noise)
        shading = rng.standard_normal((6, 6), dtype=np.float32) * 6.0
        hu += np.asarray(Image.fromarray(shading).resize((c.size, c.size), Image.BILINEAR))
        low = self.window_level - self.window_width / 2
        pixels = (hu - low) * (255.0 / self.window_width)
        return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes (edges repeated)."""
    padded = np.pad(image, 1, mode="edge")
    rows = padded[:-2] + 2 * padded[1:-1] + padded[2:]
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) * (1.0 / 16.0)


# ---------------------------------------------------------------------------------------------
# Writing the dataset
# ---------------------------------------------------------------------------------------------

def split_volumes(volumes: int, seed: int) -> dict[str, list[int]]:
    """Volume ids per split (~70/15/15, each split at least one volume)."""
    if volumes < 3:
        raise ValueError(f"volumes={volumes}: need at least 3 volumes, one for each of train, val and test.")
    order = np.random.default_rng(np.random.SeedSequence([seed, PHANTOM_VERSION])).permutation(volumes)
    n_val = max(1, round(volumes * SPLIT_FRACTIONS["val"]))
    n_test = max(1, round(volumes * SPLIT_FRACTIONS["test"]))
    return {"train": sorted(int(v) for v in order[n_val + n_test:]),
            "val": sorted(int(v) for v in order[:n_val]),
            "test": sorted(int(v) for v in order[n_val:n_val + n_test])}


def write_volume(split_dir: Path, seed: int, index: int, size: int, slices: int | None) -> list[str]:
    """Render and write one volume's slices and masks; return its classes.csv rows."""
    volume = Volume(seed, index, slices)
    rows = []
    for s in range(volume.slices):
        pixels, label = volume.render(s, size)
        liver, lesion = label > 0, label == 2
        names = (f"volume-{index}_{s}.png", f"segmentation-{index}_livermask_{s}.png",
                 f"segmentation-{index}_lesionmask_{s}.png")
        save_png(split_dir / "volumes" / names[0], pixels)
        save_png(split_dir / "segmentations" / names[1], liver.astype(np.uint8) * 255)
        save_png(split_dir / "segmentations" / names[2], lesion.astype(np.uint8) * 255)
        rows.append(f"{names[0]},{names[1]},{bool(liver.any())},{names[2]},{bool(lesion.any())}")
    return rows


def save_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, compress_level=PNG_COMPRESS_LEVEL)


def _write_volume_job(job: tuple) -> list[str]:
    return write_volume(*job)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_context():
    """fork on Linux: workers start at once and do not re-run the caller's script (which may lack an
    `if __name__ == "__main__":` guard); they use only numpy and Pillow. spawn elsewhere."""
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed slices' memory instead of returning it to the system at once:
    rendering makes many short-lived S x S arrays, and mapping fresh pages for each one costs as
    much as the arithmetic. Called in worker processes only; a no-op where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD: serve blocks up to 64 MiB from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap
    except (OSError, AttributeError, TypeError):
        pass


def generate_phantom_dataset(out_dir, volumes: int = DEFAULT_VOLUMES, seed: int = 0, size: int = 256,
                             slices: int | None = None, workers: int | None = None) -> dict:
    """Write the phantom dataset into `out_dir` (train/, val/, test/); return counts and class shares.

    The same arguments give the same bytes, whatever `workers` is. `slices=None` draws 48-80 slices
    per volume; `size` is the slice's height and width in pixels.
    """
    out_dir = Path(out_dir)
    if size < 16:
        raise ValueError(f"size={size} is too small: the phantom needs at least 16 x 16 pixels.")
    taken = [s for s in SPLITS if (out_dir / s).exists()]
    if taken:
        raise FileExistsError(f"{out_dir} already holds {', '.join(taken)}/: choose an empty or new folder, "
                              f"or delete the old dataset first.")
    start = time.perf_counter()
    splits = split_volumes(volumes, seed)
    jobs = []
    for split, ids in splits.items():
        for sub in ("volumes", "segmentations"):
            (out_dir / split / sub).mkdir(parents=True, exist_ok=True)
        jobs += [(out_dir / split, seed, v, size, slices) for v in ids]
    jobs.sort(key=lambda job: job[2])
    workers = min(workers or available_cores(), len(jobs))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=keep_freed_memory) as pool:
            rows = list(pool.map(_write_volume_job, jobs))
    else:
        rows = [_write_volume_job(job) for job in jobs]
    rows_by_volume = {job[2]: r for job, r in zip(jobs, rows)}
    summary = {"out_dir": str(out_dir), "volumes": splits, "slices": {}, "class_counts": {}}
    for split, ids in splits.items():
        split_rows = [row for v in ids for row in rows_by_volume[v]]
        (out_dir / split / "classes.csv").write_text("\n".join([CSV_HEADER, *split_rows]) + "\n")
        summary["slices"][split] = len(split_rows)
        summary["class_counts"][split] = class_counts(split_rows)
    total = np.sum([summary["class_counts"][s] for s in SPLITS], axis=0)
    summary["class_shares"] = [round(float(n) / total.sum(), 4) for n in total]
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def class_counts(rows: list[str]) -> list[int]:
    counts = [0, 0, 0]
    for row in rows:
        _, _, liver, _, tumours = row.split(",")
        counts[2 if tumours == "True" else 1 if liver == "True" else 0] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# The built-in default and the CLI
# ---------------------------------------------------------------------------------------------

def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("VITLAB_CACHE") or Path.home() / ".cache" / "vitlab")


def builtin_name(volumes: int = DEFAULT_VOLUMES, size: int = 256, slices: int | None = None) -> str:
    """The cache folder's name: the generator's version and seed, and any non-default setting."""
    name = f"phantom-v{PHANTOM_VERSION}-seed0"
    if (volumes, size, slices) != (DEFAULT_VOLUMES, 256, None):
        name += f"-{volumes}vol-{size}px-{slices or 'auto'}sl"
    return name


def builtin_dataset(cache_dir=None, volumes: int = DEFAULT_VOLUMES, size: int = 256, slices: int | None = None,
                    workers: int | None = None) -> Path:
    """The built-in dataset (by default 48 volumes of 256 x 256 slices, seed 0), generated once into
    `cache_dir` (default: $VITLAB_CACHE, else ~/.cache/vitlab) and reused afterwards.

    It is written into a temporary folder beside its final place and renamed when complete, so an
    interrupted run never leaves a half-made set under the final name.
    """
    root = cache_root(cache_dir)
    name = builtin_name(volumes, size, slices)
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root, name)
    temporary = root / f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    print(f"vitlab: generating the built-in phantom dataset into {final} (once; later runs reuse it)", flush=True)
    try:
        generate_phantom_dataset(temporary, volumes=volumes, size=size, slices=slices, workers=workers)
        os.rename(temporary, final)
    except OSError:
        if not final.is_dir():  # not another process finishing first: a real failure
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def _remove_abandoned(root: Path, name: str) -> None:
    """Delete temporary folders left by interrupted runs on this host (their process is gone)."""
    prefix = f".{name}.tmp-{socket.gethostname()}-"
    for path in root.glob(f".{name}.tmp-*"):
        if not path.name.startswith(prefix):
            continue
        try:
            pid = int(path.name[len(prefix):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write train/, val/ and test/ into")
    parser.add_argument("--volumes", type=int, default=DEFAULT_VOLUMES, help="number of phantom volumes (default 48)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes")
    parser.add_argument("--size", type=int, default=256, help="slice height and width in pixels (default 256)")
    parser.add_argument("--slices", type=int, default=None, help="slices per volume (default: 48 to 80, drawn)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")


def run(args: argparse.Namespace) -> int:
    try:
        summary = generate_phantom_dataset(args.out_dir, volumes=args.volumes, seed=args.seed, size=args.size,
                                           slices=args.slices, workers=args.workers)
    except (FileExistsError, ValueError) as error:
        print(f"vitlab data synth: {error}")
        return 2
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    lines = [f"wrote {summary['out_dir']} in {summary['seconds']:.1f} s",
             f"{'split':<6} {'volumes':>7} {'slices':>7} {'no liver':>9} {'liver':>7} {'tumour':>7}"]
    for split in SPLITS:
        counts = summary["class_counts"][split]
        lines.append(f"{split:<6} {len(summary['volumes'][split]):>7} {summary['slices'][split]:>7} "
                     f"{counts[0]:>9} {counts[1]:>7} {counts[2]:>7}")
    shares = summary["class_shares"]
    lines.append("class shares: " + ", ".join(f"{name} {share:.1%}" for name, share in
                                              zip(("no liver", "liver", "liver with tumour"), shares)))
    return "\n".join(lines)
