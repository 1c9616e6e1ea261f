"""The app and the command line share the local store: a job converted by ``stereo-spot convert`` has its result
moved out of the store to the user's output (the job records ``delivered_to``). The app lists that job; its page
must say where the result was written instead of offering a player and a download that answer 404, and the video
route must answer it with a clear 404 rather than serve a file outside the store (docs/app.md says why).

What each test catches (planted and seen red): the job page drawing the player for such a job (the check in
``job.py`` dropped); the route serving or answering with the generic "missing from storage" (the check in
``routes._video_response`` dropped); the playlist listing a link that answers 404 (the filter in
``how_to_watch.py`` dropped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.models import Job
from stereo_spot.sample import write_sample
from tests.test_ui_auth import call
from tests.test_ui_pages import new_app, open_page, shown


@pytest.fixture
def delivered_job(home, backend, tmp_path) -> Job:
    """A job converted by the real command line, its result moved to the user's folder."""
    clip = write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    output = tmp_path / "out" / "clip-3d_LRF_Full_SBS.mp4"
    output.parent.mkdir()
    done = CliRunner().invoke(app, ["convert", str(clip), "-o", str(output), "--segment-seconds", "0.5",
                                    "--workers", "1"], env={"COLUMNS": "500"})
    assert done.exit_code == 0, done.output
    job = backend.jobs.list_completed().items[0]
    assert job.delivered_to and Path(job.delivered_to).is_file()
    return job


def test_the_job_page_says_where_the_command_line_wrote_the_result(home, delivered_job):
    at = open_page(new_app(), "pages/job.py", job=delivered_job.job_id)
    assert at.get("video") == [] and not at.link_button  # no player, no download that would answer 404
    said = [shown(i) for i in at.info]
    assert said == [f"Converted on the command line: written to {delivered_job.delivered_to}"], said
    assert "Delete this job" in [b.label for b in at.button]


def test_the_video_route_answers_a_delivered_job_with_a_clear_404_and_leaves_the_file(home, delivered_job):
    path = Path(delivered_job.delivered_to)
    before = path.read_bytes()
    for query in ("", "download=1"):
        status, headers, body = call("GET", f"/api/jobs/{delivered_job.job_id}/video", query=query)
        assert status == 404 and headers["content-type"] == "application/json"
        message = json.loads(body)["error"]
        assert message == (f"job {delivered_job.job_id} was converted on the command line and its result written "
                           f"to {path}; the app serves only results in its own store"), message
    assert path.read_bytes() == before


def test_the_playlist_leaves_out_results_the_app_does_not_serve(home, delivered_job):
    at = open_page(new_app(), "pages/how_to_watch.py")
    assert not [b for b in at.get("download_button")]
    said = [shown(c) for c in at.caption]
    assert any("1 finished video was written outside the app" in c for c in said), said
    assert not any("No finished videos yet" in c for c in said), said  # there is one; it is elsewhere
