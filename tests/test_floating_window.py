"""The floating window (masks at the frame edges, per eye) and the automatic screen plane (``--convergence auto``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.sample import write_sample
from stereo_spot.stereo.depth import DepthEstimator
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.screen_plane import MAX_UNCROSSED_PCT, ScreenPlane, plane_target
from stereo_spot.stereo.window import ATTACK_FRAMES, RELEASE_FRAMES, FloatingWindow

W, H = 200, 60
GRAY = 128


class FixedDepth(DepthEstimator):
    """Hands out the given depth maps [H,W] one per frame, in order (the last one again when they run out)."""

    def __init__(self, maps: list[torch.Tensor]) -> None:
        self.maps, self.calls = maps, 0

    def reset(self) -> None:
        self.calls = 0

    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        out = []
        for _ in range(frames.shape[0]):
            out.append(self.maps[min(self.calls, len(self.maps) - 1)])
            self.calls += 1
        return torch.stack(out)[:, None]


def _depth(left_edge: float = 0.5, right_edge: float = 0.5, rest: float = 0.5, columns: int = 10) -> torch.Tensor:
    depth = torch.full((H, W), rest)
    depth[:, :columns] = left_edge
    depth[:, W - columns:] = right_edge
    return depth


def _frames(n: int = 1) -> np.ndarray:
    return np.full((n, H, W, 3), GRAY, np.uint8)


def _convert(maps, n: int = 1, **settings) -> np.ndarray:
    options = {"divergence": 5.0, "convergence": 0.5, **settings}  # 10 px of disparity per unit of depth
    engine = StereoEngine(ConversionSettings(**options), device="cpu", depth=FixedDepth(maps))
    engine.reset()
    return engine.convert_batch(_frames(n))


def _needs_to_widths(needs: list[tuple[float, float]]) -> np.ndarray:
    """Widths the window gives for per-frame edge needs (pixels), through disparities that have exactly them."""
    window = FloatingWindow()
    widths = []
    for left, right in needs:
        disparity = torch.full((1, 1, 8, 100), -1.0)
        disparity[..., :3] = left
        disparity[..., -3:] = right
        widths.append(window.update(disparity)[0].tolist())
    return np.array(widths)


# --- where the window goes --------------------------------------------------------------------------------


def test_an_object_in_front_at_the_left_edge_masks_the_left_edge_of_the_left_eye():
    # 0.5 above the screen plane at the left edge: 5 px crossed
    packed = _convert([_depth(left_edge=1.0)])[0]
    left_eye, right_eye = packed[:, :W], packed[:, W:]
    assert (left_eye[:, :5] == 0).all()  # the window's left edge 5 px in front of the screen
    assert (left_eye[:, 5:] == GRAY).all()
    assert (right_eye == GRAY).all()  # the right eye keeps both its edges


def test_an_object_in_front_at_the_right_edge_masks_the_right_edge_of_the_right_eye():
    packed = _convert([_depth(right_edge=0.8)])[0]  # 3 px crossed
    left_eye, right_eye = packed[:, :W], packed[:, W:]
    assert (right_eye[:, W - 3:] == 0).all()
    assert (right_eye[:, : W - 3] == GRAY).all()
    assert (left_eye == GRAY).all()


def test_swapped_eyes_get_the_window_the_viewer_needs():
    # with --swap-eyes the viewer's left eye (the left half) is the rendered right view, and the parallax the
    # viewer sees is inverted: what was rendered 5 px behind the screen at the left edge comes out of it
    packed = _convert([_depth(left_edge=0.0)], swap_eyes=True)[0]
    viewer_left, viewer_right = packed[:, :W], packed[:, W:]
    assert (viewer_left[:, :5] == 0).all() and (viewer_left[:, 6:] == GRAY).all()
    assert (viewer_right == GRAY).all()
    assert (_convert([_depth(left_edge=1.0)], swap_eyes=True) == GRAY).all()  # behind the screen for the viewer


def test_a_fractional_width_darkens_the_inner_column_by_its_share():
    packed = _convert([_depth(left_edge=0.75)])[0]  # 2.5 px
    assert (packed[:, :2, :] == 0).all()
    assert packed[0, 2, 0] == round(GRAY * 0.5)
    assert (packed[:, 3:W] == GRAY).all()


def test_nothing_in_front_at_the_edges_no_window_and_the_same_picture_as_without_it():
    # the middle comes far out of the screen, the edges sit behind it: nothing for the window to do
    depth = _depth(left_edge=0.3, right_edge=0.5, rest=1.0)
    assert np.array_equal(_convert([depth]), _convert([depth], floating_window=False))
    assert _needs_to_widths([(0.0, 0.0)] * 5).max() == 0.0
    assert _needs_to_widths([(-3.0, -1.0)] * 5).max() == 0.0


def test_no_floating_window_leaves_the_edges_alone():
    packed = _convert([_depth(left_edge=1.0, right_edge=1.0)], floating_window=False)[0]
    assert (packed[:, :5] != 0).all() and (packed[:, -5:] != 0).all()


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_layout_keeps_its_size_and_carries_the_window(fmt):
    depth = [_depth(left_edge=1.0, right_edge=1.0)]
    on, off = _convert(depth, output_format=fmt), _convert(depth, output_format=fmt, floating_window=False)
    assert on.shape == off.shape
    changed = np.argwhere((on != off).any(axis=-1)[0])
    if fmt.is_rgbd:  # the picture beside its depth: no second eye, so no window to float
        assert not len(changed)
        return
    assert len(changed)
    if fmt in (OutputFormat.SBS, OutputFormat.CROSS):
        left_eye = 0 if fmt is OutputFormat.SBS else W  # the cross-eyed layout has the left eye on the right
        columns = set(changed[:, 1].tolist())
        assert columns == set(range(left_eye, left_eye + 5)) | set(range(2 * W - left_eye - 5, 2 * W - left_eye))
    if fmt is OutputFormat.TB:
        left_top = changed[changed[:, 0] < H]
        assert set(left_top[:, 1].tolist()) == set(range(5))  # the left eye (top) at its left edge only
        assert set(changed[changed[:, 0] >= H][:, 1].tolist()) == set(range(W - 5, W))


def test_a_still_image_gets_the_window_its_edges_need(tmp_path):
    import cv2

    from stereo_spot.stereo.image import convert_image

    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((H, W, 3), GRAY, np.uint8))
    disparity = np.full((H, W), -2.0, np.float32)
    disparity[:, :10] = 4.0  # 4 px in front of the screen at the left edge
    for on in (True, False):
        written = convert_image(photo, tmp_path / f"out-{on}.png", ConversionSettings(floating_window=on),
                                disparity=disparity, device="cpu")
        packed = cv2.imread(str(written))
        assert ((packed[:, :4] == 0).all() if on else (packed[:, :4] == GRAY).all())
        assert (packed[:, 4:W] == GRAY).all() and (packed[:, 2 * W - 4:] == GRAY).all()


# --- how wide, and how it moves ----------------------------------------------------------------------------


def test_the_width_tracks_the_parallax_at_the_edge():
    needs = [(2.0 + 0.1 * t, 6.0 - 0.05 * t) for t in range(40)]
    widths = _needs_to_widths(needs)
    assert np.abs(widths[ATTACK_FRAMES:, 0] - np.array(needs)[ATTACK_FRAMES:, 0]).max() <= 0.15
    # a need that shrinks is followed down (slowly, never below it)
    assert (widths[:, 1] >= np.array(needs)[:, 1] - 1e-6).all()
    assert widths[-1, 1] < needs[0][1] - 1.0


def test_the_window_does_not_flutter_with_noisy_depth():
    rng = np.random.default_rng(0)
    needs = [(float(v), 0.0) for v in rng.uniform(4.0, 6.0, 80)]
    widths = _needs_to_widths(needs)[:, 0]
    raw_variation = np.abs(np.diff([n for n, _ in needs])).sum()
    variation = np.abs(np.diff(widths[10:])).sum()
    assert variation < 0.2 * raw_variation
    assert np.abs(np.diff(widths)).max() <= 1.0  # the need jumps by up to 2 px from frame to frame


@pytest.mark.parametrize(("before", "after"), [(8.0, 2.0), (2.0, 8.0), (0.0, 6.0), (6.0, 0.0)])
def test_a_cut_is_one_transition(before, after):
    needs = [(before, 0.0)] * 30 + [(after, 0.0)] * 40
    widths = _needs_to_widths(needs)[:, 0]
    steps = np.diff(widths[29:])
    assert (steps <= 1e-9).all() if after < before else (steps >= -1e-9).all()  # one way, no back and forth
    assert widths[-1] == pytest.approx(after, abs=1e-6)  # and it ends where the new shot needs it
    # no jump: an ease-in over ATTACK_FRAMES, an ease-out over RELEASE_FRAMES
    largest = np.abs(steps).max()
    assert largest <= abs(after - before) / ATTACK_FRAMES + 1e-6
    if after < before:
        assert largest <= abs(after - before) * np.pi / (2 * RELEASE_FRAMES) + 1e-6
        assert widths[29 + RELEASE_FRAMES // 2] > after + 0.2 * (before - after)


def test_a_window_warmed_up_on_its_memory_matches_a_continuous_run_exactly():
    rng = np.random.default_rng(1)
    needs = [tuple(v) for v in rng.uniform(-1.0, 7.0, (90, 2))]
    continuous = _needs_to_widths(needs)
    start = 60
    warmed = _needs_to_widths(needs[start - FloatingWindow.memory:])[FloatingWindow.memory:]
    assert np.array_equal(warmed, continuous[start:])
    assert not np.array_equal(_needs_to_widths(needs[start:]), continuous[start:])  # without it: not the same


# --- the automatic screen plane ----------------------------------------------------------------------------


def test_the_automatic_plane_puts_the_edges_at_or_behind_the_screen():
    depth = _depth(left_edge=0.6, right_edge=0.65, rest=1.0)
    depth[: H // 2, W // 3: W // 2] = 0.0  # something far in the picture
    (target,) = plane_target(depth[None, None], divergence=2.0, floor=0.5)
    assert target == pytest.approx(0.65, abs=1e-6)
    fixed = StereoEngine(ConversionSettings(), device="cpu", depth=FixedDepth([depth]))
    auto = StereoEngine(ConversionSettings(auto_convergence=True), device="cpu", depth=FixedDepth([depth]))
    frames = torch.full((1, 3, H, W), 0.5)
    assert float(fixed.disparity(frames)[..., :10].max()) > 0.0  # in front of the screen at 0.5
    edges = auto.disparity(frames)[0, 0][:, list(range(10)) + list(range(W - 10, W))]
    assert float(edges.max()) <= 1e-6


def test_the_automatic_plane_is_bounded_and_glides():
    ground = torch.linspace(0.0, 1.0, H).view(H, 1).expand(H, W).clone()  # the ground nearest at the bottom
    # the edges ask for 0.9, but the far end may sit only MAX_UNCROSSED_PCT behind the screen
    (target,) = plane_target(ground[None, None], divergence=2.0, floor=0.5)
    far = float(torch.quantile(ground, 0.02))
    assert target == pytest.approx(far + MAX_UNCROSSED_PCT / 2.0, abs=0.02)
    assert plane_target(ground[None, None], divergence=5.0, floor=0.5) == [0.5]  # never in front of the floor
    assert plane_target(_depth()[None, None], divergence=2.0, floor=0.5) == [0.5]
    plane = ScreenPlane()
    low, high = _depth(left_edge=0.5)[None, None], _depth(left_edge=0.7)[None, None]
    chosen = [float(plane.update(low if t < 10 else high, 2.0, 0.5)) for t in range(10 + ScreenPlane.memory)]
    glide = np.diff(chosen[9:])
    assert (glide >= 0).all() and glide.max() < 0.2 / 4  # a glide, not a jump
    assert chosen[-1] == pytest.approx(0.7)


def test_the_automatic_plane_forgets_its_start_exactly():
    rng = np.random.default_rng(2)
    maps = [torch.from_numpy(rng.uniform(0.0, 1.0, (1, 1, 12, 40)).astype(np.float32)) for _ in range(50)]
    continuous, warmed = ScreenPlane(), ScreenPlane()
    expected = [float(continuous.update(m, 2.0, 0.3)) for m in maps][-5:]
    got = [float(warmed.update(m, 2.0, 0.3)) for m in maps[-5 - ScreenPlane.memory:]][-5:]
    assert got == expected


# --- the command line and the comfort report ----------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("window") / "clip.mp4", seconds=2.0, size=(192, 108), fps=12, gop=6)


def _report(tmp_path, clip, *options) -> tuple[dict, str]:
    out, path = tmp_path / "out.mp4", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--report", str(path),
                                      "--segment-seconds", "1", "--workers", "1", *options])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text()), result.output


def test_the_default_conversion_keeps_the_window_and_the_report_measures_it(home, tmp_path, clip):
    report, output = _report(tmp_path, clip)
    assert report["settings"]["floating_window"] is True
    # the sample's ground comes out of the screen at the bottom corners: violations without the window ...
    assert report["border_violation_ratio"] > 0.1
    # ... and none left once it is applied, with a window no wider than the parallax at the edges
    assert report["border_violation_ratio_after_window"] < 0.05
    window = report["window"]
    assert window["on"] and window["active_share"] > 0.5
    assert 0 < window["max_pct"]["left"] <= report["settings"]["divergence"] / 2 + 1e-6
    assert 0 < window["mean_pct"]["right"] <= window["max_pct"]["right"]
    assert not any("frame edge" in w for w in report["warnings"]) and "frame edge" not in output

    off, output = _report(tmp_path, clip, "--no-floating-window")
    assert off["settings"]["floating_window"] is False and off["window"]["on"] is False
    assert off["border_violation_ratio"] == report["border_violation_ratio"]  # the figure before the window
    assert off["border_violation_ratio_after_window"] == off["border_violation_ratio"]
    assert any("frame edge" in w for w in off["warnings"])


def test_convergence_auto_on_the_command_line(home, tmp_path, clip):
    report, output = _report(tmp_path, clip, "--convergence", "auto")
    assert report["settings"]["convergence"] == "auto"
    chosen = report["convergence_chosen"]
    assert 0.5 <= chosen["min"] <= chosen["mean"] <= chosen["max"] <= 1.0
    assert chosen["max"] > 0.55  # the edges asked for more than the floor
    assert "automatic screen plane: convergence" in output
    fixed, _ = _report(tmp_path, clip)
    assert report["border_violation_ratio"] < fixed["border_violation_ratio"]  # the edges went back
    for bad in ("abc", "2"):
        result = CliRunner().invoke(app, ["convert", str(clip), "--convergence", bad])
        assert result.exit_code != 0 and "--convergence" in result.output and "Traceback" not in result.output


def test_the_workflows_convergence_parameter_takes_auto():
    from stereo_spot.components.chunk import settings_overrides

    overrides = settings_overrides("", "", "auto")
    assert overrides == {"auto_convergence": True}
    merged = ConversionSettings.model_validate({**ConversionSettings().model_dump(), **overrides})
    assert merged.auto_convergence and merged.floating_window
    assert settings_overrides("", "", "0.7") == {"convergence": "0.7"}
