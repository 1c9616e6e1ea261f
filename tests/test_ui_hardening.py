"""The app against a determined user: what was checked is what becomes the job, limits hold on what is really in
the file, staging room is shared fairly, and sign-in trusts only what it is told to trust."""

from __future__ import annotations

import pytest

from stereo_spot import keys
from stereo_spot.ui.uploads import StagingArea
from tests.media_fixtures import make_clip
from tests.test_ui_pages import all_jobs, checked_file, new_app, shown, stage


def _convert(at):
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception


def test_a_second_upload_to_a_checked_token_is_refused_and_the_checked_file_is_the_job(home, backend, tmp_path,
                                                                                       monkeypatch):
    """Catches a token that takes a second upload (the checked file replaced after its check passed)."""
    monkeypatch.setenv("MAX_FRAME_PIXELS", "100000")
    small = make_clip(tmp_path / "small.mp4", seconds=0.5, fps=12, size=(320, 240), audio=False)
    large = make_clip(tmp_path / "large.mp4", seconds=0.5, fps=12, size=(640, 480), audio=False)
    at = new_app()
    assert stage(at, small).ok
    at.run()
    assert "320×240" in checked_file(at)
    swapped = stage(at, large)
    assert not swapped.ok and "already holds a file" in swapped.error
    _convert(at)
    jobs = all_jobs(backend)
    assert len(jobs) == 1
    stored = backend.objects.head(backend.input_bucket, keys.input_key(jobs[0].job_id))
    assert stored.size == small.stat().st_size


def test_a_file_changed_on_disk_after_its_check_is_checked_again_at_convert(home, backend, tmp_path, monkeypatch):
    """Catches Convert trusting the check remembered from the upload instead of the file it stores."""
    monkeypatch.setenv("MAX_FRAME_PIXELS", "100000")
    small = make_clip(tmp_path / "small.mp4", seconds=0.5, fps=12, size=(320, 240), audio=False)
    large = make_clip(tmp_path / "large.mp4", seconds=0.5, fps=12, size=(640, 480), audio=False)
    at = new_app()
    staged = stage(at, small)
    at.run()
    staged.path.write_bytes(large.read_bytes())
    _convert(at)
    assert any("640×480" in shown(e) and "MAX_FRAME_PIXELS" in shown(e) for e in at.error)
    assert all_jobs(backend) == []


def test_the_page_refuses_a_file_that_does_not_declare_its_60_s(home, backend, tmp_path, monkeypatch):
    """Matroska written live declares no duration: it probed as 0.0 s and passed MAX_DURATION_SECONDS=10 on the
    page. Catches the duration not being measured from the packets."""
    from tests.media_fixtures import make_live_matroska

    monkeypatch.setenv("MAX_DURATION_SECONDS", "10")
    at = new_app()
    stage(at, make_live_matroska(tmp_path / "live.mkv", seconds=60))
    at.run()
    assert not at.exception, at.exception
    assert any("live.mkv would convert 60 s; the limit is 10 s" in shown(e) for e in at.error)
    assert next(b for b in at.button if b.label == "Convert to 3D").disabled
    assert all_jobs(backend) == []


# --- staging room ---------------------------------------------------------------------------------------

MB = 1_000_000


def _concurrent_uploads(area, uploads: list[tuple[str, int]], declare: bool):
    """Start every upload (owner, size) at once: each sends its first 100 kB, all wait for one another, then
    each sends the rest. An upload refused before its first byte still joins the wait. Returns the StagedUpload
    of each, in order."""
    import threading

    started = threading.Barrier(len(uploads), timeout=60)

    def body(size: int, waited: list[bool]):
        block = b"x" * 100_000
        for sent in range(0, size, len(block)):
            yield block[: size - sent]
            if sent == 0:
                waited.append(True)
                started.wait()

    results: list = [None] * len(uploads)

    def send(index: int, owner: str, size: int) -> None:
        waited: list[bool] = []
        results[index] = area.receive(area.new_token(owner), f"{owner}-{index}.mp4", body(size, waited),
                                      declared_size=size if declare else None)
        if not waited:
            started.wait()

    threads = [threading.Thread(target=send, args=(i, owner, size)) for i, (owner, size) in enumerate(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
def test_one_users_concurrent_uploads_cannot_refuse_anothers(tmp_path, declare):
    """Three concurrent uploads from one user against a 3 MB staging cap: before, each counted the others once
    when it started, all three passed (5.6 MB staged) and the next user was refused. Catches a count taken once
    per upload instead of per chunk, and a missing per-user cap."""
    area = StagingArea(tmp_path / "uploads", max_bytes=10 * MB, max_total_bytes=3 * MB, max_user_bytes=3 * MB // 2)
    alice = _concurrent_uploads(area, [("alice", 1_870_000)] * 3, declare)
    assert not any(r.ok for r in alice)  # each alone is over alice's 1.5 MB
    assert all("MAX_STAGING_BYTES_PER_USER" in r.error for r in alice)
    assert area.staged_bytes() == 0
    alice = _concurrent_uploads(area, [("alice", 700_000)] * 3, declare)
    done = [r for r in alice if r.ok]
    # Declared sizes are reserved up front: the first two fit. Undeclared ones are reserved chunk by chunk, so
    # which ones finish depends on how they interleave: two, one, or none when all three reach the cap together
    # (each holding 500 kB); never all three, never past the cap.
    assert len(done) == 2 if declare else len(done) <= 2
    assert all("MAX_STAGING_BYTES_PER_USER" in r.error for r in alice if not r.ok)
    assert area.staged_bytes("alice") == 700_000 * len(done) == area.staged_bytes()
    bob = area.receive(area.new_token("bob"), "bob.mp4", iter([b"y" * 1_400_000]), declared_size=1_400_000)
    assert bob.ok, bob.error


def test_two_users_at_the_staging_cap_are_refused_only_for_their_own_bytes(tmp_path):
    """Alice and Bob upload at once, each up to the per-user cap, which together fill the staging cap exactly:
    both succeed; each one's next upload is refused naming the per-user cap, never the shared one."""
    area = StagingArea(tmp_path / "uploads", max_bytes=10 * MB, max_total_bytes=2 * MB, max_user_bytes=MB)
    both = _concurrent_uploads(area, [("alice", MB), ("bob", MB)], declare=False)
    assert all(r.ok for r in both)
    for owner in ("alice", "bob"):
        more = area.receive(area.new_token(owner), "more.mp4", iter([b"z" * 10]))
        assert not more.ok and "MAX_STAGING_BYTES_PER_USER" in more.error
    area.discard(both[0].token)
    assert area.staged_bytes() == MB and area.staged_bytes("alice") == 0
    assert area.receive(area.new_token("alice"), "again.mp4", iter([b"a" * MB])).ok


def test_an_idle_upload_expires_in_minutes_and_a_touched_one_stays(tmp_path):
    """Catches the 24 h expiry, and the sweep removing an upload whose page still uses it."""
    import os
    import time

    area = StagingArea(tmp_path / "uploads", max_bytes=MB, idle_seconds=15 * 60)
    idle = area.receive(area.new_token("alice"), "idle.mp4", iter([b"x" * 1000]))
    used = area.receive(area.new_token("alice"), "used.mp4", iter([b"x" * 1000]))
    twenty_minutes_ago = time.time() - 20 * 60
    for upload in (idle, used):
        os.utime(upload.path.parent, (twenty_minutes_ago, twenty_minutes_ago))
    area.touch(used.token)
    assert area.sweep() == 1
    assert area.get(idle.token) is None and area.get(used.token).ok
    assert area.staged_bytes("alice") == 1000


# --- header sign-in -------------------------------------------------------------------------------------


def _serve(monkeypatch, *args: str):
    """``stereo-spot ui`` up to the moment it would become the server (os.execv is replaced by an exit)."""
    from typer.testing import CliRunner

    from stereo_spot.cli import main as cli

    def would_serve(executable, command):
        raise SystemExit(42)

    monkeypatch.setattr(cli.os, "execv", would_serve)
    return CliRunner().invoke(cli.app, ["ui", *args])


def test_header_mode_refuses_a_public_address_unless_told_how_to_recognise_the_proxy(home, monkeypatch):
    """``UI_AUTH=header`` on 0.0.0.0 let anyone who reached the port send ``X-Forwarded-Email: admin@…``. Catches
    the bind check skipped for header mode."""
    monkeypatch.setenv("UI_AUTH", "header")
    refused = _serve(monkeypatch, "--address", "0.0.0.0")
    assert refused.exit_code == 1
    assert "UI_AUTH_PROXY_SECRET" in refused.output and "UI_AUTH_TRUSTED_PROXIES" in refused.output
    assert "Traceback" not in refused.output
    assert _serve(monkeypatch, "--address", "127.0.0.1").exit_code == 42
    monkeypatch.setenv("UI_AUTH_PROXY_SECRET", "s3cret")
    assert _serve(monkeypatch, "--address", "0.0.0.0").exit_code == 42
    monkeypatch.delenv("UI_AUTH_PROXY_SECRET")
    monkeypatch.setenv("UI_AUTH_TRUSTED_PROXIES", "10.0.3.7")
    assert _serve(monkeypatch, "--address", "0.0.0.0").exit_code == 42


def test_the_identity_header_is_believed_only_from_the_proxy(home, monkeypatch):
    """Catches the header believed without the proxy's secret, or from an address that is not the proxy's."""
    from tests.test_ui_auth import call

    monkeypatch.setenv("UI_AUTH", "header")
    token_path = "/api/uploads/" + "0" * 32
    admin = {"X-Forwarded-Email": "admin@example.com"}
    monkeypatch.setenv("UI_AUTH_PROXY_SECRET", "s3cret")
    assert call("PUT", token_path, admin, b"x", client="203.0.113.9")[0] == 401
    assert call("PUT", token_path, {**admin, "X-Auth-Proxy-Secret": "wrong"}, b"x")[0] == 401
    assert call("PUT", token_path, {**admin, "X-Auth-Proxy-Secret": "s3cret"}, b"x")[0] == 403  # signed in
    monkeypatch.delenv("UI_AUTH_PROXY_SECRET")
    monkeypatch.setenv("UI_AUTH_TRUSTED_PROXIES", "10.0.3.7, 10.1.0.0/16")
    assert call("PUT", token_path, admin, b"x", client="203.0.113.9")[0] == 401
    assert call("PUT", token_path, admin, b"x", client="10.1.2.3")[0] == 403
    assert call("PUT", token_path, admin, b"x", client="10.0.3.7")[0] == 403


def test_the_image_listens_on_loopback_unless_told_otherwise():
    """Catches the image's command binding 0.0.0.0 (with UI_AUTH=header: anyone could name themselves)."""
    import json
    from pathlib import Path

    dockerfile = (Path(__file__).resolve().parent.parent / "images" / "ui" / "Dockerfile").read_text()
    command = json.loads(next(line for line in dockerfile.splitlines() if line.startswith("CMD "))[4:])
    assert command[:2] == ["stereo-spot", "ui"]
    address = command[command.index("--address") + 1] if "--address" in command else "127.0.0.1"
    assert address == "127.0.0.1"


# --- the sign-in proxy ----------------------------------------------------------------------------------


def test_the_sign_in_proxy_lets_in_only_the_configured_domains():
    """``--email-domain=*`` let every account of the identity provider in. Catches a wildcard (flag or
    variable), an email-domain list with a default, and unverified e-mail addresses allowed. oauth2-proxy refuses
    to start without an email domain ("missing setting for email validation"), so the Secret key is required."""
    from tests.test_manifests_validate import OVERLAYS, _find, render

    for overlay in OVERLAYS:
        deployment = _find(render(overlay), "Deployment", "stereo-spot-ui")
        proxy = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "oauth2-proxy")
        args = proxy.get("args", [])
        assert not any(a.startswith("--email-domain") for a in args), args
        assert "--insecure-oidc-allow-unverified-email=true" not in args
        env = {e["name"]: e for e in proxy.get("env", [])}
        domains = env["OAUTH2_PROXY_EMAIL_DOMAINS"]
        assert "value" not in domains
        key = domains["valueFrom"]["secretKeyRef"]
        assert key["key"] == "email-domains" and not key.get("optional", False)
        groups = env["OAUTH2_PROXY_ALLOWED_GROUPS"]["valueFrom"]["secretKeyRef"]
        assert groups["key"] == "allowed-groups"


def test_oidc_sign_in_uses_only_a_verified_e_mail_address(monkeypatch):
    """Catches ``email_verified`` ignored: an account claiming an admin's unverified address became that admin."""
    from stereo_spot.config import Settings
    from stereo_spot.ui import auth

    monkeypatch.setenv("UI_ADMINS", "boss@example.com")
    claims = {"email": "boss@example.com", "sub": "user-123"}
    for unverified in (False, "false", "FALSE", None, 0):
        assert auth.user_from_claims({**claims, "email_verified": unverified}) == "user-123"
    for verified in (True, "true"):
        assert auth.user_from_claims({**claims, "email_verified": verified}) == "boss@example.com"
    assert auth.user_from_claims(claims) == "boss@example.com"  # a provider that does not send the claim
    who = auth.make_identity(auth.user_from_claims({**claims, "email_verified": False}), Settings())
    assert who == auth.Identity("user-123", admin=False)


# --- model weights --------------------------------------------------------------------------------------


def test_non_admins_choose_weights_only_from_the_allowed_prefixes(home, backend, tmp_path, monkeypatch):
    """Any s3:// prefix was accepted from anyone, including the app's own output bucket (the preview then
    downloads another user's results into the pod). Catches the prefix check dropped, a prefix matched as a
    string rather than a folder (models-evil under models), and ``..`` segments."""
    from stereo_spot.config import Settings
    from stereo_spot.errors import UserError
    from stereo_spot.ui import auth, services
    from stereo_spot.ui.uploads import UploadError

    config = Settings(ui_weights_prefixes="s3://models/depth/, s3://models/inpaint")
    alice = auth.Identity("alice@example.com")
    for value in ("s3://stereo-spot-output/jobs/", "s3://models/depth-evil/", "s3://models/depth/../../out/",
                  "s3://models//depth/", "/srv/weights"):
        with pytest.raises(UploadError, match="UI_WEIGHTS_PREFIXES"):
            services.checked_settings(alice, config, depth_weights=value)
    for value in ("s3://models/depth/v2", "s3://models/depth", "s3://models/inpaint/"):
        assert services.weights_allowed(value, config.weights_prefixes)
    with pytest.raises(UploadError, match="none are set"):
        services.checked_settings(alice, Settings(), depth_weights="s3://models/depth/v2")
    # past the prefix check, the command line's own validation answers (heuristic takes no weights)
    with pytest.raises(UserError, match="takes no weights"):
        services.checked_settings(alice, config, depth_weights="s3://models/depth/v2")
    admin = auth.Identity("boss@example.com", admin=True)
    with pytest.raises(UserError, match="takes no weights"):
        services.checked_settings(admin, Settings(), depth_weights="s3://anything/at/all")

    # the page: a non-admin's output-bucket prefix is refused at Convert with that reason, and no job is made
    monkeypatch.setenv("UI_AUTH", "header")
    at = _app_as(monkeypatch, "alice@example.com")
    stage(at, make_clip(tmp_path / "clip.mp4", seconds=0.5, fps=12, size=(160, 96), audio=False))
    at.run()
    at.text_input(key="depth_weights").set_value("s3://stereo-spot-output/jobs/")
    at.run()
    _convert(at)
    assert any("UI_WEIGHTS_PREFIXES" in shown(e) for e in at.error)
    assert all_jobs(backend) == []


def _app_as(monkeypatch, user: str):
    from tests.test_ui_auth import app_as

    return app_as(monkeypatch, user)


def test_users_see_no_tracebacks():
    """Catches ``client.showErrorDetails`` left at Streamlit's default ("full": the traceback in the browser).
    The value is one Streamlit knows (streamlit/config.py, ShowErrorDetailsConfigOptions)."""
    import tomllib
    from pathlib import Path

    from streamlit.config import ShowErrorDetailsConfigOptions

    config = tomllib.loads((Path(__file__).resolve().parent.parent / "ui" / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == ShowErrorDetailsConfigOptions.NONE.value == "none"


# --- the per-user job cap -------------------------------------------------------------------------------

from tests.moto_server import aws_settings, moto_endpoint  # noqa: E402, F401


def _tabs_convert_at_once(backend, tabs: int, limit: int, owner: str = "alice@example.com"):
    """``tabs`` pages of one user pressing Convert together (threads released at once by a barrier)."""
    import threading

    from stereo_spot.config import Settings
    from stereo_spot.models import ConversionSettings
    from stereo_spot.ui import auth, services
    from stereo_spot.ui.uploads import UploadError

    config = Settings(ui_max_jobs_per_user=limit)
    go = threading.Barrier(tabs, timeout=60)
    made, refused, failed = [], [], []

    def tab(index: int) -> None:
        go.wait()
        try:
            made.append(services.create_user_job(backend, ConversionSettings(), f"tab {index}",
                                                 auth.Identity(owner), config))
        except UploadError as exc:
            refused.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            failed.append(exc)

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(tabs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed
    return made, refused


def _check_the_cap_holds(backend):
    from stereo_spot.models import JobStatus

    made, refused = _tabs_convert_at_once(backend, tabs=6, limit=2)
    assert len(made) == 2 and len(refused) == 4
    assert all("UI_MAX_JOBS_PER_USER=2" in message for message in refused)
    assert len(backend.jobs.list_in_progress(owner="alice@example.com")) == 2
    # a finished job frees its place; another user was never counted
    backend.jobs.update(made[0].job_id, status=JobStatus.COMPLETED, completed_at=made[0].created_at)
    again, refused = _tabs_convert_at_once(backend, tabs=3, limit=2)
    assert len(again) == 1 and len(refused) == 2
    bob, _ = _tabs_convert_at_once(backend, tabs=2, limit=2, owner="bob@example.com")
    assert len(bob) == 2


def test_the_job_cap_holds_when_several_tabs_convert_at_once_sqlite(home, backend):
    """The page counted the user's jobs and then created one: tabs pressing Convert together all passed the
    count. Catches the count and the insert not being one SQLite transaction (or no count at all)."""
    _check_the_cap_holds(backend)


def test_the_job_cap_holds_when_several_tabs_convert_at_once_dynamodb(aws_settings):  # noqa: F811
    """The same on DynamoDB (the moto server over HTTP): a slot item per allowed job, taken in one transaction
    with the job's put. Catches a slot taken without its condition (two tabs on the same free slot)."""
    from stereo_spot.adapters.aws import aws_backend

    _check_the_cap_holds(aws_backend(aws_settings))
