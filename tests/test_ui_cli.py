"""``stereo-spot ui``: refuses to serve without sign-in beyond loopback, and becomes the server itself so a
SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from typer.testing import CliRunner

from stereo_spot.cli.main import app


def test_no_sign_in_is_refused_on_a_public_address(home, monkeypatch):
    monkeypatch.setenv("UI_AUTH", "none")
    result = CliRunner().invoke(app, ["ui", "--address", "0.0.0.0"])
    assert result.exit_code == 1
    assert "UI_AUTH=none" in result.output and "--no-auth" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_reaches_the_server(home, tmp_path):
    port = _free_port()
    env = {**os.environ, "STEREO_SPOT_HOME": str(home)}
    process = subprocess.Popen([sys.executable, "-m", "stereo_spot.cli.main", "ui", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the app did not start"
                time.sleep(0.3)
        # the process we started is the server itself (no child left to orphan)
        assert b"streamlit" in open(f"/proc/{process.pid}/cmdline", "rb").read()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        with socket.socket() as probe:  # the port is free again: nothing kept serving
            # SO_REUSEADDR: connections the server closed may linger in TIME_WAIT; only a listener would block
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_cluster_app_is_only_reachable_through_its_sign_in_proxy():
    from pathlib import Path

    import yaml

    docs = list(yaml.safe_load_all((Path(__file__).resolve().parent.parent / "manifests" / "base" / "ui.yaml")
                                   .read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    app_container, proxy = deployment["spec"]["template"]["spec"]["containers"]
    args = app_container["args"]
    assert args[args.index("--address") + 1] == "127.0.0.1" and "--no-auth" not in args
    assert not app_container.get("ports")  # nothing of the app itself is exposed
    env = {e["name"]: e.get("value") for e in app_container["env"]}
    assert env["UI_AUTH"] == "header" and env["UI_AUTH_HEADER"] == "X-Forwarded-Email"
    assert "--upstream=http://127.0.0.1:8501" in proxy["args"] and "--provider=oidc" in proxy["args"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == proxy["ports"][0]["name"]
