"""vitlab.augment: the batched random affine is torchvision's affine, one draw per slice."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vitlab.augment import RandomAffineBatch, affine_grid_params, warp


def params(angle, shift=(0.0, 0.0), zoom=1.0):
    return torch.tensor([float(angle)]), torch.tensor([shift], dtype=torch.float64), torch.tensor([float(zoom)])


@pytest.mark.parametrize("height, width", [(64, 64), (64, 48)])
@pytest.mark.parametrize("angle, shift, zoom", [(0, (0, 0), 1.0), (7.0, (3, -2), 1.04), (-5.5, (0, 4), 0.96),
                                                (90, (0, 0), 1.0), (180, (1, 1), 1.0)])
def test_warp_is_torchvisions_affine(height, width, angle, shift, zoom):
    """Same pixels as torchvision.transforms.v2.functional.affine (whose angle turns clockwise)."""
    images = torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(0))
    ours = warp(images, affine_grid_params(*params(angle, shift, zoom), height, width))
    theirs = TF.affine(images, angle=-angle, translate=list(shift), scale=zoom, shear=[0.0, 0.0])
    assert torch.equal(ours, theirs)


def test_identity_quarter_turn_and_shift():
    images = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(warp(images, affine_grid_params(*params(0), 6, 6)), images)
    assert torch.equal(warp(images, affine_grid_params(*params(90), 6, 6)), torch.rot90(images, 1, (-2, -1)))
    shifted = warp(images, affine_grid_params(*params(0, (2, 1)), 6, 6))
    assert torch.equal(shifted[0, 0, 1:, 2:], images[0, 0, :-1, :-2])
    assert shifted[0, 0, 0].eq(0).all() and shifted[0, 0, :, :2].eq(0).all()  # zeros come in


def test_every_slice_gets_its_own_draw_within_the_limits():
    augment = RandomAffineBatch(degrees=8, translate=(0.04, 0.04), scale=(0.95, 1.05))
    angle, shift, zoom = augment.sample(500, 256, 200, torch.Generator().manual_seed(1))
    assert angle.abs().max() <= 8 and angle.min() < -6 and angle.max() > 6
    assert shift.eq(shift.round()).all()
    assert shift[:, 0].abs().max() <= round(0.04 * 200) and shift[:, 1].abs().max() <= round(0.04 * 256)
    assert zoom.min() >= 0.95 and zoom.max() <= 1.05
    same = torch.rand(1, 1, 32, 32).expand(4, 1, 32, 32).contiguous()
    out = augment(same, torch.Generator().manual_seed(2))
    assert out.shape == same.shape and out.dtype == same.dtype
    assert len({tuple(o.flatten().tolist()) for o in out}) == 4        # four slices, four draws
    again = augment(same, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)                                       # a seeded generator repeats


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="degrees >= 0"):
        RandomAffineBatch(degrees=-1)
    with pytest.raises(ValueError, match="scale"):
        RandomAffineBatch(scale=(1.1, 0.9))
