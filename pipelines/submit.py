"""Start one run of the pipeline for an uploaded source: Argo through Hera's WorkflowsService (the Argo Server
API), Kubeflow through ``kfp.Client`` (the KFP API). Used by ``stereo-spot submit``, CI and the UI.

    Argo     ARGO_SERVER_URL (https://argo.example.com), ARGO_TOKEN, ARGO_NAMESPACE (default stereo-spot),
             ARGO_UI_URL for the printed link (default: the server URL)
    Kubeflow KFP_HOST (https://kubeflow.example.com/pipeline), KFP_TOKEN, KFP_NAMESPACE (multi-user profiles),
             KFP_UI_URL for the printed link (default: the host)

An Argo run is named ``stereo-spot-{job_id}-{token}`` and labelled with the job id (stereo_spot.adapters.argo_runs):
a job may have older runs that failed or were stopped, and a new run resumes it. A job whose run is still pending or
running is refused (found by the label), so it is not converted twice; two submits racing past that check still run
one after the other, under the WorkflowTemplate's per-job mutex. ARGO_CA_FILE or ARGO_INSECURE_SKIP_VERIFY say how
to trust the server's certificate (argo_runs.tls_verify).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stereo_spot import keys
from stereo_spot.adapters import argo_runs
from stereo_spot.config import get_settings
from stereo_spot.errors import UserError, one_line
from stereo_spot.pipelines.config import PIPELINE_NAME, PipelineConfig, template_name

DEFAULT_NAMESPACE = "stereo-spot"  # where manifests/ deploys the WorkflowTemplate
DEFAULT_EXPERIMENT = "stereo-spot"
ENGINES = ("argo", "kfp")


class SubmitError(UserError):
    """The run could not be started; the message says why and what to set."""


@dataclass(frozen=True)
class SubmittedRun:
    engine: str
    run_id: str  # the Workflow's name (Argo) or the run id (Kubeflow)
    link: str


def _parameters(bucket: str, key: str, output_format: str | None, divergence: float | None,
                convergence: float | None, gpu_workers: int | None = None, *, engine: str = "argo",
                baseline_mm: float | None = None, hfov: float | None = None, depth_video: str | None = None) -> dict:
    parameters: dict = {"bucket": bucket, "key": key}
    for name, value in (("format", output_format), ("divergence", divergence), ("convergence", convergence),
                        ("baseline-mm" if engine == "argo" else "baseline_mm", baseline_mm), ("hfov", hfov)):
        if value is not None and str(value) != "":
            parameters[name] = str(value)
    if depth_video:  # the depth video's key: checked by the chunk step (components.chunk.depth_video_override)
        parameters["depth-video" if engine == "argo" else "depth_video"] = depth_video
    if gpu_workers is not None:  # Argo's parameter names may hold '-', kfp's are Python identifiers (and typed)
        parameters.update({"gpu-workers": str(gpu_workers)} if engine == "argo" else {"gpu_workers": gpu_workers})
    return parameters


def _default_bucket() -> str:
    return get_settings().input_bucket_name


def submit_run(engine: str, bucket: str | None, key: str, *, host: str | None = None, token: str | None = None,
               namespace: str | None = None, output_format: str | None = None, divergence: float | None = None,
               convergence: float | None = None, verify_ssl: bool = True, config: PipelineConfig | None = None,
               experiment: str | None = None, gpu_workers: int | None = None, baseline_mm: float | None = None,
               hfov: float | None = None, depth_video: str | None = None) -> str:
    """Start a run and return its link in the engine's UI."""
    return submit(engine, bucket, key, host=host, token=token, namespace=namespace, output_format=output_format,
                  divergence=divergence, convergence=convergence, verify_ssl=verify_ssl, config=config,
                  experiment=experiment, gpu_workers=gpu_workers, baseline_mm=baseline_mm, hfov=hfov,
                  depth_video=depth_video).link


def submit(engine: str, bucket: str | None, key: str, **options) -> SubmittedRun:
    try:
        job_id = keys.job_id_from_event_key(key)
    except ValueError as exc:
        raise SubmitError(one_line(exc)) from exc
    bucket = bucket or _default_bucket()
    if engine == "argo":
        return submit_argo(job_id, bucket, key, **options)
    if engine == "kfp":
        return submit_kfp(job_id, bucket, key, **options)
    raise SubmitError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")


def _check_host(host: str | None, env_name: str, what: str) -> str:
    if not host:
        raise SubmitError(f"no {what} address: pass --host or set {env_name}")
    if not host.startswith(("http://", "https://")):
        raise SubmitError(f"the {what} address {host!r} needs a scheme: http://… or https://…")
    return host.rstrip("/")


def submit_argo(job_id: str, bucket: str, key: str, *, host: str | None = None, token: str | None = None,
                namespace: str | None = None, output_format: str | None = None, divergence: float | None = None,
                convergence: float | None = None, verify_ssl: bool = True, config: PipelineConfig | None = None,
                experiment: str | None = None, gpu_workers: int | None = None, baseline_mm: float | None = None,
                hfov: float | None = None, depth_video: str | None = None) -> SubmittedRun:
    import requests
    from hera.exceptions import AlreadyExists, Forbidden, HeraException, NotFound, Unauthorized
    from hera.workflows import Workflow, WorkflowsService
    from hera.workflows.models import WorkflowTemplateRef

    env = get_settings()
    host = _check_host(host or env.argo_server_url, "ARGO_SERVER_URL", "Argo server")
    token = token or argo_runs.bearer_token(env)
    namespace = namespace or env.argo_namespace or DEFAULT_NAMESPACE
    ui = (env.argo_ui_url or host).rstrip("/")
    try:
        api = argo_runs.endpoint(env, host, token, insecure=not verify_ssl)
    except ValueError as exc:
        raise SubmitError(one_line(exc)) from exc
    _refuse_a_second_run(api, namespace, job_id, host, ui)
    name = argo_runs.new_run_name(job_id)
    service = WorkflowsService(host=host, token=token, namespace=namespace, verify_ssl=argo_runs.requests_verify(api))
    workflow = Workflow(name=name, namespace=namespace, workflows_service=service,
                        labels={"app.kubernetes.io/name": "stereo-spot", argo_runs.JOB_LABEL: job_id},
                        workflow_template_ref=WorkflowTemplateRef(name=template_name()),
                        arguments=_parameters(bucket, key, output_format, divergence, convergence, gpu_workers,
                                              baseline_mm=baseline_mm, hfov=hfov, depth_video=depth_video))
    try:
        created = workflow.create()
    except requests.exceptions.RequestException as exc:
        raise SubmitError(f"cannot reach the Argo server at {host}: {one_line(exc)}; check --host/ARGO_SERVER_URL "
                          "(e.g. kubectl -n argo port-forward svc/argo-server 2746:2746)") from exc
    except AlreadyExists as exc:  # a name of its own each time: only a retried request meets its own run
        raise SubmitError(f"job {job_id} already has the run {name}: {ui}/workflows/{namespace}/{name}") from exc
    except (Unauthorized, Forbidden) as exc:
        raise SubmitError(f"the Argo server refused the request ({type(exc).__name__}): pass --token or set "
                          "ARGO_TOKEN to a token allowed to create workflows in " + namespace) from exc
    except NotFound as exc:
        raise SubmitError(f"the Argo server at {host} answered 404: is the namespace {namespace} right and the "
                          f"WorkflowTemplate {template_name()} applied? ({one_line(exc)})") from exc
    except HeraException as exc:
        raise SubmitError(f"the Argo server did not create the run: {one_line(exc)}") from exc
    name = created.metadata.name or name
    return SubmittedRun("argo", name, f"{ui}/workflows/{namespace}/{name}")


def _refuse_a_second_run(api, namespace: str, job_id: str, host: str, ui: str) -> None:
    """A job whose run is pending or running gets no second one; finished runs (failed, stopped, succeeded)
    do not count: the new run resumes the job where they left it."""
    try:
        running = [run for run in argo_runs.job_runs(api, namespace, job_id) if not run.finished]
    except argo_runs.ApiUnreachable as exc:
        raise SubmitError(f"cannot reach the Argo server at {host}: {one_line(exc)}; check --host/ARGO_SERVER_URL "
                          "(e.g. kubectl -n argo port-forward svc/argo-server 2746:2746)") from exc
    except argo_runs.ApiError as exc:
        if exc.status in (401, 403):
            raise SubmitError(f"the Argo server refused to list workflows (HTTP {exc.status}): pass --token or set "
                              f"ARGO_TOKEN to a token allowed to list and create workflows in {namespace}") from exc
        raise SubmitError(f"the Argo server could not list the job's runs: {one_line(exc)}") from exc
    if running:
        run = running[0]
        raise SubmitError(f"job {job_id} already has a run in progress ({run.phase or 'Pending'}): "
                          f"{ui}/workflows/{namespace}/{run.name}; stop it first, or let it finish")


def submit_kfp(job_id: str, bucket: str, key: str, *, host: str | None = None, token: str | None = None,
               namespace: str | None = None, output_format: str | None = None, divergence: float | None = None,
               convergence: float | None = None, verify_ssl: bool = True, config: PipelineConfig | None = None,
               experiment: str | None = None, gpu_workers: int | None = None, baseline_mm: float | None = None,
               hfov: float | None = None, depth_video: str | None = None) -> SubmittedRun:
    import requests

    from stereo_spot.pipelines.kfp import compile_pipeline

    env = get_settings()
    host = _check_host(host or env.kfp_host, "KFP_HOST", "Kubeflow Pipelines")
    token = token or env.kfp_token
    namespace = namespace or env.kfp_namespace
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:  # one quick look first: kfp.Client retries an unreachable host for a long time before it says so
        requests.get(f"{host}/apis/v2beta1/healthz", headers=headers, timeout=15, verify=verify_ssl)
    except requests.exceptions.RequestException as exc:
        raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {one_line(exc)}; check --host/KFP_HOST "
                          "(e.g. kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80)") from exc
    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException

    with tempfile.TemporaryDirectory(prefix="stereo-spot-submit-") as tmp, \
            contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own "Run details" line
        package = Path(tmp) / "pipeline.yaml"
        compile_pipeline(package, config)
        try:
            client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow",
                                verify_ssl=verify_ssl)
            result = client.create_run_from_pipeline_package(
                str(package), arguments=_parameters(bucket, key, output_format, divergence, convergence, gpu_workers,
                                                    engine="kfp", baseline_mm=baseline_mm, hfov=hfov,
                                                    depth_video=depth_video),
                run_name=f"{PIPELINE_NAME}-{job_id}", experiment_name=experiment or DEFAULT_EXPERIMENT,
                namespace=namespace, enable_caching=False)
        except ApiException as exc:
            raise SubmitError(f"Kubeflow Pipelines did not create the run (HTTP {exc.status}): "
                              f"{one_line(exc.body or exc.reason or exc)}") from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {one_line(exc)}") from exc
    run_id = result.run_id
    return SubmittedRun("kfp", run_id, f"{(env.kfp_ui_url or host).rstrip('/')}/#/runs/details/{run_id}")
