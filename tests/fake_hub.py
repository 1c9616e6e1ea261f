"""A Hugging Face hub on 127.0.0.1 for tests: the two endpoints huggingface_hub's ``snapshot_download`` uses.

    GET  /api/models/{repo}/revision/{rev}    → {"id", "sha", "siblings": [{"rfilename"}]}
    GET  /api/models/{repo}/tree/{rev}        → [{"type": "file", "path", "size", "oid", "lfs"}]
    HEAD /{repo}/resolve/{rev}/{file}         → X-Repo-Commit, ETag (the blob's hash), Content-Length
    GET  /{repo}/resolve/{rev}/{file}         → the bytes

Files are served from a folder per repository; the ETag is what the real hub sends (sha256 of the content for
large files, the git blob sha1 for small ones), so the cache the client builds is the real layout. Every
request is counted, so a test can show that a cached model is not downloaded again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_THRESHOLD = 1024  # bytes: larger files are "LFS" files, named by their sha256


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if len(data) > LFS_THRESHOLD else _git_oid(data)


def _tree_entry(root: Path, file: Path) -> dict:
    data = file.read_bytes()
    entry = {"type": "file", "path": str(file.relative_to(root)), "size": len(data), "oid": _git_oid(data)}
    if len(data) > LFS_THRESHOLD:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Path] = {}
        self.commits: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _route(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                hub.requests[f"{self.command} {path}"] += 1
                if path.startswith("/api/models/") and "/tree/" in path:
                    repo = path[len("/api/models/"):].partition("/tree/")[0]
                    if repo not in hub.repos:
                        return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    root = hub.repos[repo]
                    body = json.dumps([_tree_entry(root, p) for p in sorted(root.rglob("*")) if p.is_file()]).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                if path.startswith("/api/models/"):
                    repo, _, rev = path[len("/api/models/"):].partition("/revision/")
                    if repo not in hub.repos:
                        return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                    files = sorted(str(p.relative_to(hub.repos[repo])) for p in hub.repos[repo].rglob("*")
                                   if p.is_file())
                    body = json.dumps({"id": repo, "modelId": repo, "sha": hub.commits[repo],
                                       "siblings": [{"rfilename": f} for f in files]}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head)
                repo, sep, rest = path.lstrip("/").partition("/resolve/")
                if not sep or repo not in hub.repos:
                    return self._send(404, b"not found", {"X-Error-Code": "RepoNotFound"}, head)
                _rev, _, name = rest.partition("/")
                file = hub.repos[repo] / name
                if not file.is_file():
                    return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
                data = file.read_bytes()
                self._send(200, data, {"X-Repo-Commit": hub.commits[repo], "ETag": f'"{_etag(data)}"',
                                       "Content-Type": "application/octet-stream"}, head)

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._route(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._route(head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo_id: str, folder: Path) -> str:
        commit = hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()
        self.repos[repo_id], self.commits[repo_id] = folder, commit
        return commit

    def downloads(self) -> int:
        return sum(n for key, n in self.requests.items() if key.startswith("GET ") and "/resolve/" in key)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serving(repos: dict[str, Path], cache: Path, monkeypatch):
    """A fake hub with ``repos`` (repository id → folder), huggingface_hub pointed at it with an empty cache at
    ``cache``, for a fixture to ``yield from``."""
    from huggingface_hub import constants

    from stereo_spot import hub_models

    with FakeHub() as fake:
        for repo_id, folder in repos.items():
            fake.add_repo(repo_id, folder)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # huggingface_hub reads these once, at import: point the already imported constants at the test's
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            fake.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub_models.snapshot_for_process.cache_clear()
        yield fake
        hub_models.snapshot_for_process.cache_clear()
