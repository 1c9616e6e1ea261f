"""Every page of the Streamlit app through ``AppTest``, on a real local store (SQLite + folder)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import av
import pytest
from streamlit.testing.v1 import AppTest

from stereo_spot import keys, steps
from stereo_spot.media import vexu
from stereo_spot.media.mvhevc import multiview_x265
from stereo_spot.models import (
    AnaglyphMethod,
    ConversionSettings,
    Job,
    JobStatus,
    OutputFormat,
    SegmentCompletion,
    utcnow,
)
from stereo_spot.ports import Backend
from stereo_spot.runner import log_path, run_job, start_background, stop_background
from stereo_spot.ui.backend import staging_area
from tests.media_fixtures import make_clip, make_empty, make_text

APP = str(Path(__file__).resolve().parent.parent / "ui" / "streamlit_app.py")
SIZE = (160, 96)
# A background conversion of a 1 s 160x96 clip takes seconds; the limit only guards against a hang.
RUNNER_LIMIT_SECONDS = 300


def shown(element) -> str:
    """The text an element shows: its Markdown source without the escapes that keep user text literal."""
    return re.sub(r"\\(.)", r"\1", element.value)


def new_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, page: str, **query: str) -> AppTest:
    at.switch_page(page)
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, at.exception
    return at


def chunks(path: Path, size: int = 16 * 1024) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while block := source.read(size):
            yield block


def stage(at: AppTest, path: Path, name: str | None = None):
    """What the upload route does when the browser sends the file: write it to the page's staging slot."""
    token = at.session_state["upload_token"]
    return staging_area().receive(token, name or path.name, chunks(path), declared_size=path.stat().st_size)


def checked_file(at: AppTest) -> str:
    """What the page says about the checked upload: the card that takes the drop zone's place."""
    cards = [shown(m) for m in at.markdown if m.value.startswith(":material/movie:")]
    assert len(cards) == 1, cards
    return cards[0]


def drop_zones(at: AppTest) -> list:
    """The upload component (a custom component, which AppTest sees by its proto type only)."""
    return at.get("bidi_component")


def all_jobs(backend: Backend) -> list[Job]:
    return (backend.jobs.list_in_progress(limit=100) + backend.jobs.list_completed(limit=100).items
            + backend.jobs.list_by_status(JobStatus.FAILED, limit=100).items
            + backend.jobs.list_by_status(JobStatus.DELETED, limit=100).items)


def wait_terminal(backend: Backend, job_id: str, limit: float = RUNNER_LIMIT_SECONDS) -> Job:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        job = backend.jobs.get(job_id)
        if job.status.is_terminal:
            return job
        time.sleep(0.5)
    stop_background(job_id, Path(os.environ["STEREO_SPOT_HOME"]))  # leave no runner behind
    raise AssertionError(f"job {job_id} still {backend.jobs.get(job_id).status} after {limit} s")


# --- new conversion -------------------------------------------------------------------------------------


def test_the_checked_file_is_described_once_in_place_of_the_drop_zone(home, tmp_path):
    """Catches the file said twice (the picker's "Uploaded …" line, then a green box repeating it): once checked,
    the drop zone is gone and one card gives the name, size and duration; no other element names the file."""
    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    assert len(drop_zones(at)) == 1
    stage(at, clip)
    at.run()
    assert not at.exception, at.exception
    assert drop_zones(at) == []
    card = checked_file(at)
    assert "**holiday.mp4**" in card and "KB" in card and "1.0 s" in card and "160×96" in card
    texts = [shown(e) for kind in ("markdown", "success", "info", "caption", "text") for e in at.get(kind)]
    assert [t for t in texts if "holiday.mp4" in t] == [card]
    # choosing another file brings the zone back, empty, under a new token
    token = at.session_state["upload_token"]
    next(b for b in at.button if b.label == "Choose another file").click()
    at.run()
    assert len(drop_zones(at)) == 1 and at.session_state["upload_token"] != token
    assert not [m for m in at.markdown if m.value.startswith(":material/movie:")]


def test_upload_creates_the_job_and_the_runner_converts_it(home, backend, tmp_path):
    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    convert = next(b for b in at.button if b.label == "Convert to 3D")
    assert convert.disabled  # nothing uploaded yet
    staged = stage(at, clip)
    at.run()
    assert not at.exception
    card = checked_file(at)
    assert "holiday.mp4" in card and "160×96" in card
    token = at.session_state["upload_token"]
    assert at.text_input(key=f"title-{token}").value == "holiday"
    at.radio(key="output_format").set_value(OutputFormat.HSBS)
    at.slider(key="divergence").set_value(3.0)
    at.run()
    assert any("holiday-3d_Half_SBS.mp4" in shown(c) for c in at.caption)
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception
    job_id = at.query_params["job"][0] if isinstance(at.query_params["job"], list) else at.query_params["job"]
    job = backend.jobs.get(job_id)
    assert job.title == "holiday" and job.output_format == OutputFormat.HSBS and job.settings.divergence == 3.0
    assert job.source_file_size_bytes == clip.stat().st_size
    assert backend.objects.head(backend.input_bucket, keys.input_key(job_id)).size == clip.stat().st_size
    assert not staged.path.exists()  # the staged copy is gone once stored
    assert at.session_state["upload_token"] != token  # a fresh picker for the next file
    assert [shown(t) for t in at.title] == ["holiday"]
    assert log_path(home, job_id).is_file()  # the runner was started in the background
    # the job page shows its progress bar (running, or already completed: a tiny clip converts fast)
    assert len(at.get("progress")) == 1
    finished = wait_terminal(backend, job_id)
    assert finished.status == JobStatus.COMPLETED, finished.failure_reason
    final = backend.objects.head(backend.output_bucket, keys.final_key(job_id))
    assert final is not None and final.size > 0


def test_auto_divergence_is_chosen_from_the_scene(home, backend, tmp_path):
    clip = make_clip(tmp_path / "beach.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    stage(at, clip)
    at.run()
    at.toggle(key="auto_divergence").set_value(True)
    at.run()
    assert at.slider(key="divergence").disabled and at.slider(key="convergence").disabled
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception
    job_id = at.query_params["job"][0] if isinstance(at.query_params["job"], list) else at.query_params["job"]
    assert backend.jobs.get(job_id).settings.auto_divergence
    finished = wait_terminal(backend, job_id)
    assert finished.status == JobStatus.COMPLETED, finished.failure_reason
    # chunk measured the scene and stored what it chose on the job
    assert (finished.settings.divergence, finished.settings.convergence) != (2.0, 0.5)


@pytest.mark.parametrize("make,name,message", [
    (make_text, "notes.mp4", "notes.mp4 is not a video file FFmpeg can read"),
    (make_empty, "empty.mp4", "empty.mp4 is empty (0 bytes); choose a video file"),
])
def test_bad_upload_shows_why_and_creates_no_job(home, backend, tmp_path, make, name, message):
    path = make(tmp_path / name)
    at = new_app()
    first_token = at.session_state["upload_token"]
    stage(at, path)
    at.run()
    assert not at.exception
    assert [shown(e) for e in at.error] == [message] or any(message in shown(e) for e in at.error)
    assert at.session_state["upload_token"] != first_token
    assert not (home / "uploads" / first_token).exists()
    assert next(b for b in at.button if b.label == "Convert to 3D").disabled
    assert all_jobs(backend) == []


def test_upload_over_the_limit_is_refused(home, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "10000")
    clip = make_clip(tmp_path / "long.mp4", seconds=2, fps=24, size=SIZE)
    assert clip.stat().st_size > 10000
    at = new_app()
    zone = json.loads(drop_zones(at)[0].proto.json)  # what the drop zone is told to show and enforce
    assert zone["limit_text"] == "9.8 KB" and zone["max_bytes"] == 10000
    staged = stage(at, clip)
    assert staged.too_large
    at.run()
    assert any("long.mp4 is" in shown(e) and "the upload limit is 9.8 KB" in shown(e) for e in at.error)
    assert all_jobs(backend) == []


def test_anaglyph_shows_its_methods(home):
    at = new_app()
    assert [r.key for r in at.radio] == ["output_format"]
    at.radio(key="output_format").set_value(OutputFormat.ANAGLYPH).run()
    assert at.radio(key="anaglyph").value == "dubois"
    assert len(at.radio(key="anaglyph").options) == len(AnaglyphMethod)


def test_spatial_shows_its_camera_fields_only_for_spatial_and_judges_them_by_the_clis_rule(home, backend,
                                                                                          tmp_path):
    """Caught: the fields shown for every format, their values left out of the job's settings, a bound of the
    page's own instead of the settings' rule (the command line's message would then differ)."""
    from stereo_spot.choices import conversion_settings
    from stereo_spot.errors import UserError

    at = new_app()
    assert not [n for n in at.number_input if n.key in ("baseline_mm", "hfov")]
    at.radio(key="output_format").set_value(OutputFormat.SPATIAL).run()
    assert (at.number_input(key="baseline_mm").value, at.number_input(key="hfov").value) == (64.0, 63.0)
    stage(at, make_clip(tmp_path / "beach.mp4", seconds=1, fps=12, size=SIZE))
    at.run()
    at.number_input(key="hfov").set_value(180.0).run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    with pytest.raises(UserError) as cli_error:
        conversion_settings(output_format="spatial", hfov=180.0)
    assert str(cli_error.value).startswith("--hfov: ")
    assert [shown(e) for e in at.error] == [str(cli_error.value)]
    assert all_jobs(backend) == []
    at.radio(key="output_format").set_value(OutputFormat.SBS).run()
    assert not [n for n in at.number_input if n.key in ("baseline_mm", "hfov")]


@pytest.mark.skipif(multiview_x265() is None, reason="needs x265 with multiview (scripts/setup --spatial)")
def test_a_spatial_job_from_the_app_carries_the_camera_it_was_given(home, backend, tmp_path):
    at = new_app()
    at.radio(key="output_format").set_value(OutputFormat.SPATIAL).run()
    stage(at, make_clip(tmp_path / "beach.mp4", seconds=1, fps=12, size=SIZE))
    at.run()
    at.number_input(key="baseline_mm").set_value(58.5)
    at.number_input(key="hfov").set_value(70.0)
    at.run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception and not at.error, (at.exception, [shown(e) for e in at.error])
    (job,) = all_jobs(backend)
    assert (job.settings.output_format, job.settings.baseline_mm, job.settings.hfov) == ("spatial", 58.5, 70.0)
    done = wait_terminal(backend, job.job_id)
    assert done.status == JobStatus.COMPLETED, done.failure_reason
    final = tmp_path / "final.mp4"
    backend.objects.download_file(backend.output_bucket, keys.final_key(job.job_id), final)
    declared = vexu.read_spatial_video(final)
    assert declared is not None and (declared.baseline_mm, declared.hfov_degrees) == (58.5, 70.0)


# --- jobs list ------------------------------------------------------------------------------------------


def _put(backend: Backend, title: str, status: JobStatus, minutes_ago: float, **fields) -> Job:
    job = Job(job_id=keys.new_job_id(), title=title, status=status,
              created_at=utcnow() - timedelta(minutes=minutes_ago), **fields)
    backend.jobs.put(job)
    return job


def _titles(at: AppTest) -> list[str]:
    return [shown(link) for link in at.page_link]


def test_jobs_lists_paginate_newest_first(home, backend):
    in_progress = [JobStatus.CREATED, JobStatus.CHUNKING_IN_PROGRESS, JobStatus.CHUNKING_COMPLETE,
                   JobStatus.REASSEMBLING, JobStatus.CREATED]
    for i, status in enumerate(in_progress):
        _put(backend, f"running {i}", status, i, total_segments=4 if status != JobStatus.CREATED else None)
    now = utcnow()
    for i in range(3):
        _put(backend, f"done {i}", JobStatus.COMPLETED, 100 + i, completed_at=now - timedelta(minutes=i),
             uploaded_at=now - timedelta(minutes=i, seconds=90), source_file_size_bytes=3 * 1024 * 1024,
             source_duration_seconds=45.0)
    _put(backend, "broken", JobStatus.FAILED, 200, failure_reason="notes.mp4 is not a video file")
    at = open_page(new_app(), "pages/jobs.py")
    at.number_input(key="per_page").set_value(2).run()
    assert _titles(at) == ["running 0", "running 1", "done 0", "done 1", "broken"]
    assert any("0.50× real time" in shown(m) for m in at.markdown)  # 45 s of film in 90 s
    assert any("1 min 30 s" in shown(m) for m in at.markdown)
    at.button(key="older-in-progress").click().run()
    assert _titles(at)[:2] == ["running 2", "running 3"]
    at.button(key="older-in-progress").click().run()
    assert _titles(at)[:1] == ["running 4"] and _titles(at)[1] == "done 0"
    assert at.button(key="older-in-progress").disabled
    at.button(key="older-completed").click().run()
    assert _titles(at) == ["running 4", "done 2", "broken"]
    assert at.button(key="older-completed").disabled
    at.button(key="newer-in-progress").click().run()
    assert _titles(at)[:2] == ["running 2", "running 3"]
    assert any("segments 0/4" in p.proto.text for p in at.get("progress"))


# --- job detail -----------------------------------------------------------------------------------------


def test_detail_shows_progress_and_eta(home, backend):
    now = utcnow()
    # a finished job to learn the speed from: 60 s for 2 MB = 30 s/MB
    _put(backend, "earlier", JobStatus.COMPLETED, 100, completed_at=now - timedelta(minutes=50),
         uploaded_at=now - timedelta(minutes=51), source_file_size_bytes=2 * 1024 * 1024)
    job = _put(backend, "running", JobStatus.CHUNKING_COMPLETE, 0.1, total_segments=3,
               uploaded_at=now - timedelta(seconds=5), source_file_size_bytes=4 * 1024 * 1024)
    backend.completions.put(SegmentCompletion(job_id=job.job_id, segment_index=1, total_segments=3,
                                              output_key=keys.output_segment_key(job.job_id, 1), convert_seconds=2.5))
    at = open_page(new_app(), "pages/job.py", job=job.job_id)
    assert [shown(t) for t in at.title] == ["running"]
    bars = at.get("progress")
    assert len(bars) == 1 and "converting segments · segments 1/3" in bars[0].proto.text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Segments done"] == "1/3"
    assert metrics["Time left"].endswith(" min 00 s") or "min" in metrics["Time left"]
    assert any("recent jobs" in shown(c) for c in at.caption)


def test_detail_of_a_failed_job_shows_the_reason(home, backend):
    job = _put(backend, "broken", JobStatus.FAILED, 1, failure_reason="notes.mp4 is not a video file FFmpeg can read")
    at = open_page(new_app(), "pages/job.py", job=job.job_id)
    assert any("The conversion failed: notes.mp4 is not a video file" in shown(e) for e in at.error)
    assert not at.get("progress")


def test_detail_of_an_unknown_or_invalid_job(home):
    at = open_page(new_app(), "pages/job.py", job=keys.new_job_id())
    assert any(shown(e).startswith("There is no job") for e in at.error)
    at.query_params["job"] = "../etc"
    at.run()
    assert any("is not a job id" in shown(e) for e in at.error)


@pytest.fixture
def completed_job(home, backend, tmp_path) -> Job:
    """A job converted by the real embedded runner (in this process: quick and deterministic)."""
    clip = make_clip(tmp_path / "beach.mp4", seconds=1, fps=12, size=SIZE)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "beach day")
    steps.store_source(backend, job.job_id, clip)
    done = run_job(backend, job.job_id, workers=1)
    assert done.status == JobStatus.COMPLETED
    return done


def test_detail_of_a_completed_job_plays_downloads_previews_and_deletes(home, backend, completed_job):
    job_id = completed_job.job_id
    at = open_page(new_app(), "pages/job.py", job=job_id)
    videos = at.get("video")
    assert len(videos) == 1 and videos[0].proto.url.endswith(f"/api/jobs/{job_id}/video")
    download = at.link_button[0]
    assert shown(download) == "Download beach-day-3d_LRF_Full_SBS.mp4"
    assert download.proto.url.endswith(f"/api/jobs/{job_id}/video?download=1")
    images = at.get("image")
    assert len(images) == 1 and "full side-by-side (320×96 shown)" in images[0].captions[0]
    # the conversion's own comfort report: headline figures and charts
    assert {"Hole ratio", "Max in front (% of width)"} <= {m.label for m in at.metric}
    assert len(at.get("vega_lite_chart")) == 4  # percentiles, histogram, report timings, completions timings
    # a job without one says so
    backend.objects.delete(backend.output_bucket, keys.report_key(job_id))
    at.run()
    assert any(shown(c) == "This job has no comfort report." for c in at.caption)
    charts = at.get("vega_lite_chart")
    assert len(charts) == 1  # seconds per segment, from the completions

    # a comfort report, when the conversion wrote one, becomes charts and a few figures
    report = {"disparity": {"percentiles": {"p1": -0.8, "p50": 0.2, "p99": 1.6}},
              "hole_ratio": 0.02, "segments": [{"segment_index": 0, "convert_seconds": 1.5},
                                               {"segment_index": 1, "convert_seconds": 1.2}],
              "warnings": ["Strong pop-out near the frame edges."]}
    backend.objects.write_bytes(backend.output_bucket, keys.report_key(job_id), json.dumps(report).encode())
    at.run()
    assert any(shown(w) == "Strong pop-out near the frame edges." for w in at.warning)
    assert {m.label: m.value for m in at.metric}["Hole ratio"] == "0.02"
    assert len(at.get("vega_lite_chart")) == 3  # percentiles, report timings, completions timings

    next(b for b in at.button if b.label == "Delete this job").click().run()
    assert any("cannot be undone" in shown(w) for w in at.warning)
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED  # nothing happens before confirming
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    assert backend.jobs.get(job_id).status == JobStatus.DELETED
    assert not backend.objects.exists(backend.output_bucket, keys.final_key(job_id))
    assert not backend.objects.exists(backend.input_bucket, keys.input_key(job_id))
    assert backend.completions.query_by_job(job_id) == []
    assert any("This job was deleted" in shown(i) for i in at.info)


def test_deleting_a_running_job_stops_its_runner(home, backend, tmp_path):
    clip = make_clip(tmp_path / "long.mp4", seconds=20, fps=24, size=SIZE, audio=False)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=2.0), "long")
    steps.store_source(backend, job.job_id, clip)
    runner = start_background(job.job_id, home, workers=1)
    try:
        deadline = time.monotonic() + 120
        while backend.jobs.get(job.job_id).status != JobStatus.CHUNKING_COMPLETE:
            assert runner.poll() is None and time.monotonic() < deadline, "the runner ended before converting"
            time.sleep(0.2)
        at = open_page(new_app(), "pages/job.py", job=job.job_id)
        next(b for b in at.button if b.label == "Delete this job").click().run()
        next(b for b in at.button if b.label == "Yes, delete").click().run()
        assert runner.wait(timeout=30) == -signal.SIGTERM  # stopped, not finished or failed on its own
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
    assert backend.jobs.get(job.job_id).status == JobStatus.DELETED
    time.sleep(1.0)  # a runner that was not stopped would write its next segment now
    assert backend.objects.list_keys(backend.output_bucket, keys.job_output_prefix(job.job_id)) == []
    assert backend.completions.query_by_job(job.job_id) == []


def test_delete_can_be_cancelled(home, backend):
    job = _put(backend, "keep me", JobStatus.FAILED, 1, failure_reason="x")
    at = open_page(new_app(), "pages/job.py", job=job.job_id)
    next(b for b in at.button if b.label == "Delete this job").click().run()
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert backend.jobs.get(job.job_id).status == JobStatus.FAILED
    assert any(b.label == "Delete this job" for b in at.button)


# --- how to watch ---------------------------------------------------------------------------------------


def test_how_to_watch_lists_players_and_offers_the_playlist(home, backend, completed_job):
    at = open_page(new_app(), "pages/how_to_watch.py")
    tables = at.table
    assert "Meta Quest" in tables[0].value.iloc[0, 0]
    assert set(tables[1].value["Format"]) == {f.label for f in OutputFormat}
    assert [d.label for d in at.download_button] == ["Download playlist (1 video, M3U)"]


def test_how_to_watch_without_finished_jobs(home):
    at = open_page(new_app(), "pages/how_to_watch.py")
    assert any(shown(c) == "No finished videos yet." for c in at.caption)


# --- an unreachable store -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["pages/new_conversion.py", "pages/jobs.py", "pages/job.py",
                                  "pages/how_to_watch.py"])
def test_an_unreachable_store_is_reported_not_raised(tmp_path, monkeypatch, page):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("STEREO_SPOT_HOME", str(blocker / "home"))
    monkeypatch.setenv("STORAGE_ADAPTER", "local")
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page != "pages/new_conversion.py":
        at.switch_page(page)
        at.query_params["job"] = keys.new_job_id()
        at.run()
    assert not at.exception, at.exception
    assert any(shown(e).startswith("The job store cannot be reached:") for e in at.error)


def test_an_unreachable_aws_store_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STORAGE_ADAPTER", "aws")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/jobs.py").run()
    assert not at.exception, at.exception
    assert any(shown(e).startswith("The job store cannot be reached:") for e in at.error)



def test_new_conversion_offers_the_clis_options_with_the_same_validation(home, backend, tmp_path):
    from stereo_spot.choices import conversion_settings
    from stereo_spot.errors import UserError

    clip = make_clip(tmp_path / "beach.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    assert "heuristic" == at.selectbox(key="depth_model").value and at.selectbox(key="inpaint").value == "classical"
    assert {"heuristic", "depth-anything"} <= set(at.selectbox(key="depth_model").options)
    stage(at, clip)
    at.run()
    # a neural model without weights: the command line's own message, and no job
    at.selectbox(key="depth_model").set_value("depth-anything")
    at.run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    with pytest.raises(UserError) as cli_error:
        conversion_settings(depth_model="depth-anything")
    assert [shown(e) for e in at.error] == [str(cli_error.value)]
    assert all_jobs(backend) == []
    # a window: start and duration travel with the job
    at.selectbox(key="depth_model").set_value("heuristic")
    at.number_input(key="start").set_value(0.25)
    at.number_input(key="duration").set_value(0.5)
    at.run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception
    (job,) = all_jobs(backend)
    assert (job.settings.start, job.settings.duration, job.settings.depth_model) == (0.25, 0.5, "heuristic")
    wait_terminal(backend, job.job_id)


def test_new_conversion_offers_the_clis_encoder_choices(home, backend, tmp_path):
    from stereo_spot.choices import conversion_settings
    from stereo_spot.errors import UserError

    clip = make_clip(tmp_path / "beach.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    assert set(at.selectbox(key="codec").options) >= {"auto", "libx264", "libx265", "h264_nvenc", "hevc_nvenc"}
    assert at.selectbox(key="codec").value == "auto" and at.selectbox(key="pix_fmt").value == "automatic"
    stage(at, clip)
    at.run()
    # a preset the encoder does not have: the command line's own message, and no job
    at.selectbox(key="codec").set_value("libx265")
    at.text_input(key="preset").set_value("warp9")
    at.run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    with pytest.raises(UserError) as cli_error:
        conversion_settings(codec="libx265", preset="warp9")
    assert [shown(e) for e in at.error] == [str(cli_error.value)]
    assert all_jobs(backend) == []
    # the choices travel with the job, so every engine encodes the same way
    at.text_input(key="preset").set_value("ultrafast")
    at.number_input(key="crf").set_value(24)
    at.selectbox(key="pix_fmt").set_value("yuv420p10le")
    at.number_input(key="max_fps").set_value(6.0)
    at.selectbox(key="precision").set_value("fp32")
    at.run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception
    (job,) = all_jobs(backend)
    settings = job.settings
    assert (settings.codec, settings.preset, settings.crf, settings.pix_fmt, settings.max_fps, settings.precision) \
        == ("libx265", "ultrafast", 24, "yuv420p10le", 6.0, "fp32")
    done = wait_terminal(backend, job.job_id)
    assert done.status == JobStatus.COMPLETED, done.failure_reason
    final = tmp_path / "final.mp4"
    backend.objects.download_file(backend.output_bucket, keys.final_key(job.job_id), final)
    with av.open(str(final)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("hevc", "yuv420p10le")
        assert sum(1 for _ in container.decode(stream)) == 6  # 12 fps for 1 s, limited to 6 fps


def test_the_upload_shows_a_preview_that_follows_the_sliders(home, backend, tmp_path):
    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    assert not at.get("image")  # nothing uploaded: no preview
    stage(at, clip)
    at.run()
    assert not at.exception, at.exception
    first = at.get("image")
    assert len(first) == 1 and "Full side-by-side at 0.3 s" in first[0].proto.imgs[0].caption
    shown = first[0].proto.imgs[0].url
    at.slider(key="divergence").set_value(6.0).run()
    moved = at.get("image")[0].proto.imgs[0]
    assert moved.url != shown  # a new picture for the new strength
    at.radio(key="output_format").set_value(OutputFormat.TB).run()
    assert "Full top-bottom" in at.get("image")[0].proto.imgs[0].caption
    assert not backend.jobs.list_in_progress(limit=10)  # previewing creates no job
