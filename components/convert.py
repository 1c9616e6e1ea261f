"""convert, for the engines: one GPU worker converts a contiguous shard of segments to 3D (on the CPU where the
pod has no GPU).

Argo runs ``python -m hera.workflows.runner -e stereo_spot.components.convert:convert <inputs>`` once per shard index in
chunk's fan-out list; Kubeflow runs the container component from ``kfp_component`` (``stereo-spot step convert``) inside
a ParallelFor. The pod loads its models once and converts its shard's segments in order. Each segment is still completed
on its own: a retried pod (a spot node was reclaimed, a duplicate run) skips the segments already recorded and converts
the rest.
"""

from typing import Annotated, Any

from hera.workflows import Parameter

from stereo_spot import steps
from stereo_spot.components._common import run_step, step_command
from stereo_spot.config import get_settings
from stereo_spot.ports import Backend


def convert(
    key: Annotated[str, Parameter(description="input/<job id>/source.mp4, URL-encoded as in S3 events or not")],
    shard_index: Annotated[int, Parameter(description="which shard of the job's segments this pod converts")],
    gpu_workers: Annotated[int, Parameter(description="the most shards, as chunk planned them")]
    = steps.DEFAULT_GPU_WORKERS,
) -> int:
    """Convert shard ``shard_index`` of the job whose source is ``key``, split over at most ``gpu_workers``
    shards as chunk planned it; returns how many segments the shard holds."""

    def action(backend: Backend, job_id: str) -> int:
        total = steps.require_job(backend, job_id).total_segments or 0
        count = steps.shard_count(total, int(gpu_workers))
        done = steps.convert_shard(backend, job_id, int(shard_index), count,
                                   device=get_settings().stereo_spot_device)
        return len(done)

    return run_step("convert", key, action)


def kfp_component(image: str):
    """The Kubeflow container component (``stereo-spot step convert``). Its output file holds the shard's segment
    count, which ``dsl.Collected`` gathers for concat, which checks the sum against the job's segment count."""
    from kfp import dsl

    @dsl.container_component
    def convert(key: str, shard_index: int, gpu_workers: int, segments: dsl.OutputPath(int)):
        return dsl.ContainerSpec(image=image, command=step_command("convert"), args=[
            "--key", key, "--shard-index", shard_index, "--gpu-workers", gpu_workers, "--segments-path", segments])

    return convert


def argo_template(**options: Any):
    from hera.workflows import Script

    return Script(name="convert", source=convert, **options)
