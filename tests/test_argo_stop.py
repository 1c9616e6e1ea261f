"""Deleting a job stops its Argo runs through a real https server with a self-signed certificate, as
argo-server serves by default (`argo server --secure`, default true: cmd/argo/commands/server.go).

The runs are found by the job label, not by a fixed name: a job can have an old failed run and a new running
one, and only the running one is stopped. Breakages these catch: the old fixed-name PUT (no list call, the
running run never stopped), verification switched off by default (the no-CA case would then stop the run),
the CA bundle not used (the CA case fails), and a stop sent to a finished run."""

from __future__ import annotations

import datetime
import ipaddress
import json
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from stereo_spot import keys
from stereo_spot.adapters import argo_runs
from stereo_spot.config import Settings
from stereo_spot.ui.submission import stop_run
from tests.local_server import serving

JOB = "0b7f3e2c-9f0e-4c3e-8c39-0d6f9c1b9a01"
OLD_RUN = argo_runs.run_name(JOB, "0055AED6DCD90281E5")  # failed, kept by the ttlStrategy
NEW_RUN = argo_runs.run_name(JOB, "0055AED6DCD90281F7")  # the re-upload's run, running
ROOT = Path(__file__).resolve().parent.parent


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "argo-server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "argo-server.crt", tmp / "argo-server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class ArgoServer:
    url: str
    phases: dict[str, str]
    calls: list[tuple[str, str, str | None, dict | None]] = field(default_factory=list)

    def puts(self) -> list[str]:
        return [path for method, path, _, _ in self.calls if method == "PUT"]


@contextmanager
def argo_server(cert: Path, key: Path, phases: dict[str, str]) -> Iterator[ArgoServer]:
    """The two calls of the Argo server API the app makes: list by label selector, and stop."""
    state = ArgoServer("", dict(phases))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            state.calls.append(("GET", self.path, self.headers.get("Authorization"), None))
            if url.path != "/api/v1/workflows/stereo-spot":
                return self._answer(404, {"code": 5, "message": "not found"})
            selector = urllib.parse.parse_qs(url.query).get("listOptions.labelSelector", [""])[0]
            wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
            items = [{"metadata": {"name": name, "labels": {argo_runs.JOB_LABEL: JOB}}, "status": {"phase": phase}}
                     for name, phase in state.phases.items() if wanted.get(argo_runs.JOB_LABEL) == JOB]
            return self._answer(200, {"metadata": {}, "items": items or None})

        def do_PUT(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.calls.append(("PUT", self.path, self.headers.get("Authorization"), body))
            name = self.path.split("/")[-2]
            if name not in state.phases:
                return self._answer(404, {"code": 5, "message": "not found"})
            state.phases[name] = "Failed"
            return self._answer(200, {"metadata": {"name": name}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.calls.append(("POST", self.path, self.headers.get("Authorization"), body))
            workflow = body["workflow"]
            state.phases[workflow["metadata"]["name"]] = "Pending"
            return self._answer(200, {**workflow, "metadata": {**workflow["metadata"], "uid": "u-1"}})

        def log_message(self, *args):
            pass

    with serving(Handler, tls=(cert, key)) as url:
        state.url = url
        yield state


class _Aws:
    name = "aws"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("tls"))


def _settings(url: str, **tls) -> Settings:
    return Settings(argo_server_url=url, argo_token="t0ken", argo_namespace="stereo-spot", **tls)


def test_deleting_stops_the_running_run_found_by_the_job_label(certificate):
    cert, key = certificate
    with argo_server(cert, key, {OLD_RUN: "Failed", NEW_RUN: "Running"}) as server:
        assert stop_run(_Aws(), _settings(server.url, argo_ca_file=str(cert)), JOB) is None
    [listed] = [path for method, path, _, _ in server.calls if method == "GET"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(listed).query)
    assert query["listOptions.labelSelector"] == [f"stereo-spot.io/job-id={JOB}"]
    assert server.puts() == [f"/api/v1/workflows/stereo-spot/{NEW_RUN}/stop"]  # not the failed one
    assert {auth for _, _, auth, _ in server.calls} == {"Bearer t0ken"}
    assert server.phases[NEW_RUN] == "Failed"


def test_an_untrusted_certificate_is_refused_unless_skipping_is_asked_for(certificate):
    cert, key = certificate
    with argo_server(cert, key, {NEW_RUN: "Running"}) as server:
        warning = stop_run(_Aws(), _settings(server.url), JOB)  # system roots only: the check is on by default
        assert warning and "could not be stopped" in warning and "CERTIFICATE_VERIFY_FAILED" in warning
        assert server.puts() == []
        assert stop_run(_Aws(), _settings(server.url, argo_insecure_skip_verify=True), JOB) is None
    assert server.puts() == [f"/api/v1/workflows/stereo-spot/{NEW_RUN}/stop"]


def test_a_missing_ca_bundle_is_one_clear_line(tmp_path):
    warning = stop_run(_Aws(), _settings("https://127.0.0.1:9", argo_ca_file=str(tmp_path / "ca.pem")), JOB)
    assert "ARGO_CA_FILE" in warning and "is not a file" in warning


def test_tls_verify_is_one_rule(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert argo_runs.tls_verify(None, False) is True
    assert argo_runs.tls_verify(str(bundle), False) == str(bundle)
    assert argo_runs.tls_verify(str(bundle), True) is False
    assert Settings().argo_insecure_skip_verify is False  # off unless set


def test_the_app_is_pointed_at_argo_servers_https_port():
    """argo-server listens with TLS unless started with --secure=false; the stock install does not."""
    docs = list(yaml.safe_load_all((ROOT / "manifests/base/ui.yaml").read_text()))
    [deployment] = [d for d in docs if d and d.get("kind") == "Deployment"]
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "ui"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["ARGO_SERVER_URL"].startswith("https://argo-server.argo.svc:2746")
    rbac = list(yaml.safe_load_all((ROOT / "manifests/base/rbac.yaml").read_text()))
    [role] = [d for d in rbac if d and d["kind"] == "Role" and d["metadata"]["name"] == "stereo-spot-ui"]
    assert "list" in role["rules"][0]["verbs"]  # the job's runs are listed by label


def test_submit_trusts_the_same_ca_bundle_and_starts_a_new_run_beside_a_failed_one(certificate, monkeypatch):
    """`stereo-spot submit` and the app's submission reach argo-server under the same TLS rule: the list by label
    and the create through Hera both verify against ARGO_CA_FILE."""
    from stereo_spot.pipelines.submit import SubmitError, submit

    cert, key = certificate
    monkeypatch.setenv("ARGO_TOKEN", "t0ken")
    monkeypatch.delenv("ARGO_INSECURE_SKIP_VERIFY", raising=False)
    with argo_server(cert, key, {OLD_RUN: "Failed"}) as server:
        monkeypatch.delenv("ARGO_CA_FILE", raising=False)
        with pytest.raises(SubmitError, match="CERTIFICATE_VERIFY_FAILED"):
            submit("argo", "uploads", keys.input_key(JOB), host=server.url)
        insecure = submit("argo", "uploads", keys.input_key(JOB), host=server.url, verify_ssl=False)  # --insecure
        monkeypatch.setenv("ARGO_CA_FILE", str(cert))
        server.phases[insecure.run_id] = "Failed"
        run = submit("argo", "uploads", keys.input_key(JOB), host=server.url)
    assert run.run_id not in (OLD_RUN, NEW_RUN) and run.run_id.startswith(f"stereo-spot-{JOB}-")
    assert [path for method, path, _, _ in server.calls if method == "POST"] == ["/api/v1/workflows/stereo-spot"] * 2

