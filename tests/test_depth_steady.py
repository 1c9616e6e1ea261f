"""Steadier depth: the per-pixel temporal filter (``stereo/depth/steady.py``) and the one scene-cut rule
(``stereo/depth/cuts.py``) every depth estimator's temporal state obeys.

The clips: a static camera on a textured wall with sensor noise and a textured object walking across it (or
standing, then walking), and the sample clip's scene (``stereo-spot sample``), joined by a hard cut.

What each test is there to catch (each breakage was made on purpose and the test went red):

* ``test_a_hard_cut_restarts_the_depth_and_static_parts_flicker_less`` — the cut not resetting the state (the
  heuristic ignoring ``SceneCuts``), or the filter not resetting with it (the second shot's first frames mix
  in the first shot's depth); and the filter switched off (``SteadyDepth`` returning its input): the static
  parts' flicker is then not halved.
* ``test_moving_parts_are_followed`` — the filter ignoring the luma change (averaging moving pixels too): the
  object's depth lags behind it.
* ``test_the_filter_forgets_its_start_exactly`` and ``test_a_warmed_up_heuristic_matches_a_continuous_run`` —
  a recursive (exponential) filter, or a history longer than ``memory_frames`` says: a segment's warm-up would
  no longer reproduce a single long run at the seam.
* ``test_cuts_need_both_the_histogram_and_the_pixels_to_change`` — either half of the cut rule dropped.
* ``test_the_wall_keeps_its_depth_when_something_starts_moving`` — the 0..1 scale taken from the whole
  estimate again (motion included): every static pixel's depth then shifts when motion starts.
* ``test_flow_that_bleeds_onto_the_still_wall_adds_no_depth`` — the motion cue's luma gate dropped: the flow
  the solver spreads around a moving object reads as nearness on the unchanged wall.
* ``test_what_motion_brings_nearer_keeps_its_order`` — the headroom's roll-off replaced by a clamp (or one
  that saturates in float32): everything moving would read as equally near.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stereo_spot.sample import render_frame
from stereo_spot.stereo.depth.cuts import SceneCuts
from stereo_spot.stereo.depth.heuristic import HeuristicDepth, HeuristicParams
from stereo_spot.stereo.depth.steady import SteadyDepth
from stereo_spot.stereo.synthetic import texture

W, H = 160, 96
#: luma change (0..1) under which a pixel counts as static, as the comfort statistics count it
STATIC_LUMA = 0.02


def walking_object(frames: int, wall_seed: int, object_seed: int, brightness: float = 1.0, noise_seed: int = 0
                   ) -> np.ndarray:
    """A static camera on a textured wall; a textured box walks from left to right (2 px per frame)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    wall = texture(wall_seed, xs, ys) * brightness
    rng = np.random.default_rng(noise_seed)
    clip = []
    for i in range(frames):
        frame = wall.copy()
        x0 = 10 + 2 * i
        box = (slice(int(0.3 * H), int(0.8 * H)), slice(x0, x0 + 36))
        frame[box] = texture(object_seed, xs[box] - x0, ys[box]) * brightness
        clip.append(np.clip(frame * 255 + rng.normal(0, 2.0, frame.shape), 0, 255))
    return np.stack(clip).astype(np.uint8)


def _depth(estimator, frames: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        return torch.cat([estimator.estimate(x[i : i + 1]) for i in range(len(x))])[:, 0].numpy()


def static_flicker(frames: np.ndarray, depth: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of the depth where the luma did not change."""
    gray = frames.astype(np.float64).mean(axis=-1) / 255.0
    static = np.abs(np.diff(gray, axis=0)) < STATIC_LUMA
    return float(np.abs(np.diff(depth, axis=0))[static].mean())


def test_a_hard_cut_restarts_the_depth_and_static_parts_flicker_less():
    first = walking_object(14, wall_seed=5, object_seed=6)
    textures: dict = {}
    second = np.stack([render_frame(i / 30, W, H, textures=textures)[0] for i in range(30)])
    estimator = HeuristicDepth()
    _depth(estimator, first)
    assert estimator.cuts_detected == 0
    after_cut = _depth(estimator, second)
    assert estimator.cuts_detected == 1
    fresh = _depth(HeuristicDepth(), second)
    # From the cut on, the depth is what a fresh start on the new shot makes of it: nothing of the first shot.
    np.testing.assert_allclose(after_cut, fresh, atol=1e-5)

    unfiltered = _depth(HeuristicDepth(params=HeuristicParams(steady_frames=1)), second)
    steadied, raw = static_flicker(second[4:], after_cut[4:]), static_flicker(second[4:], unfiltered[4:])
    assert steadied < 0.5 * raw, (steadied, raw)


def test_moving_parts_are_followed():
    clip = walking_object(16, wall_seed=5, object_seed=6)
    steadied = _depth(HeuristicDepth(), clip)
    unfiltered = _depth(HeuristicDepth(params=HeuristicParams(steady_frames=1)), clip)
    gray = clip.astype(np.float64).mean(axis=-1) / 255.0
    moving = np.abs(np.diff(gray, axis=0)) > 0.1  # pixels the object's texture crossed
    lag = np.abs(steadied[1:] - unfiltered[1:])[moving].mean()
    assert lag < 0.03, lag


def test_the_filter_forgets_its_start_exactly():
    rng = np.random.default_rng(3)
    depths = [torch.from_numpy(rng.uniform(size=(1, 1, 12, 16))).float() for _ in range(30)]
    grays = [torch.from_numpy(rng.uniform(0.4, 0.45, size=(1, 1, 12, 16))).float() for _ in range(30)]
    continuous, warmed = SteadyDepth(frames=6), SteadyDepth(frames=6)
    expected = [continuous(d, g) for d, g in zip(depths, grays, strict=True)][-1]
    for d, g in list(zip(depths, grays, strict=True))[-1 - warmed.memory_frames:-1]:
        warmed(d, g)
    torch.testing.assert_close(warmed(depths[-1], grays[-1]), expected, atol=1e-6, rtol=0)
    # and it really averages: where the picture is unchanged the output is steadier than the input
    assert float((expected - depths[-1]).abs().mean()) > 0.05


def test_a_warmed_up_heuristic_matches_a_continuous_run():
    clip = walking_object(72, wall_seed=5, object_seed=6)
    continuous = HeuristicDepth()
    expected = _depth(continuous, clip)[-1]
    warmed = HeuristicDepth()
    n = warmed.memory_frames
    _depth(warmed, clip[-1 - n:-1])
    got = _depth(warmed, clip[-1:])[0]
    assert np.abs(got - expected).max() < 2e-3


def test_cuts_need_both_the_histogram_and_the_pixels_to_change():
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    wall = torch.from_numpy(texture(5, xs, ys).mean(axis=-1)).float()
    other = torch.from_numpy(texture(42, xs * 3.0, ys * 0.5).mean(axis=-1)).float() * 0.5

    def cuts(frames) -> int:
        detector = SceneCuts()
        for frame in frames:
            detector.update(frame)
        return detector.count

    assert cuts([wall, other]) == 1  # a hard cut
    assert cuts([wall, wall + 0.06]) == 0  # a light goes on: the histogram moves, the pixels barely
    assert cuts([torch.roll(wall, 6 * i, dims=1) for i in range(8)]) == 0  # a pan: pixels change, histogram not
    assert cuts([wall, wall[:48]]) == 1  # another size cannot continue the shot


@pytest.mark.parametrize("bad", [0, -1])
def test_rejects_a_filter_without_frames(bad):
    with pytest.raises(ValueError, match="at least 1 frame"):
        SteadyDepth(frames=bad)


def starts_moving(frames: int, still: int) -> np.ndarray:
    """``walking_object``'s wall and box, the box standing still for the first ``still`` frames."""
    clip = walking_object(frames, wall_seed=5, object_seed=6)
    standing = walking_object(1, wall_seed=5, object_seed=6)[0]
    noise = np.random.default_rng(9).normal(0, 2.0, (still, *standing.shape))
    clip[:still] = np.clip(standing.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    if frames > still:
        clip[still:] = walking_object(frames - still, wall_seed=5, object_seed=6)
    return clip


def test_the_wall_keeps_its_depth_when_something_starts_moving():
    still = 16
    clip = starts_moving(40, still)
    wall = (slice(None), slice(0, int(0.25 * H)), slice(int(0.7 * W), W))  # never crossed by the box

    def wall_shift(params: HeuristicParams) -> float:
        depth = _depth(HeuristicDepth(params=params), clip)[wall]
        return float(abs(depth[-8:].mean() - depth[still - 4:still].mean()))

    # the 0..1 scale set by the static cues: motion appearing elsewhere leaves the wall where it was
    steady_scale = wall_shift(HeuristicParams())
    # the scale set by the whole estimate (motion included), as before: the wall recedes as the box moves
    whole_range = wall_shift(HeuristicParams(motion_headroom=None))
    assert steady_scale < 0.01 and whole_range > 4 * steady_scale, (steady_scale, whole_range)


def test_flow_that_bleeds_onto_the_still_wall_adds_no_depth():
    # The flow solver spreads the box's motion onto the wall around it, where the picture does not change.
    clip = walking_object(30, wall_seed=5, object_seed=6)
    gated = static_flicker(clip, _depth(HeuristicDepth(params=HeuristicParams(steady_frames=1)), clip))
    trusted = static_flicker(clip, _depth(HeuristicDepth(
        params=HeuristicParams(steady_frames=1, motion_luma_gate=0.0)), clip))
    assert gated < 0.7 * trusted, (gated, trusted)


def test_what_motion_brings_nearer_keeps_its_order():
    estimator = HeuristicDepth()
    static = torch.linspace(0.0, 0.95, 64).view(1, 1, 8, 8)
    raw = static + torch.linspace(0.0, 4.0, 64).view(1, 1, 8, 8)  # the motion cue adding up to 4 spans
    depth = estimator._normalise(raw, static).reshape(-1)
    assert bool((depth[1:] > depth[:-1]).all()) and float(depth.max()) < 1.0
