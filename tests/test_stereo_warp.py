"""Pixel correctness of the forward warp and the hole fill on scenes with known disparity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_spot.stereo.disparity import depth_to_disparity
from stereo_spot.stereo.fill import create_inpainter, fill_holes, known_inpainters
from stereo_spot.stereo.synthetic import texture
from stereo_spot.stereo.warp import WarpWorkspace, forward_warp

H, W = 24, 64


def _textured(h: int = H, w: int = W, seed: int = 3) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return texture(seed, xs, ys).astype(np.float32)


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)


def _constant(value: float, h: int = H, w: int = W) -> torch.Tensor:
    return torch.full((1, 1, h, w), float(value))


@pytest.mark.parametrize("d", [3.0, -2.0, 0.0, 7.0])
def test_integer_disparity_moves_a_plane_d_pixels(d: float) -> None:
    left = _textured()
    right, holes, warped = forward_warp(_as_tensor(left), _constant(d))
    right = right[0].permute(1, 2, 0).numpy()
    di = int(d)
    # right(x - d) == left(x) wherever both are inside the frame
    xs = np.arange(max(0, di), min(W, W + di))
    np.testing.assert_allclose(right[:, xs - di], left[:, xs], atol=1e-5)
    assert not holes[0, 0, :, xs - di].any()
    np.testing.assert_allclose(warped[0, 0, :, xs - di].numpy(), d, atol=1e-5)
    # the columns the view moved away from are holes
    if di > 0:
        assert holes[0, 0, :, W - di:].all()
    elif di < 0:
        assert holes[0, 0, :, : -di].all()


@pytest.mark.parametrize("d", [2.5, 0.25, -1.75])
def test_subpixel_disparity_interpolates_between_the_two_nearest_pixels(d: float) -> None:
    left = _textured()
    right, holes, _ = forward_warp(_as_tensor(left), _constant(d))
    right = right[0].permute(1, 2, 0).numpy()
    # The right pixel j shows the left image at j + d, linearly interpolated along the row.
    margin = int(np.ceil(abs(d))) + 1
    cols = np.arange(margin, W - margin)
    for channel in range(3):
        for row in (0, H // 2, H - 1):
            expected = np.interp(cols + d, np.arange(W), left[row, :, channel])
            np.testing.assert_allclose(right[row, cols, channel], expected, atol=1e-5)
    assert not holes[0, 0, :, cols].any()


def _two_planes(near_d: float, far_d: float) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
    """A far textured plane with a flat red near square in the middle."""
    left = _textured()
    left[6:18, 24:40] = (1.0, 0.0, 0.0)
    disparity = np.full((H, W), far_d, np.float32)
    disparity[6:18, 24:40] = near_d
    return left, torch.from_numpy(disparity)[None, None], left.copy(), disparity


def test_the_nearer_plane_occludes_the_farther_one() -> None:
    left, disparity, _, _ = _two_planes(near_d=6.0, far_d=1.0)
    right, holes, warped = forward_warp(_as_tensor(left), disparity)
    right = right[0].permute(1, 2, 0).numpy()
    # The square moves 6 px left and covers far-plane pixels that also land there (they moved 1 px).
    np.testing.assert_allclose(right[6:18, 18:34], np.broadcast_to((1.0, 0.0, 0.0), (12, 16, 3)), atol=1e-6)
    np.testing.assert_allclose(warped[0, 0, 6:18, 18:34].numpy(), 6.0, atol=1e-6)
    # Rows the square does not touch are the far plane shifted by 1 px.
    np.testing.assert_allclose(right[0:6, 5:60], left[0:6, 6:61], atol=1e-5)


def test_disocclusions_are_holes_and_are_filled_from_the_background_side() -> None:
    left, disparity, _, _ = _two_planes(near_d=6.0, far_d=1.0)
    right, holes, warped = forward_warp(_as_tensor(left), disparity)
    # Behind the square's right edge 5 columns (6 - 1) are uncovered in each of its rows.
    hole_cols = holes[0, 0, 10].nonzero().flatten().tolist()
    assert [c for c in hole_cols if c < W - 2] == [34, 35, 36, 37, 38]
    filled = fill_holes(right, holes, warped, smooth_rows=0)[0].permute(1, 2, 0).numpy()
    red = np.array([1.0, 0.0, 0.0])
    for col in range(34, 39):
        hole = filled[6:18, col]
        assert np.abs(hole - red).sum(axis=1).min() > 0.3  # nothing of the square leaks into the hole
        # the far plane beyond the hole's right edge (column 39), mirrored: 38 ← 39, 37 ← 40, …
        np.testing.assert_allclose(hole, filled[6:18, 39 + (38 - col)], atol=1e-6)


def test_fill_picks_the_farther_neighbour_on_either_side() -> None:
    # Warped views always open holes on the right of nearer things, but the fill must not assume it (frame
    # borders, stretched surfaces, other inpainters' inputs): build the inputs by hand, near on the right.
    right = torch.zeros(1, 3, 2, 10)
    right[0, :, :, :3] = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)  # far, left of the hole
    right[0, :, :, 7:] = torch.tensor([0.9, 0.8, 0.7]).view(3, 1, 1)  # near, right of the hole
    holes = torch.zeros(1, 1, 2, 10, dtype=torch.bool)
    holes[..., 3:7] = True
    warped = torch.zeros(1, 1, 2, 10)
    warped[..., :3], warped[..., 7:] = -5.0, 4.0
    filled = fill_holes(right, holes, warped, smooth_rows=0)
    np.testing.assert_allclose(filled[0, :, :, 3:7].numpy(), np.broadcast_to([[[0.1]], [[0.2]], [[0.3]]], (3, 2, 4)),
                               atol=1e-6)
    warped[..., :3], warped[..., 7:] = 4.0, -5.0  # now the right side is the farther one
    filled = fill_holes(right, holes, warped, smooth_rows=0)
    np.testing.assert_allclose(filled[0, :, :, 3:7].numpy(), np.broadcast_to([[[0.9]], [[0.8]], [[0.7]]], (3, 2, 4)),
                               atol=1e-6)
    # A hole touching the frame border has one side only.
    holes[...] = False
    holes[..., :2] = True
    filled = fill_holes(right, holes, warped, smooth_rows=0)
    np.testing.assert_allclose(filled[0, :, 0, 0].numpy(), [0.1, 0.2, 0.3], atol=1e-6)


def test_smoothing_keeps_fill_values_within_the_background_range() -> None:
    left, disparity, _, _ = _two_planes(near_d=6.0, far_d=1.0)
    right, holes, warped = forward_warp(_as_tensor(left), disparity)
    smooth = fill_holes(right, holes, warped, smooth_rows=2)[0].permute(1, 2, 0).numpy()
    hole = holes[0, 0].numpy()
    assert not np.isnan(smooth).any()
    assert smooth[hole][:, 0].max() < 0.9  # still not the red square


def test_warp_with_a_workspace_matches_without_and_batches_match_frames() -> None:
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.random((3, 3, H, W), dtype=np.float32))
    disparity = torch.from_numpy(rng.uniform(-4, 4, (3, 1, H, W)).astype(np.float32))
    batch = forward_warp(frames, disparity)
    workspace = WarpWorkspace()
    for i in range(3):
        single = forward_warp(frames[i : i + 1], disparity[i : i + 1], workspace=workspace)
        for a, b in zip(batch, single, strict=True):
            np.testing.assert_allclose(a[i : i + 1].numpy(), b.numpy(), atol=1e-5)


def test_channels_last_input_gives_the_same_result() -> None:
    left = _as_tensor(_textured())
    disparity = torch.linspace(-3, 5, W).expand(1, 1, H, W).contiguous()
    a = forward_warp(left.contiguous(), disparity)[0]
    b = forward_warp(left.contiguous(memory_format=torch.channels_last), disparity)[0]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_depth_to_disparity_convention() -> None:
    depth = torch.tensor([0.0, 0.5, 1.0])
    # 2 % of 1000 px = 20 px between farthest and nearest; convergence 0.5 puts depth 0.5 on the screen.
    np.testing.assert_allclose(depth_to_disparity(depth, 1000, 2.0, 0.5).numpy(), [-10.0, 0.0, 10.0])
    np.testing.assert_allclose(depth_to_disparity(depth, 1000, 2.0, 0.0).numpy(), [0.0, 10.0, 20.0])


def test_inpainter_registry() -> None:
    assert "classical" in known_inpainters()
    assert create_inpainter("classical").name == "classical"
    with pytest.raises(ValueError, match="classical"):
        create_inpainter("nope")


def test_a_workspace_first_used_in_inference_mode_works_outside_it() -> None:
    left, disparity = _as_tensor(_textured()), _constant(2.0)
    workspace = WarpWorkspace()
    with torch.inference_mode():
        inside = forward_warp(left, disparity, workspace=workspace)[0].clone()
    outside = forward_warp(left, disparity, workspace=workspace)[0]
    np.testing.assert_array_equal(inside.numpy(), outside.numpy())
