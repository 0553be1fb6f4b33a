"""Loops forever inside the stage's forward: the stage hits its time limit."""
from a_honest import HonestPatchEmbedding


class PatchEmbedding(HonestPatchEmbedding):
    def forward(self, x):
        while True:
            pass
