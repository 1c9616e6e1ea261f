"""The classical fill continues the background's texture into the holes, from the background side.

Breakages each test is there to catch (each made on purpose and seen to fail):

* filling from the foreground side (the nearer neighbour chosen in ``background_sources``): the hole PSNR against
  the true right view drops from 18-20 dB to 12 dB — ``test_fill_continues_the_background_texture``;
* the old smear (``mirror=False``, the edge pixel copied across the run): the fill's horizontal detail in the
  holes is 0 — ``test_fill_continues_the_background_texture``;
* a mirrored source taken from another surface or from a hole (the disparity or hole check dropped):
  ``test_the_mirror_stops_at_another_surface_and_at_holes``;
* the mirror off by a pixel (k → k + 1): ``test_hole_pixels_take_the_background_mirrored_about_its_edge``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_spot.stereo.fill import fill_holes
from stereo_spot.stereo.synthetic import Plane, render
from stereo_spot.stereo.warp import forward_warp

W, H = 160, 64


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / ((a - b) ** 2)[mask].mean()))


def _horizontal_detail(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean |difference| between horizontal neighbours that are both in ``mask``."""
    both = mask[:, 1:] & mask[:, :-1]
    return float(np.abs(np.diff(image, axis=1)).mean(-1)[both].mean())


@pytest.mark.parametrize("seed", [1, 3])
def test_fill_continues_the_background_texture(seed: int) -> None:
    # A textured wall behind a textured square: the holes right of the square are wall the left eye cannot see.
    views = render([Plane(-2.0, None, seed=seed), Plane(14.0, (40, 12, 90, 52), seed=seed + 10)], W, H)
    left = torch.from_numpy(views.left).permute(2, 0, 1)[None].contiguous()
    right, holes, warped = forward_warp(left, torch.from_numpy(views.disparity)[None, None])
    hole = holes[0, 0].numpy() & views.disoccluded
    hole[:, W - 30:] = False  # the frame border the view moved away from: nothing there to continue
    assert hole.sum() > 500
    filled = fill_holes(right, holes, warped)[0].permute(1, 2, 0).numpy()
    # From the wall's side: the square's texture (the other side of the hole) is far from the truth.
    assert _psnr(filled, views.right, hole) > 17.0
    # Continued, not smeared: the wall's horizontal detail carries into the hole (a copied edge pixel has none).
    assert _horizontal_detail(filled, hole) > 0.1 * _horizontal_detail(views.right, hole)


def test_hole_pixels_take_the_background_mirrored_about_its_edge() -> None:
    # One row: near surface (d = 5) on the left, a hole of 4, then far background (d = 1) with a ramp.
    right = torch.zeros(1, 1, 1, 12)
    right[0, 0, 0, :3] = 0.9
    right[0, 0, 0, 7:] = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    holes = torch.zeros(1, 1, 1, 12, dtype=torch.bool)
    holes[..., 3:7] = True
    warped = torch.zeros(1, 1, 1, 12)
    warped[..., :3], warped[..., 7:] = 5.0, 1.0
    filled = fill_holes(right, holes, warped, smooth_rows=0)[0, 0, 0].numpy()
    np.testing.assert_allclose(filled[3:7], [0.4, 0.3, 0.2, 0.1], atol=1e-6)  # 6 ← 7, 5 ← 8, 4 ← 9, 3 ← 10
    smeared = fill_holes(right, holes, warped, smooth_rows=0, mirror=False)[0, 0, 0].numpy()
    np.testing.assert_allclose(smeared[3:7], 0.1, atol=1e-6)


def test_the_mirror_stops_at_another_surface_and_at_holes() -> None:
    # Background (d = 1) of only two pixels right of the hole, then a nearer surface (d = 6) and another hole.
    right = torch.zeros(1, 1, 1, 14)
    right[0, 0, 0, :3] = 0.9
    right[0, 0, 0, 7:9] = torch.tensor([0.1, 0.2])
    right[0, 0, 0, 9:11] = 0.8  # another, nearer surface
    holes = torch.zeros(1, 1, 1, 14, dtype=torch.bool)
    holes[..., 3:7] = True
    holes[..., 11:] = True
    warped = torch.zeros(1, 1, 1, 14)
    warped[..., :3], warped[..., 7:9], warped[..., 9:11] = 5.0, 1.0, 6.0
    filled = fill_holes(right, holes, warped, smooth_rows=0)[0, 0, 0].numpy()
    # 6 ← 7, 5 ← 8; 4 would mirror to 9 (the nearer surface), 3 to 10: both take the edge pixel instead
    np.testing.assert_allclose(filled[3:7], [0.1, 0.1, 0.2, 0.1], atol=1e-6)
    warped[..., 9:11] = 1.0  # now the same surface, but a hole beyond it: 3 would mirror to 10 (fine), 11 no
    holes[..., 9] = True
    right[0, 0, 0, 9] = 0.0
    filled = fill_holes(right, holes, warped, smooth_rows=0)[0, 0, 0].numpy()
    np.testing.assert_allclose(filled[3:7], [0.8, 0.1, 0.2, 0.1], atol=1e-6)  # 4 ← 9 is a hole: the edge
