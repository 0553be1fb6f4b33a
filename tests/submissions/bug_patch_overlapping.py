# expect: patching: the patches overlap
"""A 'same'-style convolution: kernel P + 2 with padding 1, so neighbouring patches overlap."""

CHANGES = [
    ("kernel_size=patch_size, stride=patch_size)",
     "kernel_size=patch_size + 2, stride=patch_size,\n"
     "                              padding=1)"),
]
