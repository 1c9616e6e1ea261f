"""Limits hold on what is really in a file: a duration it does not declare is measured from its packets, the
frames chunking finds are counted against the limits, and a frame's size is checked before one is decoded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from stereo_spot import keys, steps
from stereo_spot.config import Settings
from stereo_spot.limits import LimitExceeded
from stereo_spot.media.probe import probe
from stereo_spot.models import ConversionSettings
from stereo_spot.ui import services
from stereo_spot.ui.uploads import UploadError
from tests.media_fixtures import make_live_matroska, make_one_frame_h264


def test_a_duration_the_file_does_not_declare_is_measured_from_its_packets(tmp_path):
    """Catches probe returning 0.0 s for Matroska written live (no duration in the header)."""
    info = probe(make_live_matroska(tmp_path / "live.mkv", seconds=60, fps=10))
    assert info.duration_seconds == pytest.approx(60.0, abs=0.2)
    assert info.video.frame_count == 600


def test_the_app_refuses_an_undeclared_60_s_over_a_10_s_limit(tmp_path):
    """Catches the app's check passing a 0.0 s probe under MAX_DURATION_SECONDS."""
    live = make_live_matroska(tmp_path / "live.mkv")
    config = Settings(max_duration_seconds=10)
    summary = services.check_video(live, "live.mkv", config)
    with pytest.raises(UploadError, match=r"^live\.mkv would convert 60 s; the limit is 10 s"):
        services.check_limits(summary, None, config)


def _app_job(backend, source, owner="alice"):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=20), "clip", owner=owner)
    steps.store_source(backend, job.job_id, source)
    return job


def test_chunk_refuses_an_app_jobs_undeclared_duration_over_the_frame_limit(home, backend, tmp_path, monkeypatch):
    """Catches the local chunk path skipping the limits for the app's jobs (and the 0.0 s probe passing them)."""
    monkeypatch.setenv("MAX_FRAMES_PER_JOB", "200")
    job = _app_job(backend, make_live_matroska(tmp_path / "live.mkv"))
    with pytest.raises(LimitExceeded, match="MAX_FRAMES_PER_JOB"):
        steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id))
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job.job_id)) == []


def test_chunk_counts_the_frames_it_finds_against_the_limit(home, backend, tmp_path, monkeypatch):
    """A header that says 1 s over 60 s of packets passes every limit on the probe; the frames chunking counts
    do not. Catches chunk trusting the header's duration (no check on the counted frames)."""
    monkeypatch.setenv("MAX_FRAMES_PER_JOB", "200")
    liar = make_live_matroska(tmp_path / "liar.mkv", declared_seconds=1.0)
    assert probe(liar).duration_seconds == pytest.approx(1.0)
    job = _app_job(backend, liar)
    with pytest.raises(LimitExceeded, match=r"more than 200 frames \(MAX_FRAMES_PER_JOB\)"):
        steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id))
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job.job_id)) == []


def test_the_command_lines_own_jobs_are_not_held_to_the_apps_limits(home, backend, tmp_path, monkeypatch):
    """Catches the limits applied to a job with no owner on local storage (``stereo-spot convert``)."""
    monkeypatch.setenv("MAX_FRAMES_PER_JOB", "200")
    job = _app_job(backend, make_live_matroska(tmp_path / "live.mkv", seconds=30), owner=None)
    result = steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id))
    assert result.total_segments == 2
    assert backend.jobs.get(job.job_id).source_frames == 300


# Peak RSS measured from a reset (/proc/self/clear_refs "5" resets VmHWM, Linux 4.0+): ru_maxrss would start at
# the test process's own peak, since a forked child inherits it.
MEASURE = textwrap.dedent("""
    import json, pathlib, sys
    from stereo_spot.config import Settings
    from stereo_spot.ui import services
    from stereo_spot.ui.uploads import UploadError

    def kib(field):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

    config = Settings()
    services.check_video(pathlib.Path(sys.argv[2]), "small.mp4", config)  # every import and decoder loaded
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    before = kib("VmHWM:")
    try:
        services.check_video(pathlib.Path(sys.argv[1]), "huge.mp4", config)
        error = None
    except UploadError as exc:
        error = str(exc)
    print(json.dumps({"extra_kib": kib("VmHWM:") - before, "error": error}))
""")


@pytest.mark.slow
def test_a_15360_square_frame_is_refused_before_it_is_decoded(tmp_path):
    """Peak memory of the check, measured in its own process (ru_maxrss is the peak). Catches the rotation read
    decoding the first frame before the size is checked, and the file being opened in the usual way (FFmpeg
    decodes the first frames while it probes the streams) before its size is checked: either costs about 540 MB
    here; the limit is 150 MB."""
    from tests.media_fixtures import make_clip

    huge = make_one_frame_h264(tmp_path / "huge.mp4", (15360, 15360))
    small = make_clip(tmp_path / "small.mp4", seconds=0.2, audio=False)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(huge), str(small)], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and "15360×15360" in result["error"] and "MAX_FRAME_PIXELS" in result["error"]
    assert result["extra_kib"] < 150 * 1024, result


def test_a_stills_size_is_read_from_its_header(tmp_path):
    """Every still format the converter reads, odd sizes included, sized without decoding (FFmpeg's png
    decoder decodes the whole picture to report its size). Catches a header field read at the wrong offset."""
    import cv2
    import numpy as np

    from stereo_spot.media.still_size import still_size

    for height, width in ((48, 64), (7, 13), (333, 1000)):
        picture = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        for suffix, options in ((".png", []), (".jpg", []), (".bmp", []), (".tif", []), (".webp", []),
                                (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):  # lossy VP8 and lossless VP8L
            path = tmp_path / f"still{suffix}"
            assert cv2.imwrite(str(path), picture, options)
            assert still_size(path) == (width, height), (suffix, options)
    assert still_size(tmp_path / "still.webp") is not None
    (tmp_path / "text.png").write_text("not a picture")
    assert still_size(tmp_path / "text.png") is None
