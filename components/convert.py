"""convert, for the engines: one segment to 3D on a GPU (or the CPU where there is none).

Argo runs ``python -m hera.workflows.runner -e components.convert:convert <inputs>`` once per fan-out item;
Kubeflow runs the component from ``kfp_component`` inside a ParallelFor. Re-running a segment (a retry after a
spot node was reclaimed, a duplicate run) writes the same object and the same completion record.
"""

import os
from typing import Any

from components._common import run_step
from stereo_spot import steps
from stereo_spot.ports import Backend

DEVICE_ENV = "STEREO_SPOT_DEVICE"  # e.g. "cuda:0"; unset: CUDA when the pod has a GPU, else the CPU


def convert(key: str, segment_index: int) -> None:
    """Convert segment ``segment_index`` of the job whose source is ``key``."""

    def action(backend: Backend, job_id: str) -> None:
        steps.convert(backend, job_id, int(segment_index), device=os.environ.get(DEVICE_ENV) or None)

    run_step("convert", key, action, segment=int(segment_index))


def kfp_component(image: str):
    """The Kubeflow component. Its output (the segment index) is what ``dsl.Collected`` gathers for concat."""
    from kfp import dsl

    def convert(key: str, segment_index: int) -> int:
        from components.convert import convert as run

        run(key, segment_index)
        return segment_index

    return dsl.component(convert, base_image=image, packages_to_install=[], install_kfp_package=False)


def argo_template(**options: Any):
    from hera.workflows import RunnerScriptConstructor, Script

    return Script(name="convert", source=convert, constructor=RunnerScriptConstructor(), **options)
