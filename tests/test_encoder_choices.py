"""Encoder choices (--codec, --crf, --preset, --pix-fmt, --max-fps): kept in the job's settings, so every engine
encodes the same way, with the stereo layout signalled where the codec defines it.

What each test is there to catch: a choice that does not reach the encoder (the default codec or quality used
anyway), a dropped frame rule that loses sync with the audio or differs between segments, HEVC output without
its layout signals (st3d box, frame-packing SEI), and an impossible choice that creates a job or shows a
traceback.
"""

from __future__ import annotations

import av
import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.adapters import build_backend
from stereo_spot.cli.main import app
from stereo_spot.media import spatial
from stereo_spot.media.encode import settings_for
from stereo_spot.media.frames import keeps_frame, stereo_layout
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat, VideoCodec
from stereo_spot.runner import run_job
from tests.media_fixtures import make_clip

FPS, SECONDS, SIZE = 24, 2, (96, 64)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("encoder") / "clip.mp4", seconds=SECONDS, fps=FPS, size=SIZE, gop=12)


def _stream(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for packet in container.demux(video) if packet.size)
        duration = float(container.duration / 1e6)
        return video.codec_context.name, video.codec_context.pix_fmt, frames, duration, len(container.streams.audio)


def _video_bytes(path) -> int:
    with av.open(str(path)) as container:
        return sum(packet.size for packet in container.demux(container.streams.video[0]))


def _convert(backend, clip, **choices):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0, **choices), "clip")
    steps.store_source(backend, job.job_id, clip)
    run_job(backend, job.job_id, workers=1)
    return backend.jobs.get(job.job_id), backend.objects.local_path(backend.output_bucket,
                                                                     keys.final_key(job.job_id))


def test_hevc_with_its_quality_and_preset_and_the_layout_in_the_container(backend, clip):
    job, final = _convert(backend, clip, codec=VideoCodec.LIBX265, crf=30, preset="ultrafast")
    assert job.status == JobStatus.COMPLETED and job.settings.codec is VideoCodec.LIBX265
    codec, pix_fmt, frames, duration, audio = _stream(final)
    assert (codec, pix_fmt, frames, audio) == ("hevc", "yuv420p", FPS * SECONDS, 1)
    assert spatial.read_metadata(final).stereo_mode == spatial.LEFT_RIGHT  # HEVC players read st3d
    assert stereo_layout(final) == ("side_by_side", False)  # HEVC's own frame-packing SEI, through concat
    options = settings_for(OutputFormat.SBS, codec="libx265", crf=30, preset="ultrafast").codec_options()
    assert options["crf"] == "30" and options["preset"] == "ultrafast"


def test_ten_bit_and_the_crf_reach_x264(backend, clip):
    low, low_file = _convert(backend, clip, codec=VideoCodec.LIBX264, crf=40)
    high, high_file = _convert(backend, clip, codec=VideoCodec.LIBX264, crf=10, pix_fmt="yuv420p10le")
    assert _stream(high_file)[1] == "yuv420p10le" and _stream(low_file)[1] == "yuv420p"
    assert _video_bytes(high_file) > 2 * _video_bytes(low_file)  # the quality asked for is the one encoded
    assert stereo_layout(high_file) == ("side_by_side", False)


def test_max_fps_drops_frames_evenly_and_keeps_the_timing(backend, clip):
    job, final = _convert(backend, clip, max_fps=12)
    _, _, frames, duration, audio = _stream(final)
    assert frames == 12 * SECONDS and audio == 1
    assert abs(duration - SECONDS) < 0.1
    assert job.source_frames == 12 * SECONDS  # the progress total counts the frames converted
    with av.open(str(final)) as container:  # the stream says the rate it really has, not the source's
        assert container.streams.video[0].average_rate == 12
    # the rule is a function of each frame's own time: two segments keep what one pass keeps
    kept = [i for i in range(48) if keeps_frame(i / 24, 1 / 24, 12)]
    assert kept == list(range(0, 48, 2))


def test_impossible_choices_are_refused_before_a_job_exists(home, clip):
    runner = CliRunner()
    for args, message in ((["--preset", "turbo"], "not a preset"),
                          (["--codec", "libx265", "--preset", "p4"], "not a libx265 preset"),
                          (["--codec", "h264_nvenc", "--pix-fmt", "yuv420p10le"], "cannot write yuv420p10le"),
                          (["--crf", "60"], "51")):
        result = runner.invoke(app, ["convert", str(clip), *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    backend = build_backend()
    assert not backend.jobs.list_in_progress(limit=10) and not backend.jobs.list_by_status(JobStatus.FAILED).items


def test_nvenc_where_it_does_not_open_fails_the_job_in_one_line(home, clip, tmp_path):
    from stereo_spot.stereo.devices import nvenc_usable

    if nvenc_usable("h264_nvenc"):
        pytest.skip("NVENC opens on this machine")
    result = CliRunner().invoke(app, ["convert", str(clip), "--codec", "h264_nvenc", "-o", str(tmp_path / "o.mp4"),
                                      "--workers", "1"])
    assert result.exit_code == 1 and "needs an NVIDIA GPU" in result.output and "Traceback" not in result.output
    failed = build_backend().jobs.list_by_status(JobStatus.FAILED).items
    assert failed and "needs an NVIDIA GPU" in failed[0].failure_reason
    assert clip.exists()
