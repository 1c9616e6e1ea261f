"""``stereo-spot kfp-trigger``: start one Kubeflow Pipelines run for one upload event.

The Kubeflow Sensor (manifests/components/kubeflow-trigger) does not call the KFP API itself: an http trigger
cannot claim the event before it posts, and KFP does not refuse a second run with the same name, so a duplicate
S3 event would start a second run. The Sensor creates a small Kubernetes Job instead, and the Job runs this:

1. parse the S3 notification the same way the SQS worker does (``worker.parse_event``);
2. claim the upload in the event-dedup table (``EVENT_DEDUP_TABLE_NAME``) exactly as the worker does: one claim
   for the upload and one for this delivery. A second delivery of the upload loses the first and wins the
   second: it stops there. The same delivery retried (the Job's pod failed) wins neither and goes on;
3. find the experiment (created on first use) in the namespace; multi-user KFP rejects a run without one;
4. look for a run of the job (named ``stereo-spot-<job id>``) in the experiment that is not over badly (a retried
   pod may have created it before it died) and only then create the run from the uploaded pipeline's id.

Restart after failure: a failed job is not a finished one. When the video is uploaded again, or
``stereo-spot reconcile`` re-drives the job (each with a sequencer of its own, so the claim is new), a run that
failed, was cancelled or skipped (``ENDED_BADLY``) or was deleted does not count, and a new run starts; it
resumes the job, as the chunk step reopens it and the steps skip the segments already converted. A completed or
deleted job starts nothing (``steps.FINAL_STATUSES``).

Authentication: a bearer token read from ``KF_PIPELINES_SA_TOKEN_PATH`` (default
``/var/run/secrets/kubeflow/pipelines/token``) on every request, which is where the Job mounts a projected
service-account token with the audience ``pipelines.kubeflow.org``; the kubelet rotates that file, so it is
never cached. No file (standalone KFP): no header. ``KFP_TOKEN`` overrides it for manual runs.

Exit status: 0 when the run exists (started now or before) or the event starts nothing (not an upload, a
duplicate, a completed or deleted job); 2 when retrying cannot help (no pipeline id, the API refused the request); 1 for
what a retry can fix (KFP or DynamoDB unreachable, a 5xx), so the Job's backoff retries it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from stereo_spot import keys, steps
from stereo_spot.adapters.argo_runs import job_run_prefix
from stereo_spot.adapters.httpjson import ApiError, ApiUnreachable, Endpoint
from stereo_spot.cluster.worker import MalformedEvent, event_id, parse_event
from stereo_spot.errors import UserError, one_line
from stereo_spot.models import ObjectCreated
from stereo_spot.ports import Backend

log = logging.getLogger(__name__)

DEFAULT_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
DEFAULT_EXPERIMENT = "stereo-spot"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # kfp.Client's KF_PIPELINES_SA_TOKEN_PATH
TOKEN_AUDIENCE = "pipelines.kubeflow.org"  # what KFP's TokenReview expects of a projected token
# Run states (KFP v2beta1 RuntimeState: backend/api/v2beta1/run.proto; kfp_server_api V2beta1RuntimeState) in
# which a run will convert nothing more for its job. CANCELING is on its way to CANCELED: the steps are
# idempotent and concat takes a lock, so a new run beside its last moments is safe. PENDING, RUNNING, PAUSED,
# SUCCEEDED and an unspecified state count as the job's run.
ENDED_BADLY = frozenset({"FAILED", "CANCELED", "CANCELING", "SKIPPED"})


class TriggerConfigError(UserError):
    """The trigger is set up wrong (no pipeline id, no namespace on multi-user KFP, a refused token)."""


class KfpUnavailable(RuntimeError):
    """KFP did not answer or answered 5xx: the Job's retry may help."""


class Outcome(StrEnum):
    STARTED = "started"  # a run was created now
    EXISTS = "exists"  # the run was created by an earlier try of this delivery
    DUPLICATE = "duplicate"  # another delivery of the upload owns the run
    IGNORED = "ignored"  # not an upload that starts a run


@dataclass(frozen=True)
class TriggerResult:
    outcome: Outcome
    reason: str
    job_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class KfpSettings:
    host: str = DEFAULT_HOST
    pipeline_id: str = ""
    pipeline_version_id: str | None = None  # None: the pipeline's latest version
    experiment: str = DEFAULT_EXPERIMENT
    namespace: str | None = None  # the profile namespace on multi-user KFP
    service_account: str | None = None  # the run's service account (default: the namespace's pipeline runner)
    token_path: str = DEFAULT_TOKEN_PATH
    token: str | None = None  # a static token for manual use; the projected token file otherwise
    verify_ssl: bool = True

    @classmethod
    def from_environment(cls, **overrides: str | None) -> KfpSettings:
        from stereo_spot.config import get_settings

        env = get_settings()
        values = dict(host=env.kfp_host or DEFAULT_HOST, pipeline_id=env.kfp_pipeline_id or "",
                      pipeline_version_id=env.kfp_pipeline_version_id,
                      experiment=env.kfp_experiment or DEFAULT_EXPERIMENT, namespace=env.kfp_namespace,
                      service_account=env.kfp_run_service_account,
                      token_path=env.kf_pipelines_sa_token_path or DEFAULT_TOKEN_PATH, token=env.kfp_token)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _filter_by_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": name}]})


class KfpApi:
    """The few calls of the KFP v2beta1 REST API the trigger needs. The token is read for every request."""

    def __init__(self, settings: KfpSettings, token_source: Callable[[], str | None] | None = None):
        self.settings = settings
        self._token_source = token_source or self._read_token
        self._multi_user: bool | None = None

    def _read_token(self) -> str | None:
        if self.settings.token:
            return self.settings.token
        try:
            with open(self.settings.token_path, encoding="utf-8") as handle:
                return handle.read().strip() or None
        except FileNotFoundError:
            return None  # standalone KFP: no token is mounted and none is needed
        except OSError as exc:
            raise TriggerConfigError(f"cannot read the KFP token {self.settings.token_path}: {exc}") from exc

    def _call(self, method: str, path: str, body: dict | None = None, **params: str | None) -> dict:
        endpoint = Endpoint(self.settings.host, token=self._token_source(), verify=self.settings.verify_ssl)
        try:
            return endpoint.request(method, f"/apis/v2beta1/{path}", params=params, body=body)
        except ApiUnreachable as exc:
            raise KfpUnavailable(f"Kubeflow Pipelines at {self.settings.host} did not answer: {exc}") from exc
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (408, 429):
                raise KfpUnavailable(f"Kubeflow Pipelines failed ({exc})") from exc
            hint = {401: "the token was refused: is the projected token's audience pipelines.kubeflow.org?",
                    403: f"the trigger's service account may not use the namespace {self.settings.namespace}: "
                         "bind it to kubeflow-pipelines-edit there",
                    404: f"is the pipeline id {self.settings.pipeline_id!r} right?"}.get(exc.status, "")
            raise TriggerConfigError(f"Kubeflow Pipelines refused {method} {path}: {exc.message} (HTTP "
                                     f"{exc.status}){'; ' + hint if hint else ''}") from exc

    def multi_user(self) -> bool:
        if self._multi_user is None:
            self._multi_user = bool(self._call("GET", "healthz").get("multi_user"))
        return self._multi_user

    def _namespace(self) -> str | None:
        """The namespace to send: required by multi-user KFP, ignored (so not sent) by standalone KFP."""
        if not self.multi_user():
            return None
        if not self.settings.namespace:
            raise TriggerConfigError("Kubeflow Pipelines is multi-user: set KFP_NAMESPACE to the profile "
                                     "namespace the runs belong to")
        return self.settings.namespace

    def experiment_id(self) -> str:
        """The experiment's id, creating the experiment the first time."""
        namespace = self._namespace()
        name = self.settings.experiment
        found = self._call("GET", "experiments", namespace=namespace, filter=_filter_by_name(name))
        for experiment in found.get("experiments") or []:
            if experiment.get("display_name") == name:
                return experiment["experiment_id"]
        body = {"display_name": name, "description": "stereo-spot conversions started by uploads"}
        if namespace:
            body["namespace"] = namespace
        log.info("creating the Kubeflow experiment %s%s", name, f" in {namespace}" if namespace else "")
        return self._call("POST", "experiments", body)["experiment_id"]

    def find_run(self, experiment_id: str, name: str) -> str | None:
        """The id of a run named ``name`` that still stands for the job: not one that ended badly (a deleted run
        is not listed at all)."""
        found = self._call("GET", "runs", experiment_id=experiment_id, namespace=self._namespace(),
                           filter=_filter_by_name(name))
        for run in found.get("runs") or []:
            if run.get("display_name") == name and run.get("state") not in ENDED_BADLY:
                return run["run_id"]
        return None

    def create_run(self, experiment_id: str, name: str, parameters: dict[str, str]) -> str:
        if not self.settings.pipeline_id:
            raise TriggerConfigError("no pipeline id: upload manifests/generated/kfp-pipeline.yaml to Kubeflow "
                                     "Pipelines and set KFP_PIPELINE_ID (the overlay's kfp-trigger settings)")
        reference = {"pipeline_id": self.settings.pipeline_id}
        if self.settings.pipeline_version_id:
            reference["pipeline_version_id"] = self.settings.pipeline_version_id
        body = {"display_name": name, "experiment_id": experiment_id, "pipeline_version_reference": reference,
                "runtime_config": {"parameters": parameters}}
        if self.settings.service_account:
            body["service_account"] = self.settings.service_account
        return self._call("POST", "runs", body)["run_id"]


def _claim(backend: Backend, obj: ObjectCreated, job_id: str, delivery_id: str) -> bool:
    """The worker's rule (worker.Worker._claim): the delivery's own claim first, so a pod that dies between the
    two writes is retried and goes on instead of being taken for a duplicate."""
    if backend.dedup is None:
        log.warning("no event dedup table: a duplicate delivery would start a second run")
        return True
    upload = event_id(obj)
    new_delivery = backend.dedup.claim(f"{upload}|delivery={delivery_id}", job_id)
    first_delivery = backend.dedup.claim(upload, job_id)
    return first_delivery or not new_delivery


def trigger_upload(backend: Backend, api: KfpApi, obj: ObjectCreated, delivery_id: str) -> TriggerResult:
    if obj.bucket != backend.input_bucket:
        return TriggerResult(Outcome.IGNORED, f"event for bucket {obj.bucket}, not {backend.input_bucket}")
    try:
        job_id = keys.parse_input_key(obj.key)
    except keys.InvalidKey as exc:
        return TriggerResult(Outcome.IGNORED, one_line(exc))
    job = backend.jobs.get(job_id)
    if job is not None and job.status in steps.FINAL_STATUSES:
        return TriggerResult(Outcome.IGNORED, f"job {job_id} is {job.status.value} already", job_id)
    # An upload without a job record goes on: the pipeline's chunk step applies the project's one policy for it.
    if not _claim(backend, obj, job_id, delivery_id):
        return TriggerResult(Outcome.DUPLICATE, f"duplicate delivery of {event_id(obj)}: another delivery "
                                                "started the run", job_id)
    name = job_run_prefix(job_id)
    experiment_id = api.experiment_id()
    existing = api.find_run(experiment_id, name)
    if existing:
        return TriggerResult(Outcome.EXISTS, f"run {name} exists already ({existing})", job_id, existing)
    run_id = api.create_run(experiment_id, name, {"bucket": obj.bucket, "key": obj.key})
    return TriggerResult(Outcome.STARTED, f"started run {name} ({run_id})", job_id, run_id)


def trigger(backend: Backend, api: KfpApi, body: str, delivery_id: str) -> list[TriggerResult]:
    """Handle one event as the Sensor passes it: the S3 notification (the SQS message body)."""
    if not delivery_id.strip():
        raise TriggerConfigError("no delivery id: the Sensor passes the event's id (--delivery-id)")
    try:
        records = parse_event(body)
    except MalformedEvent as exc:
        return [TriggerResult(Outcome.IGNORED, f"malformed event: {exc}")]
    if not records:
        return [TriggerResult(Outcome.IGNORED, "an S3 test event or no object-created record")]
    results = []
    for obj in records:
        result = trigger_upload(backend, api, obj, delivery_id)
        log.info("%s", result.reason, extra={"job_id": result.job_id, "outcome": result.outcome.value})
        results.append(result)
    return results
