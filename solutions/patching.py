"""Stage 1: cut the image into patches and turn every patch into a token."""
from torch import Tensor, nn


class PatchEmbedding(nn.Module):
    """[B, C, H, W] -> [B, N, E]: one token per non-overlapping P x P patch, in row-major order.

    A Conv2d whose kernel and stride both equal the patch size applies one shared Linear
    layer to every patch: each output position sees the pixels of its own patch only.
    """

    def __init__(self, in_channels: int = 1, patch_size: int = 16, embed_dim: int = 192):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(
                f"Image size {H}x{W} is not divisible by the patch size {P}: "
                f"crop or resize the image to a multiple of {P}."
            )
        x = self.proj(x)          # [B, E, H/P, W/P]
        x = x.flatten(2)          # [B, E, N], patches row by row
        return x.transpose(1, 2)  # [B, N, E]
