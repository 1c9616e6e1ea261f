"""convert, for the engines: one GPU worker converts a contiguous shard of segments to 3D (on the CPU where the
pod has no GPU).

Argo runs ``python -m hera.workflows.runner -e stereo_spot.components.convert:convert <inputs>`` once per shard index in
chunk's fan-out list; Kubeflow runs the component from ``kfp_component`` inside a ParallelFor. The pod loads its
models once and converts its shard's segments in order. Each segment is still completed on its own: a retried
pod (a spot node was reclaimed, a duplicate run) skips the segments already recorded and converts the rest.
"""

from typing import Any

from stereo_spot import steps
from stereo_spot.components._common import run_step
from stereo_spot.ports import Backend


def convert(key: str, shard_index: int, gpu_workers: int = steps.DEFAULT_GPU_WORKERS) -> int:
    """Convert shard ``shard_index`` of the job whose source is ``key``, split over at most ``gpu_workers``
    shards as chunk planned it; returns how many segments the shard holds."""

    def action(backend: Backend, job_id: str) -> int:
        from stereo_spot.config import get_settings

        total = steps.require_job(backend, job_id).total_segments or 0
        count = steps.shard_count(total, int(gpu_workers))
        done = steps.convert_shard(backend, job_id, int(shard_index), count,
                                   device=get_settings().stereo_spot_device)
        return len(done)

    return run_step("convert", key, action)


def kfp_component(image: str):
    """The Kubeflow component. Its output (the shard's segment count) is what ``dsl.Collected`` gathers for
    concat, which checks the sum against the job's segment count."""
    from kfp import dsl

    def convert(key: str, shard_index: int, gpu_workers: int) -> int:
        from stereo_spot.components.convert import convert as run

        return run(key, shard_index, gpu_workers)

    return dsl.component(convert, base_image=image, packages_to_install=[], install_kfp_package=False)


def argo_template(**options: Any):
    from hera.workflows import RunnerScriptConstructor, Script

    return Script(name="convert", source=convert, constructor=RunnerScriptConstructor(), **options)
