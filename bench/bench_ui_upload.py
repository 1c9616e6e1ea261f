"""How much memory the app's server needs to receive a large upload, measured in one run.

Starts ``streamlit run ui/app.py`` on 127.0.0.1, uploads a file of SIZE_MB through the page's picker in headless
Chromium (Debian's /usr/bin/chromium), and prints the server's peak resident memory growth as a fraction of the
file size: well under 1 means the file was streamed to disk, ~1 or more means it was held in memory.

    python bench/bench_ui_upload.py [SIZE_MB]     (default 256)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        tmp_path = Path(tmp)
        upload = tmp_path / "big.mp4"
        with open(upload, "wb") as out:  # content does not matter: the size check and staging come first
            block = os.urandom(1024 * 1024)
            for _ in range(size_mb):
                out.write(block)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "STEREO_SPOT_HOME": str(tmp_path / "home"), "STORAGE_ADAPTER": "local"}
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.address",
             "127.0.0.1", "--server.port", str(port), "--server.headless", "true"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.3)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                    "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                page = browser.new_page()
                page.goto(url)
                picker = page.locator(".ss-upload input[type=file]")
                expect(picker).to_be_attached(timeout=60_000)
                page.wait_for_timeout(1000)
                before = peak_rss_bytes(server.pid)
                started = time.monotonic()
                picker.set_input_files(str(upload))
                # a random file is no video: the page says so once the whole file has arrived and been probed
                expect(page.get_by_text("big.mp4 is not a video file", exact=False)).to_be_visible(
                    timeout=600_000)
                seconds = time.monotonic() - started
                after = peak_rss_bytes(server.pid)
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    size = size_mb * 1024 * 1024
    print(f"upload of {size_mb} MB through the page: {seconds:.1f} s ({size_mb / seconds:.0f} MB/s)")
    print(f"server peak RSS before {before / 2**20:.0f} MB, after {after / 2**20:.0f} MB")
    print(f"peak RSS growth / file size = {(after - before) / size:.3f}")


if __name__ == "__main__":
    main()
