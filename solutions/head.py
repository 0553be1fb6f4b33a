"""Stage 5: turn the token sequence into class scores."""
from torch import Tensor, nn

POOLS = ("cls", "mean")


class ClassificationHead(nn.Module):
    """[B, N + 1, E] -> [B, num_classes]: LayerNorm, pool the tokens, then Linear."""

    def __init__(self, embed_dim: int, num_classes: int, pool: str = "cls"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(
                f"Unknown pool {pool!r}: use 'cls' (the class token) or 'mean' (the average token)."
            )
        self.pool = pool
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)                                       # [B, N + 1, E]
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)  # [B, E]
        return self.fc(x)                                      # [B, num_classes]
