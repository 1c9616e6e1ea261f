"""fail, for the engines' exit handlers: a run that did not succeed marks its job failed with a readable reason.

Argo calls ``fail`` from the WorkflowTemplate's ``onExit`` handler with ``{{workflow.status}}`` and
``{{workflow.failures}}`` (a JSON list of the failed nodes: displayName, message, templateName, phase, podName,
finishedAt); Kubeflow runs the container component from ``kfp_component`` (``stereo-spot step fail``) as the
``dsl.ExitHandler`` task with the pipeline's final status. A step that failed on bad input has already recorded
its precise reason: that one is kept. A completed job stays completed (a late failure of a duplicate run must not
hide a finished video).
"""

import json
import logging
from typing import Annotated, Any

from hera.workflows import Parameter

from stereo_spot.components._common import build_backend, configure_logging, mark_failed, step_command
from stereo_spot.errors import one_line
from stereo_spot.keys import InvalidKey, job_id_from_event_key

log = logging.getLogger("stereo_spot.components.fail")

# Node messages that only say "a child failed": the child's own message is the useful one.
_AGGREGATE_MESSAGES = ("child ", "No more retries left", "omitted:", "Stopped with strategy")


def fail(
    key: Annotated[str, Parameter(description="input/<job id>/source.mp4, URL-encoded as in S3 events or not")],
    status: Annotated[str, Parameter(description="the workflow's status: Succeeded, Failed or Error")] = "Failed",
    failures: Annotated[str, Parameter(description="Argo's workflow.failures: JSON list of the failed nodes")] = "",
    workflow_name: Annotated[str, Parameter(description="the workflow, named in a reason without a step's")] = "",
) -> None:
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
        job_id = job_id_from_event_key(key)
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


def fail_kfp_status(key: str, status: str) -> None:
    """``fail_kfp`` from the final status as a container component receives it: the JSON of
    ``PipelineTaskFinalStatus`` (``state``, ``error.message``, the run's resource name; the backend spells the
    names in camelCase, kfp.local in snake_case)."""
    try:
        value = json.loads(status) if status.strip() else {}
    except json.JSONDecodeError:
        value = {"state": status}
    if not isinstance(value, dict):
        value = {"state": str(value)}
    error = value.get("error") if isinstance(value.get("error"), dict) else {}
    run_name = value.get("pipelineJobResourceName") or value.get("pipeline_job_resource_name") or ""
    fail_kfp(key, str(value.get("state") or "UNKNOWN"), str(error.get("message") or ""), str(run_name))


def kfp_component(image: str):
    """The Kubeflow exit task, a container component (``stereo-spot step fail``) given the pipeline's final
    status as JSON."""
    from kfp import dsl

    @dsl.container_component
    def fail(key: str, status: dsl.PipelineTaskFinalStatus):
        return dsl.ContainerSpec(image=image, command=step_command("fail"), args=["--key", key,
                                                                                      "--status", status])

    return fail


def argo_template(**options: Any):
    from hera.workflows import Script

    return Script(name="fail", source=fail, **options)
