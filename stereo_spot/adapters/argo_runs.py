"""A job's Argo workflows: how a run is named, how the Argo server is reached, how a job's runs are found and
stopped. The Sensor (manifests/base/sensor-argo.yaml), ``stereo-spot submit`` and the app all follow this.

A job can have several runs over its life: a run fails and is kept for days (``ttlStrategy``), then the video is
uploaded again or ``stereo-spot reconcile`` re-drives it, and a new run resumes it (the steps skip the segments
already converted). So a run is named after its job *and* the delivery that started it:
``stereo-spot-<job id>-<12 hex of sha256(delivery)>``. For an S3 event the delivery is its ``sequencer`` (unique
per upload; a re-drive writes a fresh one; SQS redelivering one message repeats it, so a duplicate event gets the
same name and Argo answers AlreadyExists), or its ``eventTime`` where an S3 look-alike sends no sequencer. The
per-job mutex of the WorkflowTemplate keeps two runs of one job from overlapping. A job's runs are found by the
label ``stereo-spot.io/job-id``, never by name.
"""

from __future__ import annotations

import hashlib
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stereo_spot.adapters.httpjson import ApiError, ApiUnreachable, Endpoint
from stereo_spot.keys import validate_job_id

RUN_PREFIX = "stereo-spot-"
JOB_LABEL = "stereo-spot.io/job-id"
TOKEN_CHARS = 12  # sha256 hex digits of the delivery: the name stays within Argo's limit below
# Argo refuses a workflow name over 63 characters: it goes into the pods' workflows.argoproj.io/workflow label
# (argo-workflows workflow/validate/validate.go, maxCharsInObjectName = 63).
MAX_NAME_CHARS = 63
# Phases after which a workflow runs nothing more (argo-workflows pkg/apis/workflow/v1alpha1/workflow_types.go,
# WorkflowPhase; "" and Pending are runs not yet started, Running is running).
FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Error"})
# The service-account token Kubernetes mounts in every pod (used when ARGO_TOKEN is not set).
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def job_run_prefix(job_id: str) -> str:
    """``stereo-spot-<job id>``: how every run of the job is named, on Argo followed by its delivery's token; on
    Kubeflow (which does not need names to be unique) the run's whole display name."""
    return f"{RUN_PREFIX}{validate_job_id(job_id)}"


def run_name(job_id: str, delivery: str) -> str:
    """The workflow name for the run of ``job_id`` that ``delivery`` starts (the S3 event's sequencer, else its
    eventTime; a fresh token for a manual submit). The Sensor's name template computes the same
    (tests/test_sensor_events.py)."""
    token = hashlib.sha256(delivery.encode()).hexdigest()[:TOKEN_CHARS]
    return f"{job_run_prefix(job_id)}-{token}"


def new_run_name(job_id: str) -> str:
    """A name for a run started by hand (``stereo-spot submit``, the app): a delivery of its own."""
    return run_name(job_id, f"submit-{uuid.uuid4()}")


def job_selector(job_id: str) -> str:
    return f"{JOB_LABEL}={validate_job_id(job_id)}"


def ui_link(ui_url: str, namespace: str, job_id: str) -> str:
    """The Argo UI's workflow list filtered to the job's runs (the list page reads ``label`` from the query:
    argo-workflows ui/src/workflows/components/workflows-list/workflows-list.tsx)."""
    query = urllib.parse.urlencode({"label": job_selector(job_id)})
    return f"{ui_url.rstrip('/')}/workflows/{namespace}?{query}"


def tls_verify(ca_file: str | None, insecure_skip_verify: bool) -> bool | str:
    """How to check the Argo server's certificate — the one rule for every client of the server. argo-server
    serves https with a self-signed certificate unless it is started with ``--secure=false``, so a client
    either trusts a CA bundle (ARGO_CA_FILE: the server's certificate or its issuer) or, explicitly, skips the
    check (ARGO_INSECURE_SKIP_VERIFY, the Argo CLI's own name for it). Returns what ``requests`` takes as
    ``verify``: a bundle path, True (the system roots) or False."""
    if insecure_skip_verify:
        return False
    if ca_file:
        if not Path(ca_file).is_file():
            raise ValueError(f"ARGO_CA_FILE={ca_file!r} is not a file: give the Argo server's CA bundle (PEM)")
        return ca_file
    return True


def bearer_token(settings: Any) -> str | None:
    """ARGO_TOKEN, else the pod's service-account token (the Argo server then acts with that account's RBAC)."""
    token = settings.argo_token
    if not token and Path(SERVICE_ACCOUNT_TOKEN).is_file():
        token = Path(SERVICE_ACCOUNT_TOKEN).read_text().strip()
    if token and token.startswith("Bearer "):
        token = token[len("Bearer "):]
    return token or None


def endpoint(settings: Any, host: str | None = None, token: str | None = None, timeout: float = 15.0,
             insecure: bool = False) -> Endpoint:
    """The Argo server's API as ``settings`` (ARGO_SERVER_URL, ARGO_TOKEN, ARGO_CA_FILE,
    ARGO_INSECURE_SKIP_VERIFY) describe it; ``insecure`` is a command line's --insecure."""
    verify = tls_verify(settings.argo_ca_file, settings.argo_insecure_skip_verify or insecure)
    return Endpoint((host or settings.argo_server_url or "").rstrip("/"), token=token or bearer_token(settings),
                    verify=verify is not False, ca_file=verify if isinstance(verify, str) else None,
                    timeout=timeout)


def requests_verify(api: Endpoint) -> bool | str:
    """The same check for a client built on ``requests`` (Hera's WorkflowsService): its ``verify`` value."""
    return api.ca_file or api.verify


@dataclass(frozen=True)
class Run:
    name: str
    phase: str

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES


def job_runs(api: Endpoint, namespace: str, job_id: str) -> list[Run]:
    """Every workflow of the job still on the cluster, found by its label. Raises ApiError/ApiUnreachable."""
    answer = api.get(f"api/v1/workflows/{namespace}", **{"listOptions.labelSelector": job_selector(job_id),
                                                         "fields": "items.metadata.name,items.status.phase"})
    return [Run(item["metadata"]["name"], (item.get("status") or {}).get("phase") or "")
            for item in answer.get("items") or [] if (item.get("metadata") or {}).get("name")]


def stop_job_runs(api: Endpoint, namespace: str, job_id: str) -> list[str]:
    """Stop every unfinished run of the job (Argo's stop: the exit handler still runs). Returns their names; a
    run deleted meanwhile (404) is skipped, any other refusal raises ApiError."""
    stopped = []
    for run in job_runs(api, namespace, job_id):
        if run.finished:
            continue
        try:
            api.request("PUT", f"api/v1/workflows/{namespace}/{run.name}/stop",
                        body={"name": run.name, "namespace": namespace})
        except ApiError as exc:
            if exc.status == 404:
                continue
            raise
        stopped.append(run.name)
    return stopped


__all__ = ["ApiError", "ApiUnreachable", "Run", "job_runs", "run_name", "new_run_name", "stop_job_runs",
           "tls_verify", "endpoint", "ui_link", "JOB_LABEL", "job_run_prefix"]
