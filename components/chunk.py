"""chunk, for the engines: split the uploaded source into segments and hand on the fan-out list.

Argo runs ``python -m hera.workflows.runner -e stereo_spot.components.chunk:chunk <inputs>``; Kubeflow runs the
container component from ``kfp_component``, which is the image's own ``stereo-spot step chunk`` (components/cli.py).
Both call ``chunk`` below. The output is the fan-out list: one index per GPU worker (contiguous shards of segments,
``steps.shard_count``), e.g. ``[0, 1, 2]`` — a few bytes whatever the film's length, far under Argo's 256 kB output
limit. It is the named output ``shards``, written to a file on both engines — on Argo an output parameter (the Hera
runner writes it under /tmp/hera-outputs, the executor reads it), on Kubeflow an ``OutputPath`` — so nothing a library
prints can end up in the fan-out.
"""

from typing import Annotated, Any

from hera.workflows import Parameter
from pydantic import ValidationError

from stereo_spot import keys, steps
from stereo_spot.choices import AUTO
from stereo_spot.components._common import run_step, step_command
from stereo_spot.errors import UserError
from stereo_spot.models import ConversionSettings
from stereo_spot.ports import Backend

SHARDS_OUTPUT = "shards"  # the fan-out list's name, the same on both engines


def chunk(
    bucket: Annotated[str, Parameter(description="bucket of the uploaded source")],
    key: Annotated[str, Parameter(description="input/<job id>/source.mp4, URL-encoded as in S3 events or not")],
    output_format: Annotated[str, Parameter(description="override of the job's format; empty: keep it")] = "",
    divergence: Annotated[str, Parameter(description="override of the job's divergence; empty: keep it")] = "",
    convergence: Annotated[str, Parameter(description="override of the job's convergence; empty: keep it")] = "",
    baseline_mm: Annotated[str, Parameter(description="override of the job's spatial-video baseline (mm); empty: "
                                                      "keep it")] = "",
    hfov: Annotated[str, Parameter(description="override of the job's spatial-video horizontal field of view "
                                               "(degrees); empty: keep it")] = "",
    gpu_workers: Annotated[str, Parameter(description="most convert pods (shards) for this job")]
    = str(steps.DEFAULT_GPU_WORKERS),
    depth_video: Annotated[str, Parameter(description="the depth video to render from: input/<job id>/depth.mkv "
                                                      "in the same bucket (its key or s3:// URI); empty: estimate "
                                                      "the depth")] = "",
) -> Annotated[list[int], Parameter(name=SHARDS_OUTPUT, description="one index per convert pod (GPU worker)")]:
    """Chunk the source at ``bucket``/``key`` (``input/{job_id}/source.mp4``, URL-encoded or not) and return the
    shard indices for at most ``gpu_workers`` convert pods (a string, like the other workflow parameters, so a
    wrong value is reported as this step's user error rather than failing the runner's parsing).

    ``output_format``, ``divergence``, ``convergence``, ``baseline_mm`` and ``hfov`` (empty: keep the job's)
    override the job's settings before chunking. ``depth_video`` names the job's depth video to render from
    (``depth_video_override``). A source uploaded without a job record gets one (``steps.job_for_upload``).
    """

    def action(backend: Backend, job_id: str) -> list[int]:
        overrides = settings_overrides(output_format, divergence, convergence, baseline_mm=baseline_mm, hfov=hfov)
        overrides.update(depth_video_override(depth_video, bucket, job_id))
        workers = gpu_workers_parameter(gpu_workers)
        steps.job_for_upload(backend, bucket, key, overrides)
        return list(range(steps.shard_count(steps.chunk(backend, bucket, key).total_segments, workers)))

    return run_step("chunk", key, action)


def settings_overrides(output_format: str, divergence: str, convergence: str, *, baseline_mm: str = "",
                       hfov: str = "") -> dict[str, Any]:
    given = {"output_format": output_format, "divergence": divergence, "convergence": convergence,
             "baseline_mm": baseline_mm, "hfov": hfov}
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


def depth_video_override(value: str, bucket: str, job_id: str) -> dict[str, Any]:
    """The settings a ``depth-video`` parameter asks for: none when empty; otherwise it must name the job's own
    ``input/<job id>/depth.mkv`` (``keys.depth_video_key``) in the source's bucket, by key or ``s3://`` URI:
    the convert pods may read only under the job's input prefix, and the upload there starts no run."""
    given = str(value).strip()
    if not given:
        return {}
    expected = keys.depth_video_key(job_id)
    key = given
    if given.startswith("s3://"):
        named_bucket, _, key = given[len("s3://"):].partition("/")
        if named_bucket != bucket:
            raise UserError(f"invalid workflow parameter depth-video={given!r}: the depth video belongs in the "
                            f"source's bucket, at s3://{bucket}/{expected}")
    if keys.normalize_event_key(key) != expected:
        raise UserError(f"invalid workflow parameter depth-video={given!r}: upload the depth video to {expected} "
                        "(the job's own input prefix) and name that")
    return {"depth_video": True}


def gpu_workers_parameter(value: Any) -> int:
    try:
        workers = int(str(value).strip())
    except ValueError:
        workers = 0
    if workers < 1:
        raise UserError(f"invalid workflow parameter gpu-workers={value!r}: give a whole number of at least 1")
    return workers


def kfp_component(image: str):
    """The Kubeflow container component: ``stereo-spot step chunk`` in ``image``, which writes the fan-out list to
    the ``shards`` output file (no kfp in the image, nothing installed at start)."""
    from kfp import dsl

    @dsl.container_component
    def chunk(bucket: str, key: str, shards: dsl.OutputPath(list[int]), output_format: str = "", divergence: str = "",
              convergence: str = "", baseline_mm: str = "", hfov: str = "",
              gpu_workers: int = steps.DEFAULT_GPU_WORKERS, depth_video: str = ""):
        return dsl.ContainerSpec(image=image, command=step_command("chunk"), args=[
            "--bucket", bucket, "--key", key, "--output-format", output_format, "--divergence", divergence,
            "--convergence", convergence, "--baseline-mm", baseline_mm, "--hfov", hfov,
            "--gpu-workers", gpu_workers, "--depth-video", depth_video, "--shards-path", shards])

    return chunk


def argo_template(**options: Any):
    """The Argo script template; the constructor (Hera's runner), image, resources and retries are the
    pipeline's class defaults (pipelines/argo.py), ``options`` only what is this step's own."""
    from hera.workflows import Script

    return Script(name="chunk", source=chunk, **options)
