"""--format spatial's choices, checked before any job exists (no x265 needed: these run everywhere).

Catches: a spatial job accepted where no multiview x265 is installed (it would fail in every segment), a baseline
or field of view the boxes cannot carry, an error that does not name the option."""

from __future__ import annotations

import contextlib

import pytest

from stereo_spot import steps
from stereo_spot.choices import InvalidChoice, conversion_settings
from stereo_spot.media import mvhevc, vexu
from stereo_spot.media.errors import MediaError
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat
from stereo_spot.runner import run_job
from tests.media_fixtures import make_clip


def test_out_of_range_parameters_get_one_line_errors():
    with pytest.raises(MediaError, match=r"^--baseline-mm 0 is out of range"):
        vexu.check_spatial_parameters(0, 63)
    with pytest.raises(MediaError, match=r"^--hfov 190 is out of range"):
        vexu.check_spatial_parameters(64, 190)


def test_spatial_is_refused_up_front_without_the_encoder(monkeypatch, tmp_path):
    monkeypatch.setenv(mvhevc.X265_ENV, str(tmp_path / "no-x265"))
    with pytest.raises(MediaError, match=r"--format spatial needs x265 built with multiview encoding.*"
                                         r"scripts/setup --spatial"):
        conversion_settings(output_format="spatial")
    with pytest.raises(InvalidChoice, match=r"^--baseline-mm: "):
        conversion_settings(output_format="spatial", baseline_mm=0)
    with pytest.raises(InvalidChoice, match=r"^--hfov: "):
        conversion_settings(output_format="spatial", hfov=180)


def test_spatial_takes_only_8_bit_420():
    with pytest.raises(MediaError, match="--format spatial is written as yuv420p; --pix-fmt yuv444p"):
        conversion_settings(output_format="spatial", pix_fmt="yuv444p")


def test_a_spatial_job_on_a_machine_without_the_encoder_fails_with_the_reason(backend, tmp_path, monkeypatch):
    """A job made elsewhere (the app, a workflow) reaching a worker without the multiview x265: the job is
    failed with the one-line reason, not left running. Catches a writer that fails later or silently."""
    monkeypatch.setenv(mvhevc.X265_ENV, str(tmp_path / "no-x265"))
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.5, fps=24, size=(64, 48))
    job = steps.create_job(backend, ConversionSettings(output_format=OutputFormat.SPATIAL), "spatial")
    steps.store_source(backend, job.job_id, clip)
    with contextlib.suppress(Exception):
        run_job(backend, job.job_id, workers=1)
    failed = backend.jobs.get(job.job_id)
    assert failed.status is JobStatus.FAILED
    assert "--format spatial needs x265 built with multiview encoding" in failed.failure_reason
    assert "\n" not in failed.failure_reason


def test_pyav_cannot_ask_hevc_nvenc_for_two_views():
    """Why spatial video stays on x265 on a GPU too (docs/quality.md, "Not NVENC, and why"). FFmpeg 8's
    libavcodec/nvenc.c ("avcodec/nvenc: add MV-HEVC encoding support", 2025, nvenc_setup_hevc_config) turns two-view
    encoding on from an AV_FRAME_DATA_STEREO3D entry (AV_STEREO3D_FRAMESEQUENCE: the eyes as alternate frames) in
    the codec context's ``decoded_side_data``; PyAV can neither set that nor attach side data to a frame. The
    wheel's hevc_nvenc does offer the ``mv`` profile, so the missing piece is PyAV's: when it gains a way to set
    either, this goes red and the NVENC path can be built."""
    import av

    context = av.codec.CodecContext.create("hevc_nvenc", "w")
    profile = next(o for o in context.supported_options.private if o.name == "profile")
    assert "mv" in [choice.name for choice in profile.choices]  # FFmpeg's multiview build is the wheel's
    assert not hasattr(context, "decoded_side_data")
    frame = av.VideoFrame(16, 16, "yuv420p")
    assert not hasattr(frame.side_data, "__setitem__") and not hasattr(frame.side_data, "add")
    with pytest.raises(AttributeError):
        frame.side_data = {}
