"""Bad input through the CLI: a one-line error, a non-zero exit, the job failed with the reason, the source
untouched — or a correct output where the input is merely unusual."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot.adapters.local import local_backend
from stereo_spot.cli.main import app
from stereo_spot.models import JobStatus
from stereo_spot.sample import write_sample


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def _assert_clean_failure(result, home: Path, source: Path, digest: str, words: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.output
    assert words in error_lines[0].lower(), error_lines[0]
    assert source.exists() and _digest(source) == digest
    failed = local_backend(home).jobs.list_by_status(JobStatus.FAILED).items
    assert failed and failed[0].failure_reason, "the job records the reason"


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("make,words", [
    (lambda p: (p.write_bytes(b""), p)[1], "empty"),
    (lambda p: (p.write_text("just some notes, not a video\n"), p)[1], "not a video"),
    (lambda p: _audio_only(p), "no video"),
])
def test_unusable_input_fails_cleanly(home, tmp_path, make, words):
    source = make(tmp_path / "input.mp4")
    digest = _digest(source)
    result = _run(["convert", str(source), "-o", str(tmp_path / "out.mp4")])
    _assert_clean_failure(result, home, source, digest, words)
    assert not (tmp_path / "out.mp4").exists()


def test_truncated_file_fails_cleanly_or_converts_what_is_there(home, tmp_path):
    full = write_sample(tmp_path / "full.mp4", seconds=1.0, size=(96, 64), fps=12)
    source = tmp_path / "truncated.mp4"
    source.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    digest = _digest(source)
    result = _run(["convert", str(source), "-o", str(tmp_path / "out.mp4")])
    if result.exit_code == 0:
        assert (tmp_path / "out.mp4").stat().st_size > 0
    else:
        _assert_clean_failure(result, home, source, digest, "")


def test_missing_input_is_an_error(home, tmp_path):
    result = _run(["convert", str(tmp_path / "nope.mp4")])
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output


def test_disparity_is_for_images_only(home, tmp_path):
    clip = write_sample(tmp_path / "c.mp4", seconds=0.5, size=(64, 48), fps=8)
    np.save(tmp_path / "d.npy", np.zeros((48, 64), np.float32))
    result = _run(["convert", str(clip), "--disparity", str(tmp_path / "d.npy")])
    assert result.exit_code != 0 and "still images" in result.output


def test_out_of_range_settings_are_rejected_before_any_work(home, tmp_path):
    clip = write_sample(tmp_path / "c.mp4", seconds=0.5, size=(64, 48), fps=8)
    result = _run(["convert", str(clip), "--divergence", "50"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert local_backend(home).jobs.list_in_progress() == []


@pytest.mark.parametrize("size", [(97, 63), (64, 48)])
def test_odd_sizes_and_one_frame_videos_convert(home, tmp_path, size):
    clip = write_sample(tmp_path / "c.mp4", seconds=1 / 12 if size == (64, 48) else 0.5, size=size, fps=12,
                        audio=False)
    out = tmp_path / "out.mp4"
    result = _run(["convert", str(clip), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for p in container.demux(stream) if p.size)
        assert stream.codec_context.width >= 2 * size[0] and stream.codec_context.height >= size[1]
        assert not container.streams.audio
    with av.open(str(clip)) as container:
        assert frames == sum(1 for p in container.demux(container.streams.video[0]) if p.size)


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "not-a-uuid", ""])
def test_path_like_job_ids_are_refused(home, job_id):
    result = _run(["resume", job_id])
    assert result.exit_code != 0 and "invalid job id" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("kwargs,check", [
    ({"rotation": 90, "size": (96, 64)}, "rotated"),
    ({"vfr": True}, "vfr"),
    ({"pix_fmt": "yuv420p10le"}, "10bit"),
    ({"audio_streams": 2}, "two audio streams"),
])
def test_unusual_but_valid_videos_convert(home, tmp_path, kwargs, check):
    from tests.media_fixtures import decoded_video, make_clip

    clip = make_clip(tmp_path / "in.mp4", seconds=1.0, fps=12, **kwargs)
    digest = _digest(clip)
    out = tmp_path / "out.mp4"
    result = _run(["convert", str(clip), "-o", str(out), "--segment-seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert _digest(clip) == digest
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        audio = len(container.streams.audio)
    if check == "rotated":  # a portrait phone clip comes out upright: each eye is 64 wide, 96 high
        assert (width, height) == (2 * 64, 96)
    if check == "two audio streams":
        assert audio == 2
    source_pts, source_tb = decoded_video(clip)
    out_pts, out_tb = decoded_video(out)
    assert len(out_pts) == len(source_pts)
    # timestamps (variable frame rate too) survive, from the first frame on
    start = source_pts[0]
    assert [p * out_tb for p in out_pts] == [(p - start) * source_tb for p in source_pts]


def test_a_missing_optional_dependency_is_named(home, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "streamlit" else real(name, *a))
    result = _run(["ui"])
    # the extra is named; how to install it from here (errors.install_hint) is tests/test_cli_base_install.py's
    assert result.exit_code != 0 and "'ui'" in result.output and "[ui]'" in result.output
    assert "Traceback" not in result.output
