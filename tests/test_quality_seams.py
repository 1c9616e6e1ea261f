"""Seamless parallel segments: many short segments converted independently give what one long run gives.

The comparison is through the real pipeline (CLI, chunk, convert with warm-up, concat). The encoder runs
lossless here (``STEREO_SPOT_CRF=0``): two lossy encodes of the same frames with different keyframe placement
differ everywhere by the codec's own noise, which would hide what the seams themselves do.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot.cli import app
from stereo_spot.media.frames import read_frames
from stereo_spot.sample import write_sample
from stereo_spot.stereo.depth.temporal import TemporalRange

FPS = 24
SIZE = (160, 96)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _convert(tmp_path, clip, name: str, segment_seconds: float) -> np.ndarray:
    out = tmp_path / f"{name}.mp4"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--segment-seconds",
                                      str(segment_seconds), "--workers", "1"])
    assert result.exit_code == 0, result.output
    return np.stack([frame.rgb for frame in read_frames(out)])


def test_one_second_segments_match_one_long_run_at_every_seam(home, tmp_path, monkeypatch):
    monkeypatch.setenv("STEREO_SPOT_CRF", "0")
    clip = write_sample(tmp_path / "clip.mp4", seconds=10.0, size=SIZE, fps=FPS, gop=FPS // 2)
    segmented = _convert(tmp_path, clip, "segmented", 1.0)
    single = _convert(tmp_path, clip, "single", 100.0)
    assert segmented.shape == single.shape == (10 * FPS, SIZE[1], 2 * SIZE[0], 3)
    per_frame = [psnr(a, b) for a, b in zip(segmented, single, strict=True)]
    seams = {second: min(per_frame[second * FPS - 1], per_frame[second * FPS]) for second in range(1, 10)}
    print(f"\nPSNR segmented vs single run: overall {psnr(segmented, single):.1f} dB, at the seams "
          + ", ".join(f"{s}s {v:.1f}" for s, v in seams.items()))
    assert min(seams.values()) >= 40.0
    assert psnr(segmented, single) >= 40.0


def test_a_finite_memory_forgets_its_start_exactly():
    rng = np.random.default_rng(0)
    frames = [rng.normal(size=(16, 16)) * (1 + 0.1 * i) + 0.05 * i for i in range(40)]
    continuous, warmed = TemporalRange(memory=8, align=True), TemporalRange(memory=8, align=True)
    expected = [continuous.update(f) for f in frames][-1]
    for f in frames[-8:]:
        got = warmed.update(f)
    assert got == pytest.approx(expected, abs=1e-12)


def test_alignment_removes_a_models_per_frame_scale_and_shift():
    """A model that rescales its output from frame to frame (raw = s * x + b) gets the same normalised depth
    for the same scene once aligned; pooled ranges without alignment wobble."""
    rng = np.random.default_rng(1)
    scene = torch.from_numpy(rng.uniform(0.0, 1.0, size=(24, 24)))
    outputs = {}
    for align in (True, False):
        ranges = TemporalRange(memory=8, align=align)
        normalised = []
        for _ in range(20):
            scale, shift = rng.uniform(0.6, 1.6), rng.uniform(-0.3, 0.3)
            raw = scale * scene + shift
            lo, hi = ranges.update(raw)
            normalised.append(((raw - lo) / (hi - lo)).numpy())
        outputs[align] = np.stack(normalised)
    aligned_wobble = np.abs(outputs[True] - outputs[True][0]).max()
    plain_wobble = np.abs(outputs[False] - outputs[False][0]).max()
    assert aligned_wobble < 1e-6
    assert plain_wobble > 0.05


def test_a_scene_cut_restarts_the_aligned_window():
    rng = np.random.default_rng(2)
    ranges = TemporalRange(memory=8, align=True)
    first, second = rng.uniform(size=(16, 16)), rng.uniform(size=(16, 16))
    for _ in range(5):
        ranges.update(first)
    lo, hi = ranges.update(second * 10)
    assert ranges.cuts_detected == 1
    assert (lo, hi) == pytest.approx(np.percentile(second * 10, [2, 98]))


def test_the_floating_window_and_the_automatic_screen_plane_join_without_seams(home, tmp_path, monkeypatch):
    """Both keep temporal state after the depth (a finite memory each) and are warmed up with it: the frame
    edges, where the window masks, match a single long run at every seam, and the plane matches everywhere."""
    import json

    monkeypatch.setenv("STEREO_SPOT_CRF", "0")
    clip = write_sample(tmp_path / "clip.mp4", seconds=4.0, size=SIZE, fps=FPS, gop=FPS // 2)
    runs = {}
    for name, seconds in (("segmented", 1.0), ("single", 100.0)):
        out, report = tmp_path / f"{name}.mp4", tmp_path / f"{name}.json"
        result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--segment-seconds", str(seconds),
                                          "--workers", "1", "--convergence", "auto", "--report", str(report)])
        assert result.exit_code == 0, result.output
        runs[name] = (np.stack([frame.rgb for frame in read_frames(out)]), json.loads(report.read_text()))
    (segmented, report), (single, single_report) = runs["segmented"], runs["single"]
    assert single_report["window"]["active_share"] > 0.5  # there is a window to join
    assert single_report["convergence_chosen"]["max"] > single_report["convergence_chosen"]["min"]  # and a plane
    w = SIZE[0]
    edges = np.r_[0:4, w - 4:w, w:w + 4, 2 * w - 4:2 * w]  # both edges of both eyes
    seams = [min(psnr(segmented[i][:, edges], single[i][:, edges]) for i in (s * FPS - 1, s * FPS))
             for s in range(1, 4)]
    print("\nPSNR of the frame edges at the seams (window and automatic plane): "
          + ", ".join(f"{v:.1f}" for v in seams))
    assert min(seams) >= 40.0
    assert report["convergence_chosen"]["mean"] == pytest.approx(single_report["convergence_chosen"]["mean"],
                                                                 abs=1e-3)
