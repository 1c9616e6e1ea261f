"""Starting a job's pipeline after its source is stored.

    local storage                  the embedded runner, in a detached process (survives a closed page)
    AWS, UI_SUBMIT_ENGINE=none     nothing: the S3 ObjectCreated event starts the Argo workflow
    AWS, UI_SUBMIT_ENGINE=argo|kfp the app submits the run itself through ``stereo_spot.pipelines.submit.submit_run``

The pipelines package is imported only here and only when configured, so the app runs without Hera or kfp.
"""

from __future__ import annotations

from dataclasses import dataclass

from stereo_spot import keys, steps
from stereo_spot.config import Settings
from stereo_spot.errors import UserError, one_line
from stereo_spot.ports import Backend


class SubmissionError(UserError):
    pass


@dataclass(frozen=True)
class Started:
    how: str  # one line for the page
    run_link: str | None = None
    pid: int | None = None


def preflight(backend: Backend, settings: Settings) -> None:
    """Fail before any job is created when the configured way of starting runs cannot work."""
    if backend.name != "local" and settings.ui_submit_engine != "none":
        _submitter(settings.ui_submit_engine)


def _submitter(engine: str):
    name = _ENGINE_NAMES.get(engine, engine)
    try:
        from stereo_spot.pipelines.submit import submit_run
    except ImportError as exc:
        raise SubmissionError(
            f"UI_SUBMIT_ENGINE={engine} asks the app to submit to {name}, but "
            f"stereo_spot.pipelines.submit.submit_run is not available ({one_line(exc)}); install "
            "stereo-spot[pipelines] or set UI_SUBMIT_ENGINE=none to let the storage event start runs") from exc
    return submit_run


_ENGINE_NAMES = {"argo": "Argo Workflows", "kfp": "Kubeflow Pipelines"}


def start_pipeline(backend: Backend, settings: Settings, job_id: str) -> Started:
    if backend.name == "local":
        from stereo_spot.ui import local_queue

        home = settings.stereo_spot_home
        if job_id in local_queue.dispatch_once(backend, home, settings.max_concurrent_jobs):
            return Started("Converting on this machine; it keeps going if you close this page.")
        local_queue.ensure_dispatcher(home)  # starts it when a slot frees up, page open or not
        return Started(f"Queued: {settings.max_concurrent_jobs} conversion(s) run at once on this machine "
                       "(MAX_CONCURRENT_JOBS); it starts by itself when one finishes.")
    engine = settings.ui_submit_engine
    if engine == "none":
        return Started("Uploaded: the storage event starts the conversion on the cluster.")
    return _submit(backend, engine, job_id)


def _submit(backend: Backend, engine: str, job_id: str) -> Started:
    name = _ENGINE_NAMES.get(engine, engine)
    try:
        submit_run = _submitter(engine)
        link = submit_run(engine=engine, bucket=backend.input_bucket, key=keys.input_key(job_id))
    except Exception as exc:  # noqa: BLE001 - any failure to submit is recorded on the job, in one line
        reason = str(exc) if isinstance(exc, SubmissionError) else \
            f"could not submit the run to {name}: {one_line(exc)}"
        steps.fail(backend, job_id, reason)
        raise SubmissionError(reason) from exc
    return Started(f"Submitted to {name}.", run_link=link if isinstance(link, str) else None)


def stop_run(backend: Backend, settings: Settings, job_id: str) -> str | None:
    """Stop the running work of a job that is being deleted, so nothing more is computed or written. Local
    storage: the background runner. AWS with ARGO_SERVER_URL: the job's unfinished Argo workflows, found by the
    job label (a job may have had several runs, each named after the delivery that started it), through the
    Argo server's stop API. Returns a one-line warning when the run could not be stopped (the delete goes on:
    every step checks for a deleted job after it writes, so a run that was not stopped removes what it writes
    and ends)."""
    if backend.name == "local":
        stop_local_runner(job_id)
        return None
    if not settings.argo_server_url:
        return None
    return stop_argo_workflows(settings, job_id)


def stop_argo_workflows(settings: Settings, job_id: str, timeout: float = 15.0) -> str | None:
    from stereo_spot.adapters import argo_runs

    try:
        api = argo_runs.endpoint(settings, timeout=timeout)
        argo_runs.stop_job_runs(api, settings.argo_namespace, job_id)
    except argo_runs.ApiError as exc:
        return f"the workflows of job {job_id} could not be stopped (Argo server answered {exc.status}: " \
               f"{one_line(exc.message)})"
    except (argo_runs.ApiUnreachable, ValueError) as exc:
        return f"the workflows of job {job_id} could not be stopped: {one_line(exc)}"
    return None


def stop_local_runner(job_id: str) -> int:
    """Stop the background runner converting this job on this machine (before deleting it, so no segment is
    written after its files are removed). Returns how many runners were signalled."""
    from stereo_spot.config import get_settings
    from stereo_spot.runner import stop_background

    keys.validate_job_id(job_id)
    return int(stop_background(job_id, get_settings().stereo_spot_home))
