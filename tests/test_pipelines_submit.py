"""`stereo-spot submit` over real HTTP: a small server on 127.0.0.1 records what Hera's WorkflowsService and
kfp.Client send (and answers like the Argo server / the KFP API), and is stopped after each test."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.pipelines.config import template_name
from tests.local_server import serving

JOB = "0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55"
KEY = f"input/{JOB}/source.mp4"
VALIDATOR = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "validate-manifests"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None


@dataclass
class Server:
    url: str
    requests: list[Recorded] = field(default_factory=list)

    def posts(self, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.startswith(prefix)]


Route = Callable[[Recorded], tuple[int, dict]]


@contextmanager
def http_server(route: Route) -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                               json.loads(raw) if raw else None)
            state.requests.append(request)
            status, body = route(request)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    with serving(Handler) as url:
        state.url = url
        yield state


def _validate(document: dict, tmp_path: Path, name: str) -> str:
    if not VALIDATOR.is_file():
        pytest.skip("shared/tools/validate-manifests is not beside this checkout")
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(document if isinstance(document, list) else [document]))
    proc = subprocess.run([sys.executable, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and " 0 invalid" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def _argo_server(existing: dict[str, str] | None = None) -> Route:
    """The Argo server's list (by label selector) and create calls; ``existing`` maps the job's workflows that
    are on the cluster to their phase."""
    def route(request: Recorded) -> tuple[int, dict]:
        url = urllib.parse.urlsplit(request.path)
        if request.method == "GET" and url.path == "/api/v1/workflows/stereo-spot":
            selector = urllib.parse.parse_qs(url.query).get("listOptions.labelSelector", [""])[0]
            items = [{"metadata": {"name": name, "labels": {"stereo-spot.io/job-id": JOB}},
                      "status": {"phase": phase}} for name, phase in (existing or {}).items()
                     if selector == f"stereo-spot.io/job-id={JOB}"]
            return 200, {"metadata": {}, "items": items or None}
        if request.method == "POST" and url.path == "/api/v1/workflows/stereo-spot":
            workflow = request.body["workflow"]
            if workflow["metadata"]["name"] in (existing or {}):
                return 409, {"code": 6, "message": "already exists"}
            return 200, {**workflow, "metadata": {**workflow["metadata"], "uid": "u-1", "namespace": "stereo-spot"}}
        return 404, {"code": 5, "message": "not found"}
    return route


RUN_NAME = re.compile(rf"stereo-spot-{JOB}-[0-9a-f]{{12}}")


@pytest.mark.slow  # over 10 s
def test_submit_to_argo_sends_a_workflow_from_the_template(tmp_path, monkeypatch):
    monkeypatch.setenv("ARGO_TOKEN", "secret-token")
    monkeypatch.delenv("ARGO_UI_URL", raising=False)
    with http_server(_argo_server()) as server:
        result = CliRunner().invoke(app, ["submit", "--engine", "argo", "--bucket", "uploads", "--key", KEY,
                                          "--host", server.url, "--format", "anaglyph", "--divergence", "3",
                                          "--baseline-mm", "58.5", "--gpu-workers", "2",
                                          "--depth-video", f"input/{JOB}/depth.mkv"])
    assert result.exit_code == 0, result.output
    [created] = server.posts("/api/v1/workflows/")
    assert created.headers["authorization"] == "Bearer secret-token"
    workflow = created.body["workflow"]
    name = workflow["metadata"]["name"]
    assert workflow["kind"] == "Workflow" and RUN_NAME.fullmatch(name) and len(name) <= 63
    assert workflow["metadata"]["labels"]["stereo-spot.io/job-id"] == JOB  # how the app finds the job's runs
    assert result.stdout.strip() == f"{server.url}/workflows/stereo-spot/{name}"
    assert workflow["spec"]["workflowTemplateRef"] == {"name": template_name()}  # the versioned name
    assert {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]} == {
        "bucket": "uploads", "key": KEY, "format": "anaglyph", "divergence": "3.0", "baseline-mm": "58.5",
        "gpu-workers": "2", "depth-video": f"input/{JOB}/depth.mkv"}
    assert "ok" in _validate(workflow, tmp_path, "workflow.yaml")


def test_a_job_whose_run_failed_gets_a_new_run_that_resumes_it():
    """The failed run is kept for days (ttlStrategy): the old fixed name made the new submit fail with
    AlreadyExists. Now a finished run does not count, and the new run has a name of its own."""
    failed = f"stereo-spot-{JOB}"  # the name runs had before, still on the cluster
    stopped = f"stereo-spot-{JOB}-0123456789ab"
    with http_server(_argo_server({failed: "Failed", stopped: "Error"})) as server:
        first = CliRunner().invoke(app, ["submit", "--key", KEY, "--bucket", "b", "--host", server.url])
        second = CliRunner().invoke(app, ["submit", "--key", KEY, "--bucket", "b", "--host", server.url])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    names = [r.body["workflow"]["metadata"]["name"] for r in server.posts("/api/v1/workflows/")]
    assert len(names) == 2 and len(set(names) | {failed, stopped}) == 4 and all(RUN_NAME.fullmatch(n) for n in names)


@pytest.mark.parametrize("phase", ["Running", "Pending", ""])
def test_a_job_with_a_run_in_progress_says_so_and_starts_nothing(phase):
    running = f"stereo-spot-{JOB}-0123456789ab"
    with http_server(_argo_server({running: phase})) as server:
        result = CliRunner().invoke(app, ["submit", "--key", KEY, "--bucket", "b", "--host", server.url])
    text = result.output.replace("\n", "")  # the terminal wraps the line
    assert result.exit_code == 1
    assert f"job {JOB} already has a run in progress" in text and running in text
    assert "Traceback" not in text and server.posts("/api/v1/workflows/") == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("engine", ["argo", "kfp"])
def test_an_unreachable_server_is_one_clear_line(engine):
    host = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    result = CliRunner().invoke(app, ["submit", "--engine", engine, "--key", KEY, "--bucket", "b", "--host", host])
    assert result.exit_code == 1
    assert "cannot reach" in result.output and host in result.output and "Traceback" not in result.output


def test_missing_host_and_bad_key_are_clear(monkeypatch):
    monkeypatch.delenv("ARGO_SERVER_URL", raising=False)
    result = CliRunner().invoke(app, ["submit", "--key", KEY, "--bucket", "b"])
    assert result.exit_code == 1 and "ARGO_SERVER_URL" in result.output
    result = CliRunner().invoke(app, ["submit", "--key", "input/film.mp4", "--bucket", "b", "--host", "http://x"])
    assert result.exit_code == 1 and "not an input key" in result.output


def _kfp_api(request: Recorded) -> tuple[int, dict]:
    path = request.path.split("?")[0]
    if path == "/apis/v2beta1/healthz":
        return 200, {"multi_user": False}
    if request.method == "GET" and path == "/apis/v2beta1/experiments":
        return 200, {}
    if request.method == "POST" and path == "/apis/v2beta1/experiments":
        return 200, {"experiment_id": "exp-1", "display_name": request.body["display_name"]}
    if request.method == "POST" and path == "/apis/v2beta1/runs":
        return 200, {"run_id": "run-42", "display_name": request.body["display_name"],
                     "experiment_id": request.body["experiment_id"], "state": "PENDING"}
    return 404, {"error": "not found", "code": 5}


def test_submit_to_kubeflow_sends_a_valid_run_request(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "kfp-token")
    monkeypatch.setenv("KFP_UI_URL", "https://kubeflow.example.com/pipeline")
    with http_server(_kfp_api) as server:
        result = CliRunner().invoke(app, ["submit", "--engine", "kfp", "--bucket", "uploads", "--key", KEY,
                                          "--host", server.url, "--registry", "example.com/team", "--tag", "7",
                                          "--gpu-workers", "3", "--hfov", "70",
                                          "--depth-video", f"input/{JOB}/depth.mkv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "https://kubeflow.example.com/pipeline/#/runs/details/run-42"
    [experiment] = server.posts("/apis/v2beta1/experiments")
    assert experiment.body["display_name"] == "stereo-spot"
    [run] = server.posts("/apis/v2beta1/runs")
    assert run.headers["authorization"] == "Bearer kfp-token"
    body = run.body
    assert body["display_name"] == f"stereo-spot-{JOB}" and body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"bucket": "uploads", "key": KEY, "gpu_workers": 3, "hfov": "70.0",
                                                    "depth_video": f"input/{JOB}/depth.mkv"}
    spec, platform = body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "stereo-spot"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"example.com/team/stereo-spot-cpu:7", "example.com/team/stereo-spot-gpu:7"}
    out = _validate([spec, platform], tmp_path, "run-pipeline.yaml")
    assert "ok" in out and "kfp-platform" in out
