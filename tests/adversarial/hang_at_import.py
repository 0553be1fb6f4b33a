"""Defines PatchEmbedding, then loops forever while the module loads."""
from a_honest import HonestPatchEmbedding


class PatchEmbedding(HonestPatchEmbedding):
    pass


while True:
    pass
