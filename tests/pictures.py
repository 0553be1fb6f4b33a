"""What the plot tests check of a picture, shared by the tests that write one."""
import numpy as np
from PIL import Image


def assert_not_blank(path, min_colours=4):
    """The PNG decodes, has real contrast and several colours (not a white page with a frame)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, pixels.shape
    assert pixels.std() > 10, f"{path} is almost uniform (std {pixels.std():.1f})"
    colours = np.unique(pixels.reshape(-1, 3) // 32, axis=0)  # coarse colour bins
    assert len(colours) >= min_colours, f"{path} has only {len(colours)} colour bins"
    return pixels
