"""concat, for the engines: join the converted segments into ``jobs/{job_id}/final.mp4`` with the source's audio.

Argo runs ``python -m hera.workflows.runner -e stereo_spot.components.concat:concat <inputs>`` after every convert
item has succeeded; Kubeflow runs the container component from ``kfp_component`` (``stereo-spot step concat``) on the
``dsl.Collected`` convert outputs (the segment count of each shard). Both then write the run's outputs (the comfort
report and a preview still, components/run_outputs.py): Argo to ``ARGO_OUTPUTS_DIR``, Kubeflow to its Markdown
and HTML output artifacts.
"""

from typing import Annotated, Any

from hera.workflows import Parameter

from stereo_spot import keys, steps
from stereo_spot.components._common import run_step, step_command
from stereo_spot.components.run_outputs import ARGO_OUTPUTS_DIR, write_run_outputs
from stereo_spot.errors import StepError
from stereo_spot.models import JobStatus
from stereo_spot.ports import Backend


class ReassemblyBusy(RuntimeError):
    """Another run holds the job's reassembly lock: not a user error, so the engine retries later."""


def concat(
    key: Annotated[str, Parameter(description="input/<job id>/source.mp4, URL-encoded as in S3 events or not")],
    converted: Annotated[int, Parameter(description="segments the engine saw converted; -1: not counted")] = -1,
) -> str:
    """Assemble the job whose source is ``key``; returns the final video's key. ``converted`` (the number of
    segments the engine saw converted, -1 when it does not count) must match the job's segment count. The run's
    outputs go to ``ARGO_OUTPUTS_DIR`` (declared as output artifacts where Argo has a repository)."""
    return assemble(key, converted, ARGO_OUTPUTS_DIR)


def assemble(key: str, converted: int, outputs_dir: str) -> str:
    """concat's work, and the run's outputs written to ``outputs_dir`` once the job is complete."""

    def action(backend: Backend, job_id: str) -> str:
        total = steps.require_job(backend, job_id).total_segments or 0
        if converted >= 0 and converted != total:
            raise StepError(f"job {job_id} has {total} segments but {converted} were converted")
        job = steps.concat(backend, job_id)
        if job.status != JobStatus.COMPLETED:
            raise ReassemblyBusy(f"job {job_id} is being assembled by another run")
        write_run_outputs(backend, job_id, outputs_dir)
        return keys.final_key(job_id)

    return run_step("concat", key, action)


def kfp_component(image: str):
    """The Kubeflow container component (``stereo-spot step concat``): ``converted`` is the list of the convert
    tasks' segment counts (``dsl.Collected``), passed as JSON; the final video's key goes to the output file, the
    comfort report to a Markdown artifact and the report with a preview still to an HTML one (the KFP UI shows
    both as visualisations)."""
    from kfp import dsl

    @dsl.container_component
    def concat(key: str, converted: list[int], final_key: dsl.OutputPath(str), report: dsl.Output[dsl.Markdown],
               preview: dsl.Output[dsl.HTML]):
        return dsl.ContainerSpec(image=image, command=step_command("concat"), args=[
            "--key", key, "--converted", converted, "--final-key-path", final_key,
            "--report-path", report.path, "--preview-path", preview.path])

    return concat


def argo_template(**options: Any):
    from hera.workflows import Script

    return Script(name="concat", source=concat, **options)
