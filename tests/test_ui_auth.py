"""Sign-in and ownership: who the pages and the routes take a request to be from, and that a user only ever sees
their own jobs (a guessed id reads exactly like a missing one)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from starlette.applications import Starlette
from streamlit.testing.v1 import AppTest

from stereo_spot import keys, steps
from stereo_spot.config import Settings
from stereo_spot.models import ConversionSettings, JobStatus, utcnow
from stereo_spot.ui import auth, services
from stereo_spot.ui.backend import staging_area
from stereo_spot.ui.routes import api_routes

APP = str(Path(__file__).resolve().parent.parent / "ui" / "streamlit_app.py")


def call(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"",
         query: str = "", client: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request through the app's own routes, as the ASGI server would pass it."""
    app = Starlette(routes=api_routes())
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "headers": raw_headers, "scheme": "http",
             "server": ("127.0.0.1", 8501), "client": (client, 5555), "root_path": ""}
    sent = {"body": False}
    messages: list[dict] = []

    async def receive():
        if not sent["body"]:
            sent["body"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the response is complete

    async def send(message):
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, content


@pytest.fixture
def header_mode(home, monkeypatch):
    monkeypatch.setenv("UI_AUTH", "header")
    monkeypatch.setenv("UI_ADMINS", "Boss@Example.com")
    return home


def finished_job(backend, owner: str | None, title: str = "holiday"):
    job = steps.create_job(backend, ConversionSettings(), title, owner=owner)
    backend.objects.write_bytes(backend.output_bucket, keys.final_key(job.job_id), b"the video " + owner.encode()
                                if owner else b"the video")
    return backend.jobs.update(job.job_id, status=JobStatus.COMPLETED, completed_at=utcnow(), total_segments=1)


ALICE = {"X-Forwarded-Email": "alice@example.com"}
BOB = {"X-Forwarded-Email": "Bob@Example.com"}
BOSS = {"X-Forwarded-Email": "boss@example.com"}


# --- identity -------------------------------------------------------------------------------------------


def test_identity_by_mode(monkeypatch):
    monkeypatch.setenv("UI_ADMINS", "boss@example.com, ops@example.com")
    monkeypatch.setenv("UI_AUTH", "none")
    assert auth.request_identity({}, {}, Settings()) == auth.Identity("local", admin=True)
    monkeypatch.setenv("UI_AUTH", "header")
    header = Settings()
    assert auth.request_identity({}, {}, header) is None  # no proxy header: not signed in
    assert auth.request_identity({"x-forwarded-email": " Alice@Example.COM "}, {}, header) == \
        auth.Identity("alice@example.com", admin=False)
    assert auth.request_identity({"X-Forwarded-Email": "ops@example.com"}, {}, header).admin
    assert auth.request_identity({"X-Forwarded-Email": "a b\x00"}, {}, header) is None  # not an identity
    monkeypatch.setenv("UI_AUTH_HEADER", "X-Auth-Request-User")
    assert auth.request_identity({"X-Auth-Request-User": "carol"}, {}, Settings()).user == "carol"
    monkeypatch.setenv("UI_AUTH", "oidc")
    # no signed cookie, or a forged one: nobody
    assert auth.request_identity({}, {"_streamlit_user": "forged"}, Settings()) is None
    assert auth.user_from_claims({"email": "dave@example.com", "sub": "123"}) == "dave@example.com"
    assert auth.user_from_claims({"sub": "123"}) == "123"


def test_loopback_addresses():
    assert all(auth.is_loopback(a) for a in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(auth.is_loopback(a) for a in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


# --- the routes -----------------------------------------------------------------------------------------


def test_video_route_serves_only_the_owner(header_mode, backend):
    mine = finished_job(backend, "alice@example.com")
    path = f"/api/jobs/{mine.job_id}/video"
    assert call("GET", path)[0] == 401  # no identity header
    status, _, body = call("GET", path, ALICE)
    assert status == 200 and body == b"the video alice@example.com"
    assert call("GET", path, BOSS)[0] == 200  # admins see everything
    theirs_status, _, theirs = call("GET", path, BOB)
    missing_status, _, missing = call("GET", f"/api/jobs/{keys.new_job_id()}/video", BOB)
    assert theirs_status == missing_status == 404
    # the same answer as a job that does not exist, apart from the id itself
    assert json.loads(theirs)["error"].replace(mine.job_id, "ID") == \
        re.sub(r"job \S+ has", "job ID has", json.loads(missing)["error"])
    assert call("GET", path, BOB, query="download=1")[0] == 404


def test_upload_tokens_belong_to_the_user_they_were_issued_to(header_mode):
    area = staging_area()
    token = area.new_token("alice@example.com")
    assert call("PUT", f"/api/uploads/{token}", body=b"abc")[0] == 401
    status, _, body = call("PUT", f"/api/uploads/{token}", {**BOB, "X-File-Name": "x.mp4"}, b"abc")
    assert status == 403 and area.get(token) is None  # Bob cannot drop a file into Alice's slot
    status, _, body = call("PUT", f"/api/uploads/{token}", {**ALICE, "X-File-Name": "x.mp4"}, b"abc")
    assert status == 200 and area.get(token).size == 3


def test_an_upload_named_like_the_staging_record_is_kept_apart(tmp_path):
    area = staging_area(Settings(stereo_spot_home=tmp_path))
    token = area.new_token()
    content = b'{"not": "a status"}' * 100
    staged = area.receive(token, "status.json", iter([content]))
    assert staged.ok and staged.name == "status.json"
    again = area.get(token)
    assert again.ok and again.path.read_bytes() == content and again.size == len(content)


# --- listings -------------------------------------------------------------------------------------------


def test_listings_take_an_owner(backend):
    a1, a2 = finished_job(backend, "alice@example.com", "a1"), finished_job(backend, "alice@example.com", "a2")
    b1 = finished_job(backend, "bob@example.com", "b1")
    running = steps.create_job(backend, ConversionSettings(), "b-running", owner="bob@example.com")
    assert {j.job_id for j in backend.jobs.list_completed(owner="alice@example.com").items} == {a1.job_id, a2.job_id}
    assert [j.job_id for j in backend.jobs.list_completed(owner="bob@example.com").items] == [b1.job_id]
    assert len(backend.jobs.list_completed().items) == 3
    assert backend.jobs.list_in_progress(owner="alice@example.com") == []
    assert [j.job_id for j in backend.jobs.list_in_progress(owner="bob@example.com")] == [running.job_id]
    page = backend.jobs.list_completed(limit=1, owner="alice@example.com")
    assert page.next_cursor and len(backend.jobs.list_completed(limit=1, cursor=page.next_cursor,
                                                                owner="alice@example.com").items) == 1
    assert [j.title for j in services.iter_completed(backend.jobs, 10, owner="bob@example.com")] == ["b1"]


def test_per_user_quota(backend, monkeypatch):
    monkeypatch.setenv("UI_MAX_JOBS_PER_USER", "2")
    alice = auth.Identity("alice@example.com")
    for _ in range(2):
        services.create_user_job(backend, ConversionSettings(), "x", alice, Settings())
    with pytest.raises(services.UploadError, match="2 conversions in progress.*UI_MAX_JOBS_PER_USER=2"):
        services.create_user_job(backend, ConversionSettings(), "x", alice, Settings())
    services.create_user_job(backend, ConversionSettings(), "x", auth.Identity("bob@example.com"),
                             Settings())  # others unaffected


# --- the pages (AppTest: the identity the proxy's header would give) ------------------------------------


def app_as(monkeypatch, user: str | None) -> AppTest:
    from stereo_spot.ui import context

    monkeypatch.setattr(context, "page_identity",
                        lambda config: auth.make_identity(user, config) if user else None)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def test_pages_show_only_the_users_own_jobs(header_mode, backend, monkeypatch):
    mine = finished_job(backend, "alice@example.com", "alice's trip")
    theirs = finished_job(backend, "bob@example.com", "bob's trip")
    at = app_as(monkeypatch, "alice@example.com")
    at.switch_page("pages/jobs.py").run()
    labels = [link.label for link in at.page_link]
    assert any("alice" in label for label in labels) and not any("bob" in label for label in labels)
    at.switch_page("pages/job.py")
    at.query_params["job"] = theirs.job_id
    at.run()
    assert [e.value for e in at.error] == [f"There is no job {theirs.job_id}."]  # as if it did not exist
    assert not any(b.label == "Delete this job" for b in at.button)
    at.query_params["job"] = mine.job_id
    at.run()
    assert any(b.label == "Delete this job" for b in at.button)


def test_no_identity_shows_how_to_sign_in(header_mode, monkeypatch):
    at = app_as(monkeypatch, None)
    assert [t.value for t in at.title] == ["Sign in"]
    assert any("X-Forwarded-Email" in e.value for e in at.error)
    assert not any(b.label == "Convert to 3D" for b in at.button)


def test_markdown_in_a_title_is_shown_as_text(home, backend, monkeypatch):
    title = "[win](https://evil.example) ![x](https://evil.example/x.png) **bold** :material/home: <b>hi</b>"
    job = finished_job(backend, "local", title)
    at = app_as(monkeypatch, "local")
    at.switch_page("pages/job.py")
    at.query_params["job"] = job.job_id
    at.run()
    shown = at.title[0].value
    assert shown == services.escape_markdown(title)
    unescaped = re.compile(r"(?<!\\)[\[\]()*:<>!]")  # a Markdown or HTML character without its backslash
    assert not unescaped.search(shown), shown
    # the ?job= parameter is user text too
    at.query_params["job"] = "[x](https://evil.example)"
    at.run()
    assert not unescaped.search(at.error[0].value.split(" is not a job id")[0])


def test_escape_markdown_keeps_the_text():
    text = "a_b *c* [d](e) `f` #g <h> 1. i"
    escaped = services.escape_markdown(text)
    assert re.sub(r"\\(.)", r"\1", escaped) == text
    assert "[" not in escaped.replace("\\[", "")


def test_oidc_routes_read_streamlits_signed_cookie(home, backend, monkeypatch):
    """The cookie Streamlit sets after st.login (signed with the cookie secret, bound to the redirect_uri's
    origin) identifies the user on the app's own routes; a forged or foreign-origin one does not."""
    import streamlit.auth_util
    from streamlit.web.server.starlette import starlette_websocket
    from streamlit.web.server.starlette.starlette_app_utils import create_signed_value

    monkeypatch.setenv("UI_AUTH", "oidc")
    monkeypatch.setattr(streamlit.auth_util, "get_origin_from_redirect_uri", lambda: "https://app.example.com")
    monkeypatch.setattr(starlette_websocket, "get_cookie_secret", lambda: "the-cookie-secret")

    def cookie(claims: dict, secret: str = "the-cookie-secret") -> str:
        return create_signed_value(secret, "_streamlit_user", json.dumps(claims)).decode("latin-1")

    signed_in = {"origin": "https://app.example.com", "is_logged_in": True, "email": "Alice@Example.com"}
    assert auth.request_identity({}, {"_streamlit_user": cookie(signed_in)}, Settings()) == \
        auth.Identity("alice@example.com")
    assert auth.request_identity({}, {"_streamlit_user": cookie(signed_in, "another-secret")}, Settings()) is None
    elsewhere = {**signed_in, "origin": "https://evil.example"}
    assert auth.request_identity({}, {"_streamlit_user": cookie(elsewhere)}, Settings()) is None
    signed_out = {**signed_in, "is_logged_in": False}
    assert auth.request_identity({}, {"_streamlit_user": cookie(signed_out)}, Settings()) is None

    mine = finished_job(backend, "alice@example.com")
    headers = {"cookie": f"_streamlit_user={cookie(signed_in)}"}
    assert call("GET", f"/api/jobs/{mine.job_id}/video", headers)[0] == 200
    assert call("GET", f"/api/jobs/{mine.job_id}/video")[0] == 401
