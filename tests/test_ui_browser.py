"""The app in a real browser: Debian's headless Chromium driven through Playwright's Python API (no browser
download), against ``streamlit run ui/app.py`` on 127.0.0.1 with its own STEREO_SPOT_HOME.

Each page is screenshotted into ``screenshot_folder``: $STEREO_SPOT_SCREENSHOTS when set, else ``screenshots/`` in
pytest's base temporary folder (after a run, /tmp/pytest-of-$USER/pytest-current/screenshots/).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from stereo_spot import keys
from stereo_spot.adapters.local import local_backend
from stereo_spot.models import JobStatus
from stereo_spot.runner import stop_all_background
from tests.media_fixtures import make_clip, make_text

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
CONVERSION_LIMIT_MS = 300_000
UPLOAD_LIMIT = 1_500_000  # bytes: small, so the over-the-limit case needs no big file
SAMPLE_REPORT = {
    "disparity": {"crossed_percentiles": {"p1": -0.9, "p5": -0.6, "p50": -0.1, "p95": 0.0, "p99": 0.0},
                  "uncrossed_percentiles": {"p1": 0.0, "p5": 0.1, "p50": 0.6, "p95": 1.4, "p99": 1.8},
                  "histogram": {"edges": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0], "counts": [3, 9, 22, 30, 14, 4]}},
    "hole_ratio": 0.018, "flicker_index": 0.07, "border_violations": 0,
    "segments": [{"segment_index": 0, "convert_seconds": 2.1, "depth_seconds": 0.9}],
    "warnings": [],
}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    home = tmp_path / "home"
    port = _free_port()
    env = {**os.environ, "STEREO_SPOT_HOME": str(home), "STORAGE_ADAPTER": "local",
           "MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "STEREO_SPOT_WORKDIR": str(tmp_path / "work")}
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the app did not start:\n" + (tmp_path / "server.log").read_text()) from None
                time.sleep(0.3)
        yield url, home
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and any runner it started (same session)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        stop_all_background(home)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    yield from _serve(tmp_path)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox", "--disable-gpu",
                                                    "--disable-background-networking"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def screenshot_folder(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    folder = Path(os.environ.get("STEREO_SPOT_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    request.node.user_properties.append(("screenshots", str(folder)))  # in --junitxml reports
    print(f"screenshots: {folder}")  # shown with -s, and with the output of a failed test
    return folder


def _shot(page, name: str, folder: Path) -> Path:
    """A PNG of the whole page (not only the window), returned."""
    page.wait_for_timeout(500)  # let charts and images finish drawing
    # Streamlit scrolls inside its main area, not the document: grow the window to the content's height.
    height = page.evaluate("(() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                           " if (m) m.scrollTop = 0; return m ? m.scrollHeight : 900; })()")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(int(height), 900), 4000)})
    page.wait_for_timeout(300)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


def _settled(page) -> None:
    """Wait until the app's script has finished its run. A button clicked while a page is still rendering can
    be answered by a run that ends before the click is seen, so the flows below click on a settled page."""
    from playwright.sync_api import expect
    expect(page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')).to_be_attached(
        timeout=60_000)


def _delete_with_confirmation(page) -> None:
    from playwright.sync_api import expect
    _settled(page)
    page.get_by_role("button", name="Delete this job").click()
    expect(page.get_by_text("cannot be undone", exact=False)).to_be_visible()
    _settled(page)
    page.get_by_role("button", name="Yes, delete").click()
    expect(page.get_by_text("This job was deleted", exact=False)).to_be_visible()


def _pick(page, path: Path) -> None:
    page.locator(".ss-upload input[type=file]").set_input_files(str(path))


def _drop(page, path: Path) -> None:
    """Drag a file from the desktop onto the picker (a real DataTransfer holding a File)."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: 'video/mp4' }));
            return transfer;
        }""", [path.name, base64.b64encode(path.read_bytes()).decode()])
    page.locator(".ss-upload .ss-drop").dispatch_event("drop", {"dataTransfer": transfer})


@pytest.mark.slow  # over 10 s
def test_upload_convert_play_download_in_a_browser(server, browser, tmp_path, screenshot_folder):
    from playwright.sync_api import expect

    url, home = server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    expect.set_options(timeout=30_000)
    page.goto(url)
    expect(page.get_by_role("heading", name="New conversion")).to_be_visible()
    expect(page.locator(".ss-upload input[type=file]")).to_be_attached()
    _shot(page, "1-new-conversion", screenshot_folder)

    # bad input first: each gets a clear message and leaves no job
    _pick(page, make_text(tmp_path / "notes.mp4"))
    expect(page.get_by_text("notes.mp4 is not a video file FFmpeg can read")).to_be_visible()
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(UPLOAD_LIMIT + 100_000))
    _pick(page, big)
    expect(page.get_by_text("big.mp4 is 1.5 MB; the upload limit is 1.4 MB", exact=False).first).to_be_visible()
    _shot(page, "2-upload-refused", screenshot_folder)
    backend = local_backend(home)
    assert backend.jobs.list_in_progress() == []

    # the real thing: a 2 s 160x96 clip, dropped onto the picker this time
    clip = make_clip(tmp_path / "holiday.mp4", seconds=2, fps=24, size=(160, 96))
    _drop(page, clip)
    card = page.locator(".st-key-checked-file")
    expect(card).to_contain_text("holiday.mp4")
    expect(card).to_contain_text("160×96")
    expect(page.locator(".ss-upload")).to_have_count(0)  # the card takes the drop zone's place
    expect(page.get_by_text("holiday.mp4", exact=False)).to_have_count(1)  # said once
    expect(page.get_by_role("textbox", name="Title")).to_have_value("holiday")
    _shot(page, "3-upload-ready", screenshot_folder)
    page.get_by_role("button", name="Convert to 3D").click()
    page.wait_for_url("**/job?job=*")
    job_id = page.url.split("job=")[1].split("&")[0]
    keys.validate_job_id(job_id)
    expect(page.get_by_role("heading", name="holiday")).to_be_visible()
    _shot(page, "4-job-progress", screenshot_folder)

    # the page updates itself until the job is done
    download = page.locator("a", has_text="Download holiday-3d_LRF_Full_SBS.mp4")
    expect(download).to_be_visible(timeout=CONVERSION_LIMIT_MS)
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.COMPLETED, job.failure_reason
    final = home / "objects" / backend.output_bucket / keys.final_key(job_id)
    final_bytes = final.read_bytes()
    expect(page.get_by_role("img").first).to_be_visible()
    _shot(page, "5-job-completed", screenshot_folder)

    # the player and the download both serve the final video
    video_src = page.locator("video").first.get_attribute("src")
    assert video_src.endswith(f"/api/jobs/{job_id}/video")
    played = requests.get(video_src, timeout=30)
    assert played.status_code == 200 and played.content == final_bytes
    assert played.headers["content-type"] == "video/mp4"
    part = requests.get(video_src, headers={"Range": "bytes=100-199"}, timeout=30)  # seeking
    assert part.status_code == 206 and part.content == final_bytes[100:200]
    href = download.get_attribute("href")
    assert href.endswith(f"/api/jobs/{job_id}/video?download=1")
    with page.expect_download() as caught:
        download.click()
    saved = caught.value
    assert saved.suggested_filename == "holiday-3d_LRF_Full_SBS.mp4"
    assert Path(saved.path()).read_bytes() == final_bytes
    # the browser's own player loads it
    page.wait_for_function("document.querySelector('video') && document.querySelector('video').readyState >= 1",
                           timeout=30_000)
    duration = page.evaluate("document.querySelector('video').duration")
    assert abs(duration - 2.0) < 0.2

    # the comfort report as charts: the conversion's own report where it writes one, else a report of that shape
    report_key = keys.report_key(job_id)
    if not backend.objects.exists(backend.output_bucket, report_key):
        backend.objects.write_bytes(backend.output_bucket, report_key, json.dumps(SAMPLE_REPORT).encode())
    page.reload()
    page.get_by_role("tab", name="Comfort report").click()
    expect(page.get_by_text("Disparity distribution", exact=False)).to_be_visible()
    expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
    _shot(page, "5b-comfort-report", screenshot_folder)

    # the lists
    page.get_by_role("link", name="Jobs").first.click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.get_by_role("link", name="holiday")).to_be_visible()
    _shot(page, "6-jobs", screenshot_folder)

    # how to watch, and the playlist
    page.get_by_role("link", name="How to watch").first.click()
    expect(page.get_by_role("heading", name="How to watch")).to_be_visible()
    with page.expect_download() as caught:
        page.get_by_role("button", name="Download playlist (1 video, M3U)").click()
    playlist = Path(caught.value.path()).read_text()
    assert playlist.startswith("#EXTM3U") and f"{url}/api/jobs/{job_id}/video" in playlist
    _shot(page, "7-how-to-watch", screenshot_folder)

    # an upload token this app never issued is refused
    refused = requests.put(f"{url}/api/uploads/{'0' * 32}", data=b"x", timeout=10)
    assert refused.status_code == 403 and "reload the page" in refused.json()["error"]

    # delete, with confirmation
    page.goto(f"{url}/job?job={job_id}")
    _delete_with_confirmation(page)
    assert not final.exists()
    assert requests.get(video_src, timeout=10).status_code == 404
    # the rejected uploads left nothing behind: one job in all, now deleted
    assert [j.job_id for j in backend.jobs.list_by_status(JobStatus.DELETED).items] == [job_id]
    assert backend.jobs.list_in_progress() == [] and backend.jobs.list_by_status(JobStatus.FAILED).items == []


@pytest.fixture
def header_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """The app in header mode, as behind oauth2-proxy: the identity arrives in X-Forwarded-Email."""
    monkeypatch.setenv("UI_AUTH", "header")
    monkeypatch.setenv("UI_ADMINS", "")
    yield from _serve(tmp_path)


def _seed_finished_job(home: Path, owner: str, title: str) -> str:
    """A finished job of ``owner`` with a real little video, written straight to the store."""
    from stereo_spot import steps
    from stereo_spot.models import ConversionSettings, utcnow

    backend = local_backend(home)
    job = steps.create_job(backend, ConversionSettings(), title, owner=owner)
    clip = make_clip(home.parent / f"{title}.mp4", seconds=1, fps=12, size=(160, 96))
    backend.objects.upload_file(backend.output_bucket, keys.final_key(job.job_id), clip)
    backend.jobs.update(job.job_id, status=JobStatus.COMPLETED, completed_at=utcnow(), total_segments=1)
    return job.job_id


@pytest.mark.slow  # over 10 s
def test_two_users_never_see_each_others_jobs(header_server, browser, tmp_path):
    from playwright.sync_api import expect

    url, home = header_server
    alice_job = _seed_finished_job(home, "alice@example.com", "alices-trip")
    bob_job = _seed_finished_job(home, "bob@example.com", "bobs-party")
    guessed = keys.new_job_id()
    expect.set_options(timeout=30_000)

    def as_user(email: str):
        context = browser.new_context(extra_http_headers={"X-Forwarded-Email": email},
                                      viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        return context, context.new_page()

    def video(job_id: str, email: str | None, download: bool = False) -> requests.Response:
        headers = {"X-Forwarded-Email": email} if email else {}
        return requests.get(f"{url}/api/jobs/{job_id}/video" + ("?download=1" if download else ""),
                            headers=headers, timeout=30)

    alice_context, alice = as_user("alice@example.com")
    bob_context, bob = as_user("bob@example.com")
    try:
        for page, own, own_title, other, other_title in (
                (alice, alice_job, "alices-trip", bob_job, "bobs-party"),
                (bob, bob_job, "bobs-party", alice_job, "alices-trip")):
            page.goto(f"{url}/jobs")
            expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
            expect(page.get_by_role("link", name=own_title)).to_be_visible()
            expect(page.get_by_role("link", name=other_title)).to_have_count(0)
            # the other's job, by its real id and by a guessed one: the same "no such job"
            for job_id in (other, guessed):
                page.goto(f"{url}/job?job={job_id}")
                expect(page.get_by_text(f"There is no job {job_id}.")).to_be_visible()
                expect(page.get_by_role("button", name="Delete this job")).to_have_count(0)
                expect(page.locator("video")).to_have_count(0)
            # their own plays, and the page's player points at the route
            page.goto(f"{url}/job?job={own}")
            expect(page.get_by_role("heading", name=own_title)).to_be_visible()
            expect(page.locator("video")).to_have_count(1)
            # the playlist holds only their own video
            page.goto(f"{url}/how_to_watch")
            with page.expect_download() as caught:
                page.get_by_role("button", name="Download playlist (1 video, M3U)").click()
            playlist = Path(caught.value.path()).read_text()
            assert own in playlist and other not in playlist

        # the routes answer the same for someone else's job as for one that does not exist
        for owner, other in (("alice@example.com", bob_job), ("bob@example.com", alice_job)):
            theirs, missing = video(other, owner), video(guessed, owner)
            assert theirs.status_code == missing.status_code == 404
            assert theirs.json()["error"].replace(other, "ID") == missing.json()["error"].replace(guessed, "ID")
            assert video(other, owner, download=True).status_code == 404
        assert video(alice_job, "alice@example.com").status_code == 200
        assert video(alice_job, None).status_code == 401  # no identity: nothing
        anonymous = browser.new_page()
        anonymous.goto(url)
        expect(anonymous.get_by_role("heading", name="Sign in")).to_be_visible()
        anonymous.close()

        # Bob deletes his own job; Alice's stays
        bob.goto(f"{url}/job?job={bob_job}")
        _delete_with_confirmation(bob)
        backend = local_backend(home)
        assert backend.jobs.get(bob_job).status == JobStatus.DELETED
        assert backend.jobs.get(alice_job).status == JobStatus.COMPLETED
        assert video(alice_job, "alice@example.com").status_code == 200

        # an upload goes into the uploader's slot only: Alice's token does not take Bob's file
        alice.goto(url)
        expect(alice.locator(".ss-upload input[type=file]")).to_be_attached()
        expect(alice.locator(".ss-upload[data-token]")).to_have_count(1)
        token = alice.locator(".ss-upload").get_attribute("data-token")
        refused = requests.put(f"{url}/api/uploads/{token}", data=b"x", timeout=10,
                               headers={"X-Forwarded-Email": "bob@example.com"})
        assert refused.status_code == 403
    finally:
        alice_context.close()
        bob_context.close()
