"""What every engine component shares: the backend from the environment, logs on stderr, and how a failed step
leaves its container.

A step's container ends in one of three ways:

* exit 0 — done; the only thing on stdout is the step's small JSON result (Argo reads it as ``outputs.result``,
  so everything else, our logs and any library's prints, is sent to stderr while the step runs);
* exit 2 — the input or the job's state is wrong (a user error): the job is marked failed with the reason at
  once, and Argo's retry expression skips retrying, because a retry cannot help;
* exit 1 — anything else (a store that did not answer, a lost node, a bug): the engine retries.

Either way the one-line reason goes to the container's termination message, which Argo shows as the node's
message and hands to the exit handler in ``workflow.failures``.
"""

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

from stereo_spot import keys, steps
from stereo_spot.errors import is_user_error, one_line
from stereo_spot.logs import log_context
from stereo_spot.models import Job, JobStatus
from stereo_spot.ports import Backend

log = logging.getLogger("stereo_spot.components")

EXIT_FAILURE = 1
EXIT_USER_ERROR = 2

# Kubernetes mounts this file in every container; its content becomes the container's termination message.
TERMINATION_LOG_ENV = "STEREO_SPOT_TERMINATION_LOG"  # ReportingSettings.stereo_spot_termination_log

T = TypeVar("T")

# The image's own console entry point (pyproject's [project.scripts]) that runs one step for Kubeflow's container
# components: `stereo-spot step <name> ...` (components/cli.py). The step image needs no kfp inside.
STEP_ENTRYPOINT = ("stereo-spot", "step")


def step_command(step: str) -> list[str]:
    return [*STEP_ENTRYPOINT, step]


def write_output(path: str, value: object) -> None:
    """A step's result into the file an engine reads it from (Kubeflow's ``OutputPath``): JSON, as the KFP
    launcher parses a list or a number output; a string as it is. The folder may not exist yet."""
    import json
    from pathlib import Path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")


class StepFailed(SystemExit):
    """Ends the component process with the exit code that tells the engine whether to retry."""

    def __init__(self, reason: str, user_error: bool):
        super().__init__(EXIT_USER_ERROR if user_error else EXIT_FAILURE)
        self.reason = reason
        self.user_error = user_error


def configure_logging() -> None:
    """One JSON line per event on stderr, with the step and job id (stereo_spot.logs)."""
    from stereo_spot.logs import configure_logging as configure

    configure()


def build_backend() -> Backend:
    from stereo_spot.adapters import build_backend as from_environment

    return from_environment()


def write_termination_message(reason: str) -> None:
    """Only into a file that exists: outside Kubernetes there is none, and a test names its own."""
    from stereo_spot.config import reporting_settings

    path = str(reporting_settings().stereo_spot_termination_log)
    if not os.path.isfile(path):
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(reason[:4000])  # Kubernetes keeps at most 4096 bytes
    except OSError:
        log.warning("could not write the termination message to %s", path)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr while a step runs (native libraries write to it directly too), so stdout
    carries nothing but the result printed afterwards."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_step(step: str, key: str, action: Callable[[Backend, str], T], *, segment: int | None = None) -> T:
    """Run one step for the job named by ``key`` and turn any failure into a readable exit. Every log line of
    the step carries the step, the job id and (for convert) the segment."""
    configure_logging()
    backend: Backend | None = None
    job_id: str | None = None
    try:
        with stdout_to_stderr(), log_context(step=step, segment=segment):
            job_id = keys.job_id_from_event_key(key)
            with log_context(job_id=job_id):
                backend = build_backend()
                return action(backend, job_id)
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure leaves as one line and an exit code
        user_error = is_user_error(exc)
        reason = f"{step}: {one_line(exc)}"
        if user_error:
            log.error("%s", reason, extra={"step": step, "job_id": job_id, "segment": segment})
            if backend is not None and job_id is not None:
                _record_failure(backend, job_id, reason)
        else:
            log.error("%s\n%s", reason, traceback.format_exc(),
                      extra={"step": step, "job_id": job_id, "segment": segment})
        write_termination_message(reason)
        raise StepFailed(reason, user_error) from exc


def _record_failure(backend: Backend, job_id: str, reason: str) -> None:
    try:
        steps.fail(backend, job_id, reason)
    except Exception as exc:  # noqa: BLE001 - the exit handler records it later; the step's own error wins
        log.warning("could not mark job %s failed: %s", job_id, one_line(exc))


def mark_failed(backend: Backend, job_id: str, reason: str) -> Job | None:
    """The exit handlers' write: a job a step already failed keeps that step's precise reason, and a completed
    job stays completed (``steps.fail`` guards that)."""
    job = backend.jobs.get(job_id)
    if job is None:
        return None
    if job.status == JobStatus.FAILED and job.failure_reason:
        return job
    return steps.fail(backend, job_id, reason)
