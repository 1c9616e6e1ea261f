"""The heuristic depth estimator: motion parallax and position cues, temporal stability, scene-cut reset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_spot.stereo.depth import (
    DepthEstimator,
    create_depth_estimator,
    known_depth_estimators,
    register_depth_estimator,
)
from stereo_spot.stereo.depth.heuristic import HeuristicDepth
from stereo_spot.stereo.guided import box_filter, guided_filter
from stereo_spot.stereo.synthetic import parallax_clip, texture

W, H = 160, 96


def _tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _run(estimator: DepthEstimator, frames: np.ndarray, batch: int = 1) -> np.ndarray:
    x = _tensor(frames)
    with torch.inference_mode():
        out = [estimator.estimate(x[i : i + batch]) for i in range(0, len(x), batch)]
    return torch.cat(out)[:, 0].numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_nearer_faster_lower_plane_gets_larger_depth(seed: int) -> None:
    frames, truth = parallax_clip(W, H, 12, seed=seed)
    depth = _run(create_depth_estimator("heuristic"), frames)
    assert depth.shape == (12, H, W)
    assert depth.min() >= 0.0 and depth.max() <= 1.0
    for i in range(4, 12):
        near = depth[i][truth[i] == 1.0].mean()
        far = depth[i][truth[i] == 0.0].mean()
        assert near > far + 0.2, (i, near, far)


def test_batches_give_the_same_result_as_single_frames() -> None:
    frames, _ = parallax_clip(W, H, 6, seed=2)
    single = _run(HeuristicDepth(), frames, batch=1)
    batched = _run(HeuristicDepth(), frames, batch=3)
    np.testing.assert_allclose(single, batched, atol=1e-4)


def test_static_noisy_scene_is_temporally_stable() -> None:
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    base = texture(5, xs, ys) * 255
    rng = np.random.default_rng(0)
    frames = np.stack([np.clip(base + rng.normal(0, 2.0, base.shape), 0, 255) for _ in range(12)]).astype(np.uint8)
    depth = _run(HeuristicDepth(), frames)
    changes = np.abs(np.diff(depth[2:], axis=0))
    assert changes.mean() < 0.01, changes.mean()
    assert np.percentile(changes, 99) < 0.05, np.percentile(changes, 99)


def test_scene_cut_resets_the_temporal_state() -> None:
    first, _ = parallax_clip(W, H, 8, seed=0)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    other = (texture(42, xs * 3.0, ys * 0.5) * 0.5 * 255).astype(np.uint8)  # darker, different content
    second = np.stack([other] * 3)
    estimator = HeuristicDepth()
    _run(estimator, first)
    assert estimator.cuts_detected == 0
    after_cut = _run(estimator, second)
    assert estimator.cuts_detected == 1
    # Right after the cut the estimate is what a fresh estimator makes of the new shot: no history carried over.
    fresh = _run(HeuristicDepth(), second)
    np.testing.assert_allclose(after_cut[0], fresh[0], atol=1e-5)


def test_reset_forgets_history() -> None:
    frames, _ = parallax_clip(W, H, 5, seed=1)
    estimator = HeuristicDepth()
    _run(estimator, frames)
    estimator.reset()
    again = _run(estimator, frames[:1])
    fresh = _run(HeuristicDepth(), frames[:1])
    np.testing.assert_allclose(again, fresh, atol=1e-6)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        HeuristicDepth().estimate(torch.zeros(1, 1, 8, 8))


def test_registry_builds_by_name_and_lists_known_names() -> None:
    assert "heuristic" in known_depth_estimators()
    assert isinstance(create_depth_estimator("heuristic"), HeuristicDepth)
    with pytest.raises(ValueError, match="heuristic"):
        create_depth_estimator("no-such-model")
    with pytest.raises(ValueError):
        create_depth_estimator("heuristic", weights="/some/folder")

    class Flat(DepthEstimator):
        name = "flat"

        def __init__(self, weights=None, device=None) -> None:
            self.weights = weights

        def reset(self) -> None:
            pass

        def estimate(self, frames: torch.Tensor) -> torch.Tensor:
            return torch.full_like(frames[:, :1], 0.5)

    register_depth_estimator("flat-test", Flat)
    try:
        made = create_depth_estimator("flat-test", weights="w")
        assert isinstance(made, Flat) and made.weights == "w"
    finally:
        from stereo_spot.stereo.depth import DEPTH_MODELS

        DEPTH_MODELS.unregister("flat-test")


def test_box_filter_paths_agree_and_guided_filter_keeps_edges() -> None:
    x = torch.rand(2, 3, 20, 30)
    from stereo_spot.stereo.guided import _box_cv2, _box_torch

    np.testing.assert_allclose(_box_cv2(x, 7).numpy(), _box_torch(x, 3).numpy(), atol=1e-5)
    assert torch.allclose(box_filter(torch.ones(1, 1, 9, 9), 3), torch.ones(1, 1, 9, 9))
    # A step edge in the guide keeps a step in the filtered depth; a blur would spread it.
    guide = torch.zeros(1, 1, 32, 32)
    guide[..., 16:] = 1.0
    noisy = guide + 0.05 * torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = guided_filter(guide, noisy, radius=4, eps=1e-3)
    assert out[..., 14].mean() < 0.1 and out[..., 17].mean() > 0.9
