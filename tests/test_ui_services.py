"""The app's logic without Streamlit: staged uploads, upload checks, paging across statuses, progress, ETA,
playlists, the comfort report and the preview frame."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from stereo_spot import keys, steps
from stereo_spot.models import (
    IN_PROGRESS_STATUSES,
    ConversionSettings,
    Job,
    JobStatus,
    OutputFormat,
    SegmentCompletion,
    utcnow,
)
from stereo_spot.ui import services
from stereo_spot.ui.preview import frame_at
from stereo_spot.ui.report import load_report, parse_report
from stereo_spot.ui.uploads import StagingArea, UploadError, safe_file_name
from tests.media_fixtures import make_audio_only, make_clip, make_empty, make_text

# --- staging area ---------------------------------------------------------------------------------------


def test_staged_upload_is_written_in_chunks_and_read_back(tmp_path: Path):
    area = StagingArea(tmp_path / "uploads", max_bytes=1000)
    token = area.new_token()
    assert area.is_issued(token)
    assert area.get(token) is None  # nothing yet
    staged = area.receive(token, "C:\\Videos\\holiday trip.mp4", [b"a" * 300, b"b" * 300, b""])
    assert staged.ok and staged.name == "holiday trip.mp4" and staged.size == 600
    again = area.get(token)
    assert again == staged
    assert again.path.read_bytes() == b"a" * 300 + b"b" * 300
    area.discard(token)
    assert not (tmp_path / "uploads" / token).exists()
    assert not area.is_issued(token)


def test_upload_over_the_limit_stops_and_leaves_only_the_reason(tmp_path: Path):
    area = StagingArea(tmp_path / "uploads", max_bytes=1000)
    token = area.new_token()
    sent = []

    def chunks():
        for _ in range(10):
            sent.append(1)
            yield b"x" * 400

    staged = area.receive(token, "big.mp4", chunks())
    assert not staged.ok and staged.too_large
    assert "big.mp4" in staged.error and "upload limit is 1000 bytes" in staged.error
    assert len(sent) == 3  # stopped at the chunk that crossed the limit, did not read the rest
    assert [p.name for p in (tmp_path / "uploads" / token).iterdir()] == ["status.json"]
    assert area.get(token).error == staged.error


def test_declared_size_over_the_limit_is_refused_before_reading(tmp_path: Path):
    area = StagingArea(tmp_path / "uploads", max_bytes=1000)
    token = area.new_token()

    def never():
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    staged = area.receive(token, "big.mp4", never(), declared_size=5 * 1024**3)
    assert staged.too_large and "is 5.0 GB" in staged.error


def test_empty_upload_is_rejected(tmp_path: Path):
    area = StagingArea(tmp_path / "uploads", max_bytes=1000)
    token = area.new_token()
    staged = area.receive(token, "empty.mp4", [])
    assert not staged.ok and staged.error == "empty.mp4 is empty (0 bytes); choose a video file"


def test_async_receive_streams_to_disk(tmp_path: Path):
    area = StagingArea(tmp_path / "uploads", max_bytes=10 * 1024 * 1024)
    token = area.new_token()
    payload = np.random.default_rng(0).integers(0, 256, 6 * 1024 * 1024, dtype=np.uint8).tobytes()

    async def body():
        for start in range(0, len(payload), 65536):
            yield payload[start:start + 65536]

    staged = asyncio.run(area.receive_async(token, "clip.mp4", body(), declared_size=len(payload)))
    assert staged.ok and staged.size == len(payload)
    assert staged.path.read_bytes() == payload


def test_tokens_are_checked_and_stale_uploads_swept(tmp_path: Path):
    area = StagingArea(tmp_path / "uploads", max_bytes=100)
    with pytest.raises(UploadError):
        area.get("../../etc")
    assert not area.is_issued("0" * 32)
    token = area.new_token()
    area.receive(token, "a.mp4", [b"1"])
    assert area.sweep(older_than_seconds=3600) == 0
    assert area.sweep(older_than_seconds=-1) == 1
    assert area.get(token) is None


def test_safe_file_name():
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("my<clip>|.mov") == "my_clip_.mov"
    assert safe_file_name("") == "upload"


# --- checking an upload ---------------------------------------------------------------------------------


def test_check_video_describes_a_real_clip(tmp_path: Path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=2, fps=24, size=(160, 96))
    summary = services.check_video(clip, "clip.mp4")
    assert (summary.width, summary.height) == (160, 96)
    assert summary.has_audio and abs(summary.duration_seconds - 2.0) < 0.1
    assert "160×96" in summary.describe() and "with audio" in summary.describe()


@pytest.mark.parametrize("make,name,expected", [
    (make_text, "notes.mp4", "notes.mp4 is not a video file FFmpeg can read"),
    (make_empty, "empty.mp4", "empty.mp4 is empty (0 bytes)"),
    (make_audio_only, "song.m4a", "song.m4a has no video stream"),
])
def test_check_video_rejects_what_is_not_a_video(tmp_path: Path, make, name, expected):
    path = make(tmp_path / name)
    with pytest.raises(UploadError) as caught:
        services.check_video(path, name)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_check_video_rejects_a_still_picture(tmp_path: Path):
    import cv2

    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(UploadError, match="still picture"):
        services.check_video(path, "photo.png")


# --- paging ---------------------------------------------------------------------------------------------


def _job(backend, title: str, status: JobStatus, created_minutes_ago: float, **fields) -> Job:
    now = utcnow()
    job = Job(job_id=keys.new_job_id(), title=title, status=status,
              created_at=now - timedelta(minutes=created_minutes_ago), **fields)
    backend.jobs.put(job, if_absent=True)
    return job


def test_merged_page_walks_all_in_progress_statuses_newest_first(backend):
    statuses = list(IN_PROGRESS_STATUSES)
    made = [_job(backend, f"job{i}", statuses[i % len(statuses)], created_minutes_ago=i) for i in range(11)]
    _job(backend, "done", JobStatus.COMPLETED, 0.5, completed_at=utcnow())
    _job(backend, "broken", JobStatus.FAILED, 0.5)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = services.merged_page(backend.jobs, IN_PROGRESS_STATUSES, limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen += [job.title for job in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [job.title for job in made]  # newest first, each once, none of the other statuses
    assert pages == 4


def test_merged_page_with_exact_multiple_ends_without_an_empty_page(backend):
    for i in range(4):
        _job(backend, f"job{i}", JobStatus.CREATED if i % 2 else JobStatus.REASSEMBLING, i)
    first = services.merged_page(backend.jobs, IN_PROGRESS_STATUSES, limit=2)
    second = services.merged_page(backend.jobs, IN_PROGRESS_STATUSES, limit=2, cursor=first.next_cursor)
    assert [j.title for j in first.items + second.items] == ["job0", "job1", "job2", "job3"]
    assert second.next_cursor is None


def test_pager_moves_between_pages():
    pager = services.Pager.start()
    assert pager.cursor is None and not pager.has_newer and pager.number == 1
    pager.older("c1")
    pager.older("c2")
    assert pager.cursor == "c2" and pager.number == 3
    pager.newer()
    assert pager.cursor == "c1"


# --- progress and ETA -----------------------------------------------------------------------------------


def _completion(job_id: str, index: int, total: int, seconds: float = 1.0) -> SegmentCompletion:
    return SegmentCompletion(job_id=job_id, segment_index=index, total_segments=total,
                             output_key=keys.output_segment_key(job_id, index), convert_seconds=seconds)


def test_progress_counts_segments():
    job = Job(job_id=keys.new_job_id(), status=JobStatus.CHUNKING_COMPLETE, total_segments=4)
    none_done = services.job_progress(job, [])
    half = services.job_progress(job, [_completion(job.job_id, i, 4) for i in (0, 2)])
    assert none_done.segments_text == "0/4" and half.segments_text == "2/4"
    assert 0 < none_done.fraction < half.fraction < 1
    assert half.stage == "converting segments"
    waiting = services.job_progress(Job(job_id=keys.new_job_id()), [])
    assert waiting.fraction == 0 and waiting.segments_text == "–"
    done = services.job_progress(job.model_copy(update={"status": JobStatus.COMPLETED}), [])
    assert done.fraction == 1.0


def test_speed_is_told_against_real_time_or_in_frames_per_second():
    now = utcnow()
    film = Job(job_id=keys.new_job_id(), status=JobStatus.COMPLETED, source_duration_seconds=120.0,
               source_frames=3000, uploaded_at=now - timedelta(seconds=300), completed_at=now)
    assert services.speed_text(film) == "0.40× real time"
    fast = film.model_copy(update={"uploaded_at": now - timedelta(seconds=4)})
    assert services.speed_text(fast) == "30× real time"
    frames_only = film.model_copy(update={"source_duration_seconds": None})
    assert services.speed_text(frames_only) == "10.0 fps"
    assert services.speed_text(film.model_copy(update={"completed_at": None})) == "–"


def test_seconds_per_mb_and_eta_from_recent_jobs():
    now = utcnow()
    mb = 1024 * 1024
    finished = [
        Job(job_id=keys.new_job_id(), status=JobStatus.COMPLETED, source_file_size_bytes=10 * mb,
            uploaded_at=now - timedelta(seconds=100), completed_at=now),   # 10 s/MB
        Job(job_id=keys.new_job_id(), status=JobStatus.COMPLETED, source_file_size_bytes=30 * mb,
            uploaded_at=now - timedelta(seconds=150), completed_at=now),   # 5 s/MB
    ]
    assert services.seconds_per_mb(finished[0]) == pytest.approx(10.0)
    assert services.average_seconds_per_mb(finished) == pytest.approx(250 / 40)
    running = Job(job_id=keys.new_job_id(), status=JobStatus.CHUNKING_IN_PROGRESS, source_file_size_bytes=8 * mb,
                  uploaded_at=now - timedelta(seconds=20))
    progress = services.job_progress(running, [])
    estimate = services.estimate_remaining(running, progress, 6.25, now=now)
    assert estimate.remaining_seconds == pytest.approx(8 * 6.25 - 20)
    assert "recent jobs" in estimate.basis
    unknown = services.estimate_remaining(running, progress, None, now=now)
    assert unknown.remaining_seconds is None and "no completed jobs" in unknown.basis


def test_eta_blends_in_the_jobs_own_pace():
    now = utcnow()
    job = Job(job_id=keys.new_job_id(), status=JobStatus.CHUNKING_COMPLETE, total_segments=2,
              source_file_size_bytes=1024 * 1024, uploaded_at=now - timedelta(seconds=50))
    progress = services.job_progress(job, [_completion(job.job_id, 0, 2)])
    only_pace = services.estimate_remaining(job, progress, None, now=now)
    assert only_pace.remaining_seconds == pytest.approx(50 / progress.fraction - 50)
    blended = services.estimate_remaining(job, progress, 1000.0, now=now)
    assert only_pace.remaining_seconds < blended.remaining_seconds < 1000.0 - 50


def test_words():
    now = utcnow()
    assert services.format_age(now - timedelta(seconds=5), now) == "just now"
    assert services.format_age(now - timedelta(minutes=3), now) == "3 min ago"
    assert services.format_age(now - timedelta(days=2, hours=1), now) == "2 days ago"
    assert services.format_duration(75) == "1 min 15 s"
    assert services.format_duration(3.25) == "3.2 s"
    assert services.default_title("holiday.trip.mp4") == "holiday.trip"
    assert set(services.FORMAT_HELP) == set(OutputFormat)


# --- playlist -------------------------------------------------------------------------------------------


def test_playlist_m3u():
    text = services.playlist_m3u([
        services.PlaylistEntry("Holiday, day 1", "http://127.0.0.1:8501/api/jobs/a/video", 62.4),
        services.PlaylistEntry("", "http://127.0.0.1:8501/api/jobs/b/video"),
    ])
    assert text.splitlines() == [
        "#EXTM3U",
        "#EXTINF:62,Holiday day 1",
        "http://127.0.0.1:8501/api/jobs/a/video",
        "#EXTINF:-1,untitled",
        "http://127.0.0.1:8501/api/jobs/b/video",
    ]


def test_iter_completed_pages_through_the_store(backend):
    for i in range(5):
        _job(backend, f"done{i}", JobStatus.COMPLETED, i, completed_at=utcnow() - timedelta(minutes=i))
    jobs = services.iter_completed(backend.jobs, limit=4, page_size=2)
    assert [j.title for j in jobs] == ["done0", "done1", "done2", "done3"]


# --- comfort report -------------------------------------------------------------------------------------


def test_report_is_read_into_chart_data(backend):
    job = steps.create_job(backend, ConversionSettings(), "r")
    report = {
        "version": 1,
        "disparity": {
            "crossed_percentiles": {"p1": -1.2, "p50": -0.3, "p99": 0.0},
            "uncrossed_percentiles": {"p1": 0.0, "p50": 0.4, "p99": 1.9},
            "histogram": {"edges": [-2, -1, 0, 1, 2], "counts": [1, 5, 9, 3]},
        },
        "hole_ratio": 0.031,
        "flicker_index": 0.12,
        "border_violations": 2,
        "segments": [{"segment_index": 0, "convert_seconds": 3.5, "depth_seconds": 1.0},
                     {"segment_index": 1, "convert_seconds": 2.5, "depth_seconds": 0.8}],
        "warnings": ["Disparity exceeds 3% of the width in 4% of frames."],
    }
    assert load_report(backend, job.job_id) is None
    backend.objects.write_bytes(backend.output_bucket, keys.report_key(job.job_id), json.dumps(report).encode())
    parsed = load_report(backend, job.job_id)
    assert parsed.percentiles["disparity crossed"] == {1.0: -1.2, 50.0: -0.3, 99.0: 0.0}
    assert parsed.percentiles["disparity uncrossed"][99.0] == 1.9
    assert parsed.histogram == ([-1.5, -0.5, 0.5, 1.5], [1.0, 5.0, 9.0, 3.0])
    assert parsed.segment_timings == {0: {"convert_seconds": 3.5, "depth_seconds": 1.0},
                                      1: {"convert_seconds": 2.5, "depth_seconds": 0.8}}
    assert parsed.metrics == {"hole ratio": 0.031, "flicker index": 0.12, "border violations": 2.0}
    assert parsed.warnings == ["Disparity exceeds 3% of the width in 4% of frames."]


def test_report_percentiles_chart_in_percentile_order_whatever_the_series_order():
    """Catches the chart's axis in order of first appearance (p99 before p90 when only a later series has p90:
    seen on the job page of a real command-line report) instead of in percentile order."""
    parsed = parse_report({"disparity_percentiles": {"p1": -0.5, "p50": 0.1, "p99": 1.0},
                           "disparity": {"crossed_percentiles": {"p5": -0.4, "p90": 0.0}}})
    spec = parsed.percentile_chart().to_dict()
    assert spec["encoding"]["x"]["sort"] == ["p1", "p5", "p50", "p90", "p99"]
    values = next(iter(spec["datasets"].values()))
    assert {"percentile": "p90", "rank": 90.0, "series": "disparity crossed", "% of width": 0.0} in values


def test_report_list_of_percentiles():
    parsed = parse_report({"disparity_percentiles": [{"percentile": 5, "value": -0.5},
                                                     {"percentile": 95, "value": 1.5}]})
    assert parsed.percentiles == {"disparity": {5.0: -0.5, 95.0: 1.5}}
    assert parse_report({}).empty


# --- preview --------------------------------------------------------------------------------------------


def test_frame_at_decodes_the_middle_frame(tmp_path: Path):
    from tests.media_fixtures import synthetic_frame

    clip = make_clip(tmp_path / "clip.mp4", seconds=2, fps=10, size=(160, 96), gop=5, audio=False)
    frame = frame_at(clip, 0.5)
    assert frame.shape == (96, 160, 3) and frame.dtype == np.uint8
    # frame 10 of 20 is the one at 1.0 s; it matches the generator far better than frame 0 or 19
    errors = {i: np.abs(frame.astype(int) - synthetic_frame(i, 160, 96).astype(int)).mean() for i in (0, 10, 19)}
    assert errors[10] < errors[0] and errors[10] < errors[19]
    small = frame_at(clip, 0.0, max_width=80)
    assert small.shape == (48, 80, 3)
