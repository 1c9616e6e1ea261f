"""Screenshots of the New conversion and Job pages in headless Chromium (driven as in test_ui_browser.py), kept as
test artefacts in ``screenshot_folder`` ($STEREO_SPOT_SCREENSHOTS, else
/tmp/pytest-of-$USER/pytest-current/screenshots/ after a run):

    app-new-conversion.png          the empty drop zone
    app-new-conversion-checked.png  a dropped file, checked: its card, the settings and the preview
    app-job.png                     a finished job: title, speed, player, download, still
    app-jobs.png                    the Jobs list, its speed in "× real time"
    app-job-delivered.png           a job converted by ``stereo-spot convert``: where its result was written

Each picture goes with assertions on what it must show, so a page that regresses fails here, not only in a
look at the PNG. What they catch (planted and seen red): the browser's own file control drawn again (the input's
hiding rule dropped from the component's CSS); the file named twice after its check (the old green box back);
the job page titled with its id (``set_page_config`` removed); speed in s/MB; the player on a delivered job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stereo_spot import steps
from stereo_spot.adapters.local import local_backend
from stereo_spot.cli.main import app as cli
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample
from tests.media_fixtures import make_clip
from tests.test_ui_browser import CHROMIUM, _drop, _settled, _shot, browser, screenshot_folder, server  # noqa: F401

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium)"),
]

FILM = "Lisbon by tram"


def _converted_job(home: Path, tmp_path: Path) -> str:
    """A job the app would have made, converted for real in this process (2 s at 12 fps: seconds of work)."""
    backend = local_backend(home)
    clip = make_clip(tmp_path / "lisbon.mp4", seconds=2, fps=12, size=(160, 96))
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), FILM, owner="local")
    steps.store_source(backend, job.job_id, clip)
    done = run_job(backend, job.job_id, workers=1)
    assert done.status == JobStatus.COMPLETED, done.failure_reason
    return job.job_id


def _cli_job(home: Path, tmp_path: Path) -> tuple[str, Path]:
    clip = write_sample(tmp_path / "harbour.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    output = tmp_path / "films" / "harbour-3d_LRF_Full_SBS.mp4"
    output.parent.mkdir()
    done = CliRunner().invoke(cli, ["convert", str(clip), "-o", str(output), "--segment-seconds", "0.5",
                                    "--workers", "1"], env={"COLUMNS": "500"})
    assert done.exit_code == 0, done.output
    job = next(j for j in local_backend(home).jobs.list_completed().items if j.delivered_to)
    return job.job_id, Path(job.delivered_to)


def test_new_conversion_and_job_pages_screenshots(server, browser, tmp_path, screenshot_folder,  # noqa: F811
                                                  monkeypatch):
    from playwright.sync_api import expect

    url, home = server
    # this process writes jobs into the app's store: the command line reads where it is from the environment
    monkeypatch.setenv("STEREO_SPOT_HOME", str(home))
    monkeypatch.setenv("STORAGE_ADAPTER", "local")
    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    expect.set_options(timeout=30_000)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)

    # New conversion: a drop zone, not the browser's "Choose File / No file chosen"
    page.goto(url)
    expect(page.get_by_role("heading", name="New conversion")).to_be_visible()
    zone = page.locator(".ss-upload .ss-drop")
    expect(zone).to_contain_text("Drop a video here")
    expect(zone).to_contain_text("up to 1.4 MB")
    look = zone.evaluate("""(drop) => { const s = getComputedStyle(drop), r = drop.getBoundingClientRect();
        const i = drop.querySelector('input[type=file]').getBoundingClientRect();
        return { border: s.borderTopStyle, height: r.height, width: r.width, input: [i.width, i.height] }; }""")
    assert look["border"] == "dashed" and look["height"] >= 100 and look["width"] >= 600, look
    assert max(look["input"]) <= 1, look  # the native control is in the page (keyboard, dialog), not drawn
    _settled(page)
    _shot(page, "app-new-conversion", screenshot_folder)

    # dropped and checked: one card with name, size and duration, where the zone was
    _drop(page, make_clip(tmp_path / "holiday.mp4", seconds=2, fps=24, size=(160, 96)))
    card = page.locator(".st-key-checked-file")
    expect(card).to_contain_text("holiday.mp4")
    for detail in ("KB", "2.0 s", "160×96 at 24 fps"):
        expect(card).to_contain_text(detail)
    expect(page.locator(".ss-upload")).to_have_count(0)
    expect(page.get_by_text("holiday.mp4", exact=False)).to_have_count(1)
    expect(page.locator("[data-testid='stImage']").first).to_be_visible()  # the preview frame
    _settled(page)
    _shot(page, "app-new-conversion-checked", screenshot_folder)

    # a finished job: the film's name as the heading and the browser title; speed against real time
    job_id = _converted_job(home, tmp_path)
    page.goto(f"{url}/job?job={job_id}")
    expect(page.get_by_role("heading", name=FILM)).to_be_visible()
    expect(page).to_have_title(f"{FILM} · stereo-spot")
    expect(page.get_by_text("× real time", exact=False).first).to_be_visible()
    expect(page.locator("video")).to_have_count(1)
    expect(page.locator("a", has_text="Download Lisbon-by-tram-3d_LRF_Full_SBS.mp4")).to_be_visible()
    expect(page.get_by_role("img").first).to_be_visible()
    _settled(page)
    _shot(page, "app-job", screenshot_folder)

    page.goto(f"{url}/jobs")
    expect(page.get_by_role("link", name=FILM)).to_be_visible()
    expect(page.get_by_text("× real time", exact=False).first).to_be_visible()
    expect(page.get_by_text("s/MB", exact=False)).to_have_count(0)
    _settled(page)
    _shot(page, "app-jobs", screenshot_folder)

    # converted on the command line: where the result went, no player that would answer 404
    cli_job, written = _cli_job(home, tmp_path)
    page.goto(f"{url}/job?job={cli_job}")
    expect(page.get_by_text(f"Converted on the command line: written to {written}")).to_be_visible()
    expect(page.locator("video")).to_have_count(0)
    _settled(page)
    _shot(page, "app-job-delivered", screenshot_folder)
    for name in ("app-new-conversion", "app-new-conversion-checked", "app-job", "app-jobs", "app-job-delivered"):
        assert (screenshot_folder / f"{name}.png").stat().st_size > 10_000, name
