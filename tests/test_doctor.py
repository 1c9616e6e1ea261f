"""``stereo-spot doctor`` against a fake Kubernetes API and Argo server on 127.0.0.1 (bearer token required):
an Argo Workflows older than 3.6 is refused (it would drop the per-job mutex), missing CRDs and service accounts
are named, and credentials come from a kubeconfig as kubectl reads it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from stereo_spot.adapters.httpjson import Endpoint
from stereo_spot.cli.main import app
from stereo_spot.cluster.doctor import (
    OPTIONAL_CRDS,
    REQUIRED_CRDS,
    SERVICE_ACCOUNTS,
    kube_endpoint,
    parse_version,
    run_checks,
)

TOKEN = "kube-token-123"


class FakeCluster:
    def __init__(self, *, argo_version="v3.6.2", controller_image="quay.io/argoproj/workflow-controller:v3.6.2",
                 crds=None, accounts=None, namespace=True):
        self.argo_version, self.controller_image = argo_version, controller_image
        self.crds = set(REQUIRED_CRDS) | set(OPTIONAL_CRDS) if crds is None else set(crds)
        self.accounts = {name: {"eks.amazonaws.com/role-arn": f"arn:aws:iam::123456789012:role/{name}"}
                         for name in SERVICE_ACCOUNTS} if accounts is None else accounts
        self.namespace = namespace
        self.paths: list[str] = []

    def answer(self, path: str, token: str | None) -> tuple[int, dict]:
        self.paths.append(path)
        if token != TOKEN:
            return 401, {"kind": "Status", "message": "Unauthorized", "code": 401}
        if path == "/version":
            return 200, {"gitVersion": "v1.31.2"}
        if path == "/api/v1/version":  # the Argo server
            return 200, {"version": self.argo_version, "gitCommit": "abc"}
        if path == "/apis/apps/v1/namespaces/argo/deployments/workflow-controller":
            return 200, {"spec": {"template": {"spec": {"containers": [{"image": self.controller_image}]}}}}
        prefix = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
        if path.startswith(prefix) and path[len(prefix):] in self.crds:
            return 200, {"spec": {"versions": [{"name": "v1alpha1", "served": True}]}}
        if path == "/api/v1/namespaces/stereo-spot" and self.namespace:
            return 200, {"metadata": {"name": "stereo-spot"}}
        prefix = "/api/v1/namespaces/stereo-spot/serviceaccounts/"
        if path.startswith(prefix) and path[len(prefix):] in self.accounts:
            name = path[len(prefix):]
            return 200, {"metadata": {"name": name, "annotations": self.accounts[name]}}
        return 404, {"kind": "Status", "message": f"{path} not found", "code": 404}


@pytest.fixture
def serve():
    servers = []

    def start(cluster: FakeCluster) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization") or ""
                status, body = cluster.answer(self.path, auth.removeprefix("Bearer ") if auth else None)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _states(checks) -> dict[str, str]:
    return {c.name: c.state for c in checks}


def test_a_supported_cluster_passes(serve):
    url = serve(FakeCluster())
    checks = run_checks(Endpoint(url, token=TOKEN), argo=Endpoint(url, token=TOKEN))
    assert not [c for c in checks if c.state != "ok"], [c.line() for c in checks]
    assert "v3.6.2 (the Argo server" in next(c.detail for c in checks if c.name == "argo-workflows")


@pytest.mark.parametrize("version", ["v3.5.8", "v3.4.0"])
def test_argo_before_3_6_is_refused_for_the_mutex(serve, version):
    url = serve(FakeCluster(argo_version=version))
    (argo,) = [c for c in run_checks(Endpoint(url, token=TOKEN), argo=Endpoint(url, token=TOKEN))
               if c.name == "argo-workflows"]
    assert argo.failed and "mutex" in argo.detail and version in argo.detail


def test_without_an_argo_server_the_controller_image_tells_the_version(serve):
    url = serve(FakeCluster(controller_image="quay.io/argoproj/workflow-controller:v3.5.11"))
    (argo,) = [c for c in run_checks(Endpoint(url, token=TOKEN)) if c.name == "argo-workflows"]
    assert argo.failed and "v3.5.11" in argo.detail and "controller image" in argo.detail
    url = serve(FakeCluster(controller_image="quay.io/argoproj/workflow-controller:latest"))
    (argo,) = [c for c in run_checks(Endpoint(url, token=TOKEN)) if c.name == "argo-workflows"]
    assert argo.state == "warn" and "ARGO_SERVER_URL" in argo.detail


def test_missing_crds_and_service_accounts_are_named(serve):
    crds = set(REQUIRED_CRDS) - {"sensors.argoproj.io", "eventbus.argoproj.io"}
    accounts = {"stereo-spot-workflow": {}, "stereo-spot-sensor": {}}
    url = serve(FakeCluster(crds=crds, accounts=accounts))
    states = _states(run_checks(Endpoint(url, token=TOKEN), argo=Endpoint(url, token=TOKEN)))
    assert states["crd sensors.argoproj.io"] == states["crd eventbus.argoproj.io"] == "missing"
    assert states["crd workflows.argoproj.io"] == "ok"
    assert states["crd nodepools.karpenter.sh"] == "warn"  # optional: the aws overlay's
    assert states["serviceaccount stereo-spot-events"] == "missing"
    assert states["serviceaccount stereo-spot-workflow"] == "warn"  # no IRSA role: no AWS access
    assert states["serviceaccount stereo-spot-sensor"] == "ok"  # needs none


def test_before_the_first_deploy_the_namespace_is_only_a_warning(serve):
    url = serve(FakeCluster(namespace=False, accounts={}))
    checks = run_checks(Endpoint(url, token=TOKEN), argo=Endpoint(url, token=TOKEN))
    assert _states(checks)["namespace stereo-spot"] == "warn" and not [c for c in checks if c.failed]


def test_a_refused_token_says_so(serve):
    url = serve(FakeCluster())
    (check,) = run_checks(Endpoint(url, token="wrong"))
    assert check.failed and "401" in check.detail and "refused" in check.detail


def test_the_command_reads_the_kubeconfig_and_exits_non_zero_when_something_is_missing(serve, tmp_path,
                                                                                       monkeypatch):
    url = serve(FakeCluster(argo_version="v3.5.8"))
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "eks",
              "contexts": [{"name": "eks", "context": {"cluster": "c", "user": "u"}},
                           {"name": "other", "context": {"cluster": "c", "user": "bad"}}],
              "clusters": [{"name": "c", "cluster": {"server": url}}],
              "users": [{"name": "u", "user": {"token": TOKEN}}, {"name": "bad", "user": {"token": "nope"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    assert kube_endpoint(kubeconfig=str(path)).token == TOKEN
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    runner = CliRunner()
    result = runner.invoke(app, ["doctor", "--argo-server", url, "--argo-token", f"Bearer {TOKEN}"])
    assert result.exit_code == 1 and "argo-workflows" in result.output and "mutex" in result.output, result.output
    result = runner.invoke(app, ["doctor", "--context", "other"])
    assert result.exit_code == 1 and "refused" in result.output
    result = runner.invoke(app, ["doctor", "--kubeconfig", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_an_exec_plugin_token(tmp_path):
    """EKS kubeconfigs run `aws eks get-token`: the token is the ExecCredential's."""
    script = tmp_path / "get-token"
    script.write_text('#!/bin/sh\necho \'{"kind": "ExecCredential", "status": {"token": "k8s-aws-v1.abc"}}\'\n')
    script.chmod(0o755)
    config = {"current-context": "eks", "contexts": [{"name": "eks", "context": {"cluster": "c", "user": "u"}}],
              "clusters": [{"name": "c", "cluster": {"server": "https://example.invalid"}}],
              "users": [{"name": "u", "user": {"exec": {"command": str(script), "args": []}}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    assert kube_endpoint(kubeconfig=str(path)).token == "k8s-aws-v1.abc"


def test_parse_version():
    assert parse_version("v3.6.2") == (3, 6, 2) and parse_version("3.7") == (3, 7)
    assert parse_version("latest") is None


def test_the_argo_server_is_trusted_by_the_same_rule_as_every_client(tmp_path, monkeypatch):
    """doctor reads the Argo server's certificate settings (ARGO_CA_FILE, ARGO_INSECURE_SKIP_VERIFY) through
    ``argo_runs.endpoint`` like the app and ``submit``: a CA bundle that is not there is one line, before any
    request is made."""
    monkeypatch.setenv("ARGO_CA_FILE", str(tmp_path / "absent.pem"))
    result = CliRunner().invoke(app, ["doctor", "--kube-api", "https://127.0.0.1:9", "--kube-token", TOKEN,
                                      "--argo-server", "https://127.0.0.1:9"])
    assert result.exit_code == 2 and "ARGO_CA_FILE" in result.output and "Traceback" not in result.output
