"""Ends the process, with a success code, inside the stage's forward."""
import os

from a_honest import HonestPatchEmbedding


class PatchEmbedding(HonestPatchEmbedding):
    def forward(self, x):
        os._exit(0)
