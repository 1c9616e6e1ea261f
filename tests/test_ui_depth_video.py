"""The app's depth video: a depth job (its result downloads as the .mkv), and a conversion that renders from an
uploaded depth video (its own drop zone, checked against the video before any job exists).

Seen red: the depth video stored by reference to the staged file (the background run then finds it gone), the
job page offering the player of a file no browser plays, the download served as video/mp4, a misfit depth video
creating a job, the jobs list calling a depth job by the format it never made, the playlist listing a depth
video.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from stereo_spot import keys
from stereo_spot.media.depth_video import DepthWriter, read_depth_video
from stereo_spot.models import JobStatus
from stereo_spot.ui.auth import local_identity
from stereo_spot.ui.backend import staging_area
from stereo_spot.ui.routes import _video_response
from tests.media_fixtures import make_clip
from tests.test_ui_pages import SIZE, all_jobs, chunks, drop_zones, new_app, open_page, shown, stage, wait_terminal


def _stage_depth(at, path):
    token = at.session_state["depth_upload_token"]
    return staging_area().receive(token, path.name, chunks(path), declared_size=path.stat().st_size)


def _job_id(at) -> str:
    value = at.query_params["job"]
    return value[0] if isinstance(value, list) else value


def _flat_depth(path, frames: int, size=SIZE, fps: int = 12):
    writer = DepthWriter(path, size[0], size[1], Fraction(1, fps), Fraction(fps))
    for index in range(frames):
        writer.write(np.full((size[1], size[0]), 40000, np.uint16), index)
    writer.close()
    return path


def test_a_depth_job_makes_the_depth_video_and_its_page_offers_the_mkv(home, backend, tmp_path):
    from stereo_spot.ui.routes import video_path

    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    stage(at, clip)
    at.run()
    at.toggle(key="depth_output").set_value(True)
    at.run()
    assert any("holiday-depth.mkv" in shown(c) for c in at.caption)
    next(b for b in at.button if b.label == "Make the depth video").click()
    at.run()
    assert not at.exception, at.exception
    job_id = _job_id(at)
    finished = wait_terminal(backend, job_id)
    assert finished.status == JobStatus.COMPLETED and finished.settings.depth_output, finished.failure_reason
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))
    info = read_depth_video(final)
    assert (info.width, info.height) == SIZE and len(info.times) == 12
    page = open_page(new_app(), "pages/job.py", job=job_id)
    assert page.get("video") == [] and page.get("image") == []  # no player, no still: browsers cannot show it
    [download] = page.link_button
    assert shown(download) == "Download holiday-depth.mkv"
    assert download.proto.url.endswith(video_path(job_id, download=True))
    listing = open_page(new_app(), "pages/jobs.py")
    assert any("Depth video (16-bit, to edit)" in shown(m) for m in listing.markdown), \
        [shown(m) for m in listing.markdown]
    watch = open_page(new_app(), "pages/how_to_watch.py")
    assert not watch.get("download_button")  # no playlist of a file no player shows as a video
    response = _video_response(job_id, True, local_identity())  # what that link answers
    assert response.status_code == 200 and response.media_type == "video/x-matroska"
    assert 'filename="holiday-depth.mkv"' in response.headers["content-disposition"]


def test_a_conversion_renders_from_an_uploaded_depth_video(home, backend, tmp_path):
    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    depth = _flat_depth(tmp_path / "edited.mkv", 12)
    at = new_app()
    assert len(drop_zones(at)) == 1  # the depth video's drop zone only when asked for
    stage(at, clip)
    at.run()
    at.toggle(key="use_depth_video").set_value(True)
    at.run()
    assert len(drop_zones(at)) == 1  # the video is checked in: the one drop zone is the depth video's
    staged_depth = _stage_depth(at, depth)
    at.run()
    assert any("edited.mkv" in shown(m) for m in at.markdown)
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception
    job_id = _job_id(at)
    assert backend.jobs.get(job_id).settings.depth_video
    assert not staged_depth.path.exists()  # copied into the store, the staged file gone
    assert backend.objects.head(backend.input_bucket, keys.depth_video_key(job_id)).size == depth.stat().st_size
    finished = wait_terminal(backend, job_id)
    assert finished.status == JobStatus.COMPLETED, finished.failure_reason
    assert finished.depth_origin_seconds == 0.0


def test_a_depth_video_that_does_not_fit_creates_no_job(home, backend, tmp_path):
    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    stage(at, clip)
    at.run()
    at.toggle(key="use_depth_video").set_value(True)
    at.run()
    _stage_depth(at, _flat_depth(tmp_path / "short.mkv", 10))
    at.run()
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception
    assert any("short.mkv has 10 frames, the source has 12" in shown(e) for e in at.error), \
        [shown(e) for e in at.error]
    assert all_jobs(backend) == []


def test_the_preview_renders_from_the_uploaded_depth_video(home, backend, tmp_path):
    """The preview shows what the job will make: with a depth video uploaded it renders from that depth, so one
    that does not fit the video gives no preview (with the reason) and one that fits gives the frame. Catches the
    preview estimating the depth whatever was uploaded."""
    clip = make_clip(tmp_path / "holiday.mp4", seconds=1, fps=12, size=SIZE)
    at = new_app()
    stage(at, clip)
    at.run()
    assert at.get("image")  # the estimated depth's preview
    at.toggle(key="use_depth_video").set_value(True)
    at.run()
    _stage_depth(at, _flat_depth(tmp_path / "short.mkv", 10))
    at.run()
    assert not at.exception, at.exception
    assert not at.get("image")
    assert any("No preview: short.mkv has 10 frames, the source has 12" in shown(c) for c in at.caption), \
        [shown(c) for c in at.caption]
    next(b for b in at.button if b.label == "Choose another depth video").click()
    at.run()
    _stage_depth(at, _flat_depth(tmp_path / "fits.mkv", 12))
    at.run()
    assert not at.exception, at.exception
    assert at.get("image") and not any("No preview" in shown(c) for c in at.caption)
