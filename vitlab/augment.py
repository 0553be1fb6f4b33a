"""Training-time augmentation of whole batches: a random affine transform per slice, in one call.

`torchvision.transforms.v2.RandomAffine` transforms one image per call, in the data loader, on
the CPU: for the course's 256 x 256 slices about 0.8 ms each, a third of the default model's
whole training step on a 2-core CPU, and far more than a GPU step takes. `RandomAffineBatch`
draws one angle, shift and zoom per slice from the same ranges and resamples the whole batch
with a single `grid_sample` in the training step, on whatever device the batch is on. Pixel for
pixel it is torchvision's affine (nearest neighbour, zeros outside the slice).

    augment = RandomAffineBatch(degrees=8, translate=(0.04, 0.04), scale=(0.95, 1.05))
    images = augment(images)            # [B, C, H, W] -> [B, C, H, W]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def affine_grid_params(angle_deg: Tensor, shift_px: Tensor, scale: Tensor, height: int, width: int) -> Tensor:
    """[B, 2, 3] matrices for F.affine_grid: output pixel -> input pixel for each slice.

    The transform turns the slice by `angle_deg` (counter-clockwise as seen on screen) about its
    centre, zooms it by `scale` and moves it by `shift_px` = (dx, dy) pixels (right, down), like
    torchvision's affine. affine_grid works in coordinates normalised to [-1, 1] per axis, so the
    pixel-space inverse is conjugated by N = diag(2 / W, 2 / H).
    """
    radians = torch.deg2rad(angle_deg.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    # inverse of (turn by angle, then zoom): turn back by -angle and divide by the zoom; y points down
    inverse = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / scale.double()[:, None, None]
    to_normalised = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    matrix = inverse * to_normalised[:, None] / to_normalised[None, :]          # N @ inverse @ N^-1
    offset = -(matrix @ (shift_px.double() * to_normalised)[..., None])          # [B, 2, 1]
    return torch.cat([matrix, offset], dim=-1)


class RandomAffineBatch(nn.Module):
    """Per slice: a turn of up to `degrees`, a shift of up to `translate` x the size (whole pixels),
    a zoom in `scale`; nearest-neighbour resampling, zeros outside the slice (as v2.RandomAffine)."""

    def __init__(self, degrees: float = 8.0, translate: tuple[float, float] = (0.04, 0.04),
                 scale: tuple[float, float] = (0.95, 1.05)):
        super().__init__()
        if degrees < 0 or not all(0 <= t <= 1 for t in translate) or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"RandomAffineBatch: degrees >= 0, translate in [0, 1], 0 < scale[0] <= scale[1]; "
                             f"got degrees={degrees}, translate={translate}, scale={scale}.")
        self.degrees, self.translate, self.scale = degrees, tuple(translate), tuple(scale)

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator | None = None):
        """(angle in degrees, shift in whole pixels (dx, dy), zoom), each [batch], drawn uniformly."""
        def uniform(low, high, *shape):
            return low + (high - low) * torch.rand(batch, *shape, dtype=torch.float64, generator=generator)
        angle = uniform(-self.degrees, self.degrees)
        limit = torch.tensor([self.translate[0] * width, self.translate[1] * height], dtype=torch.float64)
        shift = torch.round(uniform(-1.0, 1.0, 2) * limit)
        zoom = uniform(*self.scale)
        return angle, shift, zoom

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch, _, height, width = images.shape                                  # [B, C, H, W]
        angle, shift, zoom = self.sample(batch, height, width, generator)
        theta = affine_grid_params(angle, shift, zoom, height, width)
        return warp(images, theta)

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}"


def warp(images: Tensor, theta: Tensor) -> Tensor:
    """Resample every slice of `images` [B, C, H, W] with its own [2, 3] matrix (nearest, zeros outside)."""
    grid = F.affine_grid(theta.to(images.device, torch.float32), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
