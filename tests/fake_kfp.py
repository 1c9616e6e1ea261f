"""A fake Kubeflow Pipelines API server (v2beta1 REST) on 127.0.0.1 that enforces what the real one enforces in
multi-user mode, and records every request:

* every call needs ``Authorization: Bearer <token>`` where the token is a JWT whose ``aud`` holds
  ``pipelines.kubeflow.org`` and which has not expired (KFP's TokenReview), and whose ``sub`` may use the
  namespace (KFP's SubjectAccessReview) — 401 / 403 otherwise;
* experiments are listed and created in a namespace; a run needs an experiment id ("Experiment id can not be
  empty in multi-user mode") and runs are listed by experiment or namespace;
* display names are not unique: a second POST with the same name is a second run, as in KFP.

In standalone mode there is no authentication and no namespace (a namespace is refused, as single-user KFP
refuses one).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AUDIENCE = "pipelines.kubeflow.org"


def make_token(sub: str, audience: str = AUDIENCE, expires_in: float = 3600) -> str:
    def part(payload: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    return ".".join([part({"alg": "RS256"}), part({"aud": [audience], "sub": sub, "exp": time.time() + expires_in,
                                                   "jti": uuid.uuid4().hex}), "signature"])


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@dataclass
class FakeKfp:
    multi_user: bool = True
    allowed: dict[str, set[str]] = field(default_factory=dict)  # namespace -> subjects allowed there
    pipelines: set[str] = field(default_factory=set)
    experiments: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)  # method, path, query, token
    fail_next_run_creations: int = 0  # answer 503 to this many POST /runs (KFP restarting)
    url: str = ""

    def _error(self, status: int, message: str) -> tuple[int, dict]:
        return status, {"error": message, "code": status, "message": message}

    def _auth(self, token: str | None, namespace: str | None) -> tuple[int, dict] | None:
        if not self.multi_user:
            return None
        if not token:
            return self._error(401, "Unauthenticated: no bearer token in the Authorization header")
        try:
            claims = _claims(token)
        except (IndexError, ValueError):
            return self._error(401, "Unauthenticated: the token is not a service account token")
        if AUDIENCE not in claims.get("aud", []) or claims.get("exp", 0) < time.time():
            return self._error(401, "Unauthenticated: token review failed (audience or expiry)")
        if namespace is not None and claims.get("sub") not in self.allowed.get(namespace, set()):
            return self._error(403, f"PermissionDenied: {claims.get('sub')} may not access namespace {namespace}")
        return None

    def handle(self, method: str, path: str, query: dict[str, str], body: dict | None,
               token: str | None) -> tuple[int, dict]:
        self.requests.append({"method": method, "path": path, "query": query, "token": token, "body": body})
        namespace = query.get("namespace") or (body or {}).get("namespace")
        if path == "/apis/v2beta1/healthz":
            return 200, {"commit_sha": "fake", "tag_name": "2.17.0", "multi_user": self.multi_user}
        if not self.multi_user and namespace:
            return self._error(400, "Invalid input error: in single-user mode a namespace must be empty")
        if path == "/apis/v2beta1/experiments":
            if self.multi_user and not namespace:
                return self._error(400, "Invalid input error: in multi-user mode experiments need a namespace")
            denied = self._auth(token, namespace)
            if denied:
                return denied
            if method == "GET":
                found = [e for e in self.experiments if e["namespace"] == (namespace or "")]
                for predicate in json.loads(query.get("filter") or '{"predicates": []}')["predicates"]:
                    found = [e for e in found if e[predicate["key"]] == predicate["string_value"]]
                return 200, {"experiments": found, "total_size": len(found)} if found else {}
            experiment = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                          "namespace": namespace or ""}
            self.experiments.append(experiment)
            return 200, experiment
        if path == "/apis/v2beta1/runs":
            if method == "GET":
                experiment = self._experiment(query.get("experiment_id"))
                if self.multi_user and not namespace and experiment is None:
                    return self._error(400, "Invalid input error: in multi-user mode list runs by namespace")
                denied = self._auth(token, namespace or (experiment or {}).get("namespace"))
                if denied:
                    return denied
                found = [r for r in self.runs
                         if experiment is None or r["experiment_id"] == experiment["experiment_id"]]
                for predicate in json.loads(query.get("filter") or '{"predicates": []}')["predicates"]:
                    found = [r for r in found if r[predicate["key"]] == predicate["string_value"]]
                return 200, {"runs": found, "total_size": len(found)} if found else {}
            experiment = self._experiment(body.get("experiment_id"))
            if self.multi_user and not body.get("experiment_id"):
                return self._error(400, "Invalid input error: Experiment id can not be empty in multi-user mode")
            if body.get("experiment_id") and experiment is None:
                return self._error(404, f"experiment {body['experiment_id']} not found")
            denied = self._auth(token, (experiment or {}).get("namespace") if self.multi_user else None)
            if denied:
                return denied
            reference = body.get("pipeline_version_reference") or {}
            if reference.get("pipeline_id") not in self.pipelines:
                return self._error(404, f"pipeline {reference.get('pipeline_id')} not found")
            if self.fail_next_run_creations:
                self.fail_next_run_creations -= 1
                return self._error(503, "upstream connect error")
            run = {"run_id": str(uuid.uuid4()), **body, "state": "PENDING"}
            run.setdefault("experiment_id", "default")
            self.runs.append(run)
            return 200, run
        return self._error(404, f"no route {method} {path}")

    def _experiment(self, experiment_id: str | None) -> dict | None:
        return next((e for e in self.experiments if e["experiment_id"] == experiment_id), None)

    def tokens(self) -> list[str | None]:
        return [r["token"] for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKfp

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        auth = self.headers.get("Authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        status, payload = self.fake.handle(method, parsed.path, query, body, token)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class serve:
    """``with serve(FakeKfp(...)) as fake:`` — fake.url is http://127.0.0.1:<free port>."""

    def __init__(self, fake: FakeKfp):
        self.fake = fake
        handler = type("Handler", (_Handler,), {"fake": fake})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKfp:
        self.thread.start()
        self.fake.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
