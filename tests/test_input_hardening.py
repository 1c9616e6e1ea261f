"""Input a stranger could send: playlists that point at local files, compute bombs, outputs that would overwrite
the input, non-finite windows."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.config import Settings
from stereo_spot.limits import LimitExceeded, check_media_limits
from stereo_spot.media.errors import MediaError
from stereo_spot.media.probe import probe
from stereo_spot.ui import services
from stereo_spot.ui.uploads import StagingArea, UploadError
from tests.media_fixtures import make_clip
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401


def make_bomb(path: Path, seconds: int = 10, fps: int = 60, size: tuple[int, int] = (3840, 2160)) -> Path:
    """A valid H.264 mp4 of ``seconds`` of ``size`` at ``fps`` in a few tens of kB: one black keyframe, then the
    same all-skip frame over and over (muxed, not encoded again, so it takes a second to make)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "51",
                                                                     "tune": "zerolatency", "g": "100000"})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((size[1], size[0], 3), np.uint8), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        packets = []
        for index in range(2):
            frame.pts = index
            packets += list(stream.encode(frame))
        packets += list(stream.encode())
        step, skip = packets[1].pts, bytes(packets[1])
        container.mux(packets[0])
        for index in range(1, seconds * fps):
            packet = av.Packet(skip)
            packet.stream, packet.time_base = stream, packets[1].time_base
            packet.pts = packet.dts = index * step
            container.mux(packet)
    return path


def test_a_small_file_declaring_10_s_of_4k_at_60_fps_is_refused(tmp_path):
    bomb = make_bomb(tmp_path / "tiny.mp4")
    assert bomb.stat().st_size < 64 * 1024
    summary = services.check_video(bomb, "tiny.mp4")
    assert (summary.width, summary.height, round(summary.fps), round(summary.duration_seconds)) == \
        (3840, 2160, 60, 10)
    with pytest.raises(UploadError, match=r"^tiny\.mp4 is 3840×2160 .*MAX_FRAME_PIXELS"):
        services.check_limits(summary, None, Settings())


def test_each_limit(tmp_path):
    config = Settings(max_frame_pixels=100 * 100, max_fps=30, max_duration_seconds=60, max_frames_per_job=900)
    check_media_limits("ok", 100, 100, 30, 30, config)
    with pytest.raises(LimitExceeded, match="MAX_FRAME_PIXELS"):
        check_media_limits("x", 101, 100, 30, 30, config)
    with pytest.raises(LimitExceeded, match="MAX_FPS"):
        check_media_limits("x", 100, 100, 31, 10, config)
    with pytest.raises(LimitExceeded, match="MAX_DURATION_SECONDS"):
        check_media_limits("x", 100, 100, 10, 61, config)
    check_media_limits("x", 100, 100, 10, 3600, config, start=100, length=50)  # the window is what counts
    with pytest.raises(LimitExceeded, match="MAX_FRAMES_PER_JOB"):
        check_media_limits("x", 100, 100, 30, 31, config)


PLAYLIST = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n"


@pytest.mark.parametrize("name", ["playlist.m3u8", "upload"])
def test_a_playlist_pointing_at_a_local_file_is_not_followed(tmp_path, name):
    secret = make_clip(tmp_path / "someone-elses.mp4", seconds=1, fps=12, size=(64, 48))
    playlist = tmp_path / name
    playlist.write_text(PLAYLIST.format(target=f"file://{secret}"))
    if name.endswith(".m3u8"):
        with av.open(str(playlist)) as container:  # what FFmpeg does unless told otherwise: reads the target
            assert container.format.name == "hls" and container.streams.video
    with pytest.raises(MediaError, match="is not a video file"):
        probe(playlist)
    with pytest.raises(UploadError, match=r"^clip\.m3u8 is not a video file"):
        services.check_video(playlist, "clip.m3u8")


def test_a_concat_list_is_not_followed(tmp_path):
    secret = make_clip(tmp_path / "secret.mp4", seconds=1, fps=12, size=(64, 48))
    listing = tmp_path / "list.mp4"
    listing.write_text(f"ffconcat version 1.0\nfile {secret}\n")
    with pytest.raises(MediaError):
        probe(listing)


def test_staging_room(tmp_path, monkeypatch):
    area = StagingArea(tmp_path / "uploads", max_bytes=10_000, max_total_bytes=15_000)
    first = area.receive(area.new_token(), "a.mp4", iter([b"x" * 9_000]))
    assert first.ok
    second = area.receive(area.new_token(), "b.mp4", iter([b"x" * 9_000]), declared_size=9_000)
    assert not second.ok and second.too_large and "MAX_STAGING_BYTES" in second.error
    area.discard(first.token)
    assert area.receive(area.new_token(), "b.mp4", iter([b"x" * 9_000])).ok
    full = StagingArea(tmp_path / "more", max_bytes=10_000, min_free_bytes=2**62)  # more than any disk has
    refused = full.receive(full.new_token(), "c.mp4", iter([b"x" * 10]), declared_size=10)
    assert not refused.ok and "MIN_FREE_BYTES" in refused.error


# --- the command line -----------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_report_onto_the_input_is_refused(home, tmp_path, monkeypatch):
    clip = make_clip(tmp_path / "x.mp4", seconds=1, fps=12, size=(64, 48))
    before = clip.read_bytes()
    monkeypatch.chdir(tmp_path)
    for report in ("x.mp4", "./x.mp4", str(clip)):
        code, output = cli("convert", "x.mp4", "--report", report)
        assert code == 1 and "is the input video" in output, output
    os.link(clip, tmp_path / "hardlink.json")
    code, output = cli("convert", "x.mp4", "--report", "hardlink.json")
    assert code == 1 and "is the input video" in output
    code, output = cli("convert", "x.mp4", "-o", "hardlink.json")
    assert code == 1 and "is the input" in output
    code, output = cli("convert", "x.mp4", "-o", "out.mp4", "--report", "out.mp4")
    assert code == 1 and "is the output video" in output
    assert clip.read_bytes() == before


@pytest.mark.parametrize("option", [["--start", "inf"], ["--duration", "inf"], ["--start", "nan"]])
def test_start_and_duration_must_be_finite(home, tmp_path, option):
    clip = make_clip(tmp_path / "x.mp4", seconds=1, fps=12, size=(64, 48))
    result = CliRunner().invoke(app, ["convert", str(clip), *option])
    assert result.exit_code != 0
    assert "Traceback" not in result.output


def test_chunk_on_the_cluster_refuses_a_source_over_the_limits(aws_settings, tmp_path, monkeypatch):  # noqa: F811
    from stereo_spot import keys, steps
    from stereo_spot.adapters.aws import aws_backend
    from stereo_spot.models import ConversionSettings, JobStatus

    backend = aws_backend(aws_settings)
    job = steps.create_job(backend, ConversionSettings(), "bomb")
    steps.store_source(backend, job.job_id, make_bomb(tmp_path / "bomb.mp4", seconds=2))
    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    with pytest.raises(LimitExceeded, match="MAX_FRAME_PIXELS"):
        steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id))
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job.job_id)) == []
    assert backend.jobs.get(job.job_id).status == JobStatus.CHUNKING_IN_PROGRESS  # the engine records the failure
