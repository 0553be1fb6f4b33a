"""Calls sys.exit() inside the stage's forward."""
import sys

from a_honest import HonestPatchEmbedding


class PatchEmbedding(HonestPatchEmbedding):
    def forward(self, x):
        sys.exit(0)
