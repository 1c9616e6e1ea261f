"""concat, for the engines: join the converted segments into ``jobs/{job_id}/final.mp4`` with the source's audio.

Argo runs ``python -m hera.workflows.runner -e stereo_spot.components.concat:concat <inputs>`` after every convert
item has succeeded; Kubeflow runs the component from ``kfp_component`` on the ``dsl.Collected`` convert outputs (the
segment count of each shard).
"""

from typing import Any

from stereo_spot import keys, steps
from stereo_spot.components._common import run_step
from stereo_spot.errors import StepError
from stereo_spot.models import JobStatus
from stereo_spot.ports import Backend


class ReassemblyBusy(RuntimeError):
    """Another run holds the job's reassembly lock: not a user error, so the engine retries later."""


def concat(key: str, converted: int = -1) -> str:
    """Assemble the job whose source is ``key``; returns the final video's key. ``converted`` (the number of
    segments the engine saw converted, -1 when it does not count) must match the job's segment count."""

    def action(backend: Backend, job_id: str) -> str:
        total = steps.require_job(backend, job_id).total_segments or 0
        if converted >= 0 and converted != total:
            raise StepError(f"job {job_id} has {total} segments but {converted} were converted")
        job = steps.concat(backend, job_id)
        if job.status != JobStatus.COMPLETED:
            raise ReassemblyBusy(f"job {job_id} is being assembled by another run")
        return keys.final_key(job_id)

    return run_step("concat", key, action)


def kfp_component(image: str):
    from kfp import dsl

    def concat(key: str, converted: list[int]) -> str:
        from stereo_spot.components.concat import concat as run

        return run(key, sum(converted))  # each convert task returns its shard's segment count

    return dsl.component(concat, base_image=image, packages_to_install=[], install_kfp_package=False)


def argo_template(**options: Any):
    from hera.workflows import RunnerScriptConstructor, Script

    return Script(name="concat", source=concat, constructor=RunnerScriptConstructor(), **options)
