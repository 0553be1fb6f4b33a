"""Prints 20 MB while loading, then prints without end inside the stage's forward."""
from a_honest import HonestPatchEmbedding

for _ in range(2000):
    print("x" * 10_000)


class PatchEmbedding(HonestPatchEmbedding):
    def forward(self, x):
        while True:
            print("flood " * 1000)
