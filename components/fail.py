"""fail, for the engines' exit handlers: a run that did not succeed marks its job failed with a readable reason.

Argo calls ``fail`` from the WorkflowTemplate's ``onExit`` handler with ``{{workflow.status}}`` and
``{{workflow.failures}}`` (a JSON list of the failed nodes: displayName, message, templateName, phase, podName,
finishedAt); Kubeflow calls the component from ``kfp_component`` as the ``dsl.ExitHandler`` task with the
pipeline's final status. A step that failed on bad input has already recorded its precise reason: that one is
kept. A completed job stays completed (a late failure of a duplicate run must not hide a finished video).
"""

import json
import logging
from typing import Any

from stereo_spot.components._common import build_backend, configure_logging, job_id_from_key, mark_failed
from stereo_spot.errors import one_line
from stereo_spot.keys import InvalidKey

log = logging.getLogger("stereo_spot.components.fail")

# Node messages that only say "a child failed": the child's own message is the useful one.
_AGGREGATE_MESSAGES = ("child ", "No more retries left", "omitted:", "Stopped with strategy")


def fail(key: str, status: str = "Failed", failures: str = "", workflow_name: str = "") -> None:
    """Mark the job of ``key`` failed unless the run ``status`` is ``Succeeded``."""
    configure_logging()
    if status == "Succeeded":
        return
    reason = reason_from_failures(failures, status, workflow_name)
    _mark(key, reason)


def reason_from_failures(failures: str, status: str = "Failed", workflow_name: str = "") -> str:
    """One line from Argo's ``workflow.failures``: the steps that failed and why, most recent first."""
    try:
        nodes = json.loads(failures) if failures and failures.strip() else []
    except json.JSONDecodeError:
        nodes = []
    if not isinstance(nodes, list):
        nodes = []
    seen: list[str] = []
    for node in sorted((n for n in nodes if isinstance(n, dict)), key=lambda n: str(n.get("finishedAt") or ""),
                       reverse=True):
        message = str(node.get("message") or "").strip()
        if not message or message.startswith(_AGGREGATE_MESSAGES):
            continue
        line = f"{node.get('displayName') or node.get('templateName') or 'a step'}: {message}"
        if line not in seen:
            seen.append(line)
    run = f"workflow {workflow_name}" if workflow_name else "the workflow"
    if not seen:
        return f"{run} ended {status} without a step failure (deadline exceeded or stopped)"
    return one_line("; ".join(seen[:3]))


def _mark(key: str, reason: str) -> None:
    try:
        job_id = job_id_from_key(key)
    except InvalidKey:
        log.info("%r names no job: nothing to mark failed (%s)", key, reason)
        return
    job = mark_failed(build_backend(), job_id, reason)
    if job is None:
        log.info("job %s has no record: nothing to mark failed", job_id)
    else:
        log.info("job %s is %s: %s", job_id, job.status.value, job.failure_reason or "")


# What ``PipelineTaskFinalStatus.state`` says for a run that succeeded. The KFP backend's driver passes the state
# of the exit handler's group as an execution state name — MLMD's ``COMPLETE`` (or ``CACHED``), and in the newest
# backends ``COMPLETE`` for succeeded, skipped and cached tasks — while kfp.local and Vertex pass ``SUCCEEDED``.
KFP_SUCCEEDED_STATES = frozenset({"SUCCEEDED", "COMPLETE", "CACHED"})


def fail_kfp(key: str, state: str, error_message: str = "", run_name: str = "") -> None:
    """The Kubeflow exit task's work, from ``dsl.PipelineTaskFinalStatus``."""
    configure_logging()
    if state.strip().upper() in KFP_SUCCEEDED_STATES:
        return
    detail = f": {error_message}" if error_message else ""
    _mark(key, one_line(f"the Kubeflow run {run_name or ''} ended {state.lower()}{detail}".replace("  ", " ")))


def kfp_component(image: str):
    from kfp import dsl

    def fail(key: str, status: dsl.PipelineTaskFinalStatus):
        from stereo_spot.components.fail import fail_kfp

        fail_kfp(key, status.state, status.error_message or "", status.pipeline_job_resource_name or "")

    return dsl.component(fail, base_image=image, packages_to_install=[], install_kfp_package=False)


def argo_template(**options: Any):
    from hera.workflows import RunnerScriptConstructor, Script

    return Script(name="fail", source=fail, constructor=RunnerScriptConstructor(), **options)
