"""The noise of the block-diffusion objective."""

import torch

from dlm.train.objective import noise


def test_full_share_masks_whole_blocks():
    x = torch.arange(4 * 64).view(4, 64) % 50 + 10
    g = torch.Generator().manual_seed(0)
    noisy, masked = noise(x, 16, 3, generator=g, full_share=1.0)
    assert masked.all() and (noisy == 3).all()
    noisy, masked = noise(x, 16, 3, generator=g)
    assert not masked.all() and (noisy[~masked] == x[~masked]).all()


def test_full_share_is_a_share_of_blocks():
    x = torch.ones(256, 128, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    _, masked = noise(x, 32, 3, generator=g, full_share=0.25)
    whole = masked.view(256, 4, 32).all(-1).float().mean().item()
    _, plain = noise(x, 32, 3, generator=g)
    assert 0.2 < whole < 0.32  # about a quarter, plus the rare t ~ 1 draw
    assert plain.view(256, 4, 32).all(-1).float().mean().item() < 0.05
