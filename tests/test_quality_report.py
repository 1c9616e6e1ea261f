"""The comfort report, auto divergence and the stereo layout signalled to players."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.cli.main import app
from stereo_spot.media.frames import read_frames, stereo_layout
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat, SegmentCompletion
from stereo_spot.naming import output_file_name
from stereo_spot.report import build_report
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample
from stereo_spot.stereo import auto_divergence
from stereo_spot.stereo.stats import ComfortStats
from stereo_spot.ui.report import parse_report
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401

W, H = 200, 100
SIZE = (160, 96)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=1.0, size=SIZE, fps=12, gop=6)


def _stats(disparity: torch.Tensor, holes: torch.Tensor | None = None, sample_every: int = 1) -> dict:
    stats = ComfortStats(sample_every=sample_every)
    n = disparity.shape[0]
    left = torch.full((n, 3, H, W), 0.5)
    stats.observe(left, disparity, holes if holes is not None else torch.zeros((n, 1, H, W), dtype=torch.bool))
    return stats.to_dict()


def _completion(index: int, stats: dict) -> SegmentCompletion:
    return SegmentCompletion(job_id="00000000-0000-4000-8000-000000000000", segment_index=index, total_segments=2,
                             output_key="x", frames=stats["frames"], convert_seconds=1.0,
                             stats={**stats, "timings": {"convert_seconds": 1.0, "depth_seconds": 0.25}})


def _job():
    from stereo_spot.models import Job

    return Job(job_id="00000000-0000-4000-8000-000000000000")


# --- statistics and the report ----------------------------------------------------------------------------


def test_parallax_percentiles_holes_and_borders_of_a_known_disparity():
    # left half of the picture 4 px in front of the screen (crossed: +4 px = -2 % of 200 px), right half 1.6 px
    # behind (+0.8 %); a tenth of the right view is holes; the near half touches the left edge.
    disparity = torch.zeros((3, 1, H, W))
    disparity[..., : W // 2] = 4.0
    disparity[..., W // 2:] = -1.6
    holes = torch.zeros((3, 1, H, W), dtype=torch.bool)
    holes[..., :, :20] = True
    report = build_report(_job(), [_completion(0, _stats(disparity, holes))])
    assert report["max_crossed_pct"] == pytest.approx(2.0, abs=0.05)
    assert report["max_uncrossed_pct"] == pytest.approx(0.8, abs=0.05)
    assert report["disparity"]["percentiles"]["p25"] == pytest.approx(-2.0, abs=0.05)
    assert report["disparity"]["percentiles"]["p75"] == pytest.approx(0.8, abs=0.05)
    assert report["disparity"]["crossed_share"] == pytest.approx(0.5)
    assert report["hole_ratio"] == pytest.approx(0.1)
    assert report["border"] == {"left_frames": 3, "right_frames": 0, "sampled_frames": 3,
                                "worst_parallax_pct": pytest.approx(-2.0), "segments": [0],
                                "after_window": {"left_frames": 3, "right_frames": 0, "segments": [0]}}
    assert report["border_violation_ratio"] == pytest.approx(0.5)
    assert report["border_violation_ratio_after_window"] == pytest.approx(0.5)  # no window: the same figure
    assert report["flicker_index"] == 0.0  # nothing moves
    assert any("left frame edge" in w for w in report["warnings"])
    assert not any("out of the screen" in w or "background sits" in w for w in report["warnings"])


def test_segments_merge_exactly_and_limits_produce_warnings():
    rng = np.random.default_rng(0)
    disparity = torch.from_numpy(rng.uniform(-9.0, 7.0, size=(4, 1, H, W)).astype(np.float32))  # -3.5 .. 4.5 %
    whole = build_report(_job(), [_completion(0, _stats(disparity))])
    parts = build_report(_job(), [_completion(0, _stats(disparity[:2])), _completion(1, _stats(disparity[2:]))])
    assert parts["disparity"]["percentiles"] == whole["disparity"]["percentiles"]
    assert parts["max_crossed_pct"] == whole["max_crossed_pct"] == pytest.approx(3.42, abs=0.03)
    assert [s["segment_index"] for s in parts["segments"]] == [0, 1]
    assert parts["timings"] == {"convert_seconds": 2.0, "depth_seconds": 0.5}
    warnings = " ".join(parts["warnings"])
    assert "out of the screen by up to 3.4 %" in warnings  # p1 of -3.5 .. 4.5 %
    assert "4.4 % of the width behind the screen" in warnings and "wider than 1.5 m" in warnings


def test_flicker_index_sees_depth_that_jumps_on_a_still_picture():
    steady = torch.full((6, 1, H, W), 2.0)
    jumpy = steady.clone()
    jumpy[1::2] = -2.0
    assert build_report(_job(), [_completion(0, _stats(steady))])["flicker_index"] == 0.0
    flickering = build_report(_job(), [_completion(0, _stats(jumpy))])
    assert flickering["flicker_index"] > 0.5
    assert any("flickers" in w for w in flickering["warnings"])


def test_sampling_every_nth_frame():
    stats = _stats(torch.zeros((13, 1, H, W)), sample_every=6)
    assert (stats["frames"], stats["sampled_frames"], stats["pixels"]) == (13, 3, 3 * H * W)


def test_the_pipeline_writes_a_report_the_ui_reads_and_the_cli_copies(home, backend, clip, tmp_path):
    out, report_path = tmp_path / "out.mp4", tmp_path / "reports" / "comfort.json"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--segment-seconds", "0.5",
                                      "--workers", "1", "--divergence", "8", "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert str(report_path) in result.stdout
    job_id = report["job_id"]
    assert backend.objects.read_bytes(backend.output_bucket, keys.report_key(job_id)) == report_path.read_bytes()
    assert report["sampling"]["frames"] == 12 and report["sampling"]["width"] == SIZE[0]
    assert [s["segment_index"] for s in report["segments"]] == [0, 1]
    assert all(s["convert_seconds"] > 0 and s["depth_seconds"] > 0 for s in report["segments"])
    assert report["segments"][1]["warmup_seconds"] > 0  # the second segment warmed up on the first
    # divergence 8 % with convergence 0.5: up to 4 % either way, beyond both limits
    assert report["max_crossed_pct"] > 3.0 and report["max_uncrossed_pct"] > 2.0
    assert len(report["warnings"]) >= 2
    assert "comfort:" in result.output  # the warnings are shown after the conversion
    completions = backend.completions.query_by_job(job_id)
    assert all(c.stats and c.stats["sampled_frames"] >= 1 for c in completions)
    parsed = parse_report(report)
    assert parsed.metrics["hole ratio"] == report["hole_ratio"]
    assert parsed.metrics["max in front (% of width)"] == report["max_crossed_pct"]
    assert {"disparity", "disparity crossed", "disparity uncrossed"} <= set(parsed.percentiles)
    assert parsed.histogram is not None and sorted(parsed.segment_timings) == [0, 1]
    assert parsed.warnings == report["warnings"]


def test_report_option_errors(home, clip, tmp_path):
    result = CliRunner().invoke(app, ["convert", str(clip), "--report", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in " ".join(result.output.split())


# --- auto divergence --------------------------------------------------------------------------------------


def test_auto_divergence_rule():
    uniform = auto_divergence.measure([torch.linspace(0, 1, 10001)])
    divergence, convergence = auto_divergence.choose(uniform)
    assert convergence == pytest.approx(0.75, abs=0.01)
    # the far end (q2 = 0.02) lands 1.5 % behind the screen, the near end within 2 % in front
    assert divergence * (convergence - 0.02) == pytest.approx(auto_divergence.UNCROSSED_TARGET_PCT, abs=0.02)
    assert divergence * (0.98 - convergence) <= auto_divergence.CROSSED_TARGET_PCT + 1e-6
    flat = auto_divergence.measure([torch.full((50, 50), 0.5) + torch.linspace(0, 0.05, 50)])
    assert auto_divergence.choose(flat)[0] == auto_divergence.MAX_DIVERGENCE_PCT  # never blown up further
    background = auto_divergence.measure([torch.cat([torch.zeros(900), torch.linspace(0, 1, 100)])])
    assert auto_divergence.choose(background)[1] < 0.1  # the screen sits at the dominant far plane
    # something near along the frame edges (the ground at the bottom corners): the edges go behind the screen
    ground = torch.linspace(0, 1, 100).view(100, 1).expand(100, 160).clone()
    measured = auto_divergence.measure([ground])
    assert measured.edge == pytest.approx(0.9, abs=0.01)
    assert auto_divergence.choose(measured)[1] == pytest.approx(0.9, abs=0.01)


def test_auto_divergence_is_chosen_once_per_job_and_used_by_every_segment(backend, clip):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5, auto_divergence=True), "auto")
    steps.store_source(backend, job.job_id, clip)
    steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id))
    chosen = backend.jobs.get(job.job_id).settings
    measured = auto_divergence.measure_video(clip, ConversionSettings())
    assert (chosen.divergence, chosen.convergence) == auto_divergence.choose(measured)
    assert (chosen.divergence, chosen.convergence) != (2.0, 0.5)
    done = run_job(backend, job.job_id, workers=1)
    assert done.status == JobStatus.COMPLETED
    report = json.loads(backend.objects.read_bytes(backend.output_bucket, keys.report_key(job.job_id)))
    assert report["settings"]["auto_divergence"] is True
    assert report["settings"]["divergence"] == chosen.divergence
    # the measured range: nothing beyond the targets the rule aims at (plus the guided filter's edges), and
    # the frame edges behind the screen
    assert report["max_uncrossed_pct"] <= auto_divergence.UNCROSSED_TARGET_PCT + 0.3
    assert report["border_violation_ratio"] <= 0.1


def test_auto_divergence_on_a_still_image(tmp_path):
    import cv2

    from stereo_spot.stereo.image import convert_image

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), next(read_frames(write_sample(tmp_path / "c.mp4", 0.2, SIZE, 10, audio=False))).rgb)
    written = convert_image(image, tmp_path / "out.png", ConversionSettings(auto_divergence=True), device="cpu")
    assert cv2.imread(str(written)).shape == (SIZE[1], 2 * SIZE[0], 3)


# --- players detect the layout ----------------------------------------------------------------------------


def _frames_with_layout(path) -> int:
    import av
    from av.sidedata.sidedata import Type

    with av.open(str(path)) as container:
        return sum(1 for frame in container.decode(video=0)
                   if any(d.type == Type.STEREO3D for d in frame.side_data))


@pytest.mark.parametrize("fmt,layout", [(OutputFormat.SBS, "side_by_side"), (OutputFormat.HSBS, "side_by_side"),
                                        (OutputFormat.TB, "top_bottom"), (OutputFormat.HTB, "top_bottom"),
                                        (OutputFormat.ANAGLYPH, None)])
def test_the_layout_is_in_the_bitstream_after_concat(backend, clip, fmt, layout):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5, output_format=fmt), "layout")
    steps.store_source(backend, job.job_id, clip)
    run_job(backend, job.job_id, workers=1)
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
    found = stereo_layout(final)
    if layout is None:
        assert found is None and _frames_with_layout(final) == 0
    else:
        assert found == (layout, False)  # left view first
        # every segment starts with a keyframe that repeats the arrangement, so it survives the concat
        assert _frames_with_layout(final) >= backend.jobs.get(job.job_id).total_segments == 2


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_download_names_carry_the_tokens_players_look_for(fmt):
    name = output_file_name("Holiday day 1", fmt)
    assert re.search(r"[-. _]3d[-. _]", name, re.IGNORECASE)  # Kodi: "this is 3D"
    if fmt in (OutputFormat.SBS, OutputFormat.HSBS):
        assert re.search(r"[-. _]h?sbs[-. _]", name, re.IGNORECASE)  # Kodi, DeoVR, Skybox: side by side
    if fmt in (OutputFormat.TB, OutputFormat.HTB):
        assert re.search(r"[-. _]tb[-. _]", name, re.IGNORECASE)  # DeoVR, Skybox, Pico: top-bottom
    if fmt in (OutputFormat.HSBS,):
        assert "Half" in name


def test_segment_statistics_round_trip_through_dynamodb(aws_settings):  # noqa: F811
    from stereo_spot.adapters import build_backend

    backend = build_backend(aws_settings)
    rng = np.random.default_rng(3)
    stats = _stats(torch.from_numpy(rng.uniform(-5, 5, size=(2, 1, H, W)).astype(np.float32)))
    completion = _completion(0, stats)
    backend.completions.put(completion)
    (stored,) = backend.completions.query_by_job(completion.job_id)
    assert stored.stats == completion.stats
    assert build_report(_job(), [stored]) == build_report(_job(), [completion])
