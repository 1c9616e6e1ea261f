"""chunk, for the engines: split the uploaded source into segments and hand on the fan-out list.

Argo runs ``python -m hera.workflows.runner -e components.chunk:chunk <inputs>``; Kubeflow runs the component
from ``kfp_component``. Both call ``chunk`` below. The output is the fan-out list: one index per GPU worker
(contiguous shards of segments, ``steps.shard_count``), e.g. ``[0, 1, 2]`` — a few bytes whatever the film's
length, far under Argo's 256 kB output limit. On Argo it is the named output parameter ``shards`` (the Hera
runner writes it to a file the executor reads), so nothing a library prints can end up in the fan-out.
"""

from typing import Annotated, Any

from hera.workflows import Parameter
from pydantic import ValidationError

from components._common import run_step
from stereo_spot import steps
from stereo_spot.choices import AUTO
from stereo_spot.errors import UserError
from stereo_spot.models import ConversionSettings
from stereo_spot.ports import Backend


def chunk(bucket: str, key: str, output_format: str = "", divergence: str = "", convergence: str = "",
          gpu_workers: str = str(steps.DEFAULT_GPU_WORKERS)) \
        -> Annotated[list[int], Parameter(name="shards", description="one index per convert pod (GPU worker)")]:
    """Chunk the source at ``bucket``/``key`` (``input/{job_id}/source.mp4``, URL-encoded or not) and return the
    shard indices for at most ``gpu_workers`` convert pods (a string, like the other workflow parameters, so a
    wrong value is reported as this step's user error rather than failing the runner's parsing).

    ``output_format``, ``divergence`` and ``convergence`` (empty: keep the job's) override the job's settings
    before chunking. A source uploaded without a job record gets one (``steps.job_for_upload``).
    """

    def action(backend: Backend, job_id: str) -> list[int]:
        overrides = settings_overrides(output_format, divergence, convergence)
        workers = gpu_workers_parameter(gpu_workers)
        steps.job_for_upload(backend, bucket, key, overrides)
        return list(range(steps.shard_count(steps.chunk(backend, bucket, key).total_segments, workers)))

    return run_step("chunk", key, action)


def settings_overrides(output_format: str, divergence: str, convergence: str) -> dict[str, Any]:
    given = {"output_format": output_format, "divergence": divergence, "convergence": convergence}
    overrides = {name: str(value).strip() for name, value in given.items() if str(value).strip()}
    if overrides.get("convergence", "").lower() == AUTO:  # the automatic screen plane, as on the command line
        del overrides["convergence"]
        overrides["auto_convergence"] = True
    try:
        ConversionSettings(**overrides)  # says which parameter is wrong before any work starts
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error.get("loc") else "a parameter"
        raise UserError(f"invalid workflow parameter {name}={overrides.get(name)!r}: {error['msg']}") from exc
    return overrides


def gpu_workers_parameter(value: Any) -> int:
    try:
        workers = int(str(value).strip())
    except ValueError:
        workers = 0
    if workers < 1:
        raise UserError(f"invalid workflow parameter gpu-workers={value!r}: give a whole number of at least 1")
    return workers


def kfp_component(image: str):
    """The Kubeflow component: runs in ``image`` (the project is installed there), installs nothing at start."""
    from kfp import dsl

    def chunk(bucket: str, key: str, output_format: str = "", divergence: str = "", convergence: str = "",
              gpu_workers: int = 8) -> list[int]:
        from components.chunk import chunk as run

        return run(bucket, key, output_format, divergence, convergence, gpu_workers)

    return dsl.component(chunk, base_image=image, packages_to_install=[], install_kfp_package=False)


def argo_template(**options: Any):
    """The Argo script template (Hera runner constructor); ``options`` are the pipeline's placement choices."""
    from hera.workflows import RunnerScriptConstructor, Script

    return Script(name="chunk", source=chunk, constructor=RunnerScriptConstructor(), **options)
