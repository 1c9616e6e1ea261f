"""``stereo-spot compile`` and ``stereo-spot submit``. Registered on the main app by ``stereo_spot.cli.main``; Hera and
kfp are imported inside the commands, so the rest of the CLI starts without them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from stereo_spot.cli.console import console, out, print_error, print_result
from stereo_spot.models import OutputFormat
from stereo_spot.pipelines.config import DEFAULT_REGISTRY


class Engine(StrEnum):
    argo = "argo"
    kfp = "kfp"


def _die(message: str, code: int = 1) -> NoReturn:
    print_error(message)
    raise typer.Exit(code)


def _require_engines() -> None:
    from stereo_spot.errors import UserError, one_line, require_extra

    try:
        require_extra("hera", "pipelines", "compiling and submitting pipelines")
        require_extra("kfp", "pipelines", "compiling and submitting pipelines")
    except UserError as exc:
        _die(one_line(exc))


def _config(registry: str, tag: str | None, model_cache_pvc: str | None = None):
    from stereo_spot.pipelines.config import PipelineConfig

    return PipelineConfig(registry=registry, kfp_model_cache_pvc=model_cache_pvc or None,
                          **({"tag": tag} if tag else {}))


def compile_command(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the compiled files (default: this "
                                             "checkout's manifests/generated).", show_default=False)] = None,
    registry: Annotated[str, typer.Option(help="Registry and prefix of the images: <registry>/stereo-spot-cpu, "
                                          "-gpu.")] = DEFAULT_REGISTRY,
    tag: Annotated[str | None, typer.Option(help="Image tag (default: the project's version).",
                                            show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="Write nothing; fail when the files differ from a fresh "
                                        "compile (CI).")] = False,
    kfp_model_cache_pvc: Annotated[str | None, typer.Option(
        help="Kubeflow: a ReadWriteMany PersistentVolumeClaim the convert tasks share as their weight cache.",
        show_default=False)] = None,
) -> None:
    """Compile the Argo WorkflowTemplate (Hera) and the Kubeflow pipeline (kfp) into YAML."""
    _require_engines()
    from stereo_spot.pipelines.compile import compile_all

    try:
        results = compile_all(out, _config(registry, tag, kfp_model_cache_pvc), check=check)
    except (OSError, ValueError) as exc:
        _die(f"cannot compile: {exc}")
    for result in results:
        state = ("differs" if check else "written") if result.changed else "unchanged"
        print_result(f"{result.path}  {state}")
    if check and any(r.changed for r in results):
        _die("the compiled pipelines are out of date: run `stereo-spot compile` and commit manifests/generated")


def submit_command(
    key: Annotated[str, typer.Option(help="The uploaded source: input/<job id>/source.mp4.", show_default=False)],
    engine: Annotated[Engine, typer.Option(help="argo (the WorkflowTemplate) or kfp (Kubeflow Pipelines).")]
    = Engine.argo,
    bucket: Annotated[str | None, typer.Option(help="Bucket of the source (default: INPUT_BUCKET_NAME).",
                                               show_default=False)] = None,
    host: Annotated[str | None, typer.Option(help="Argo server or KFP API URL (default: ARGO_SERVER_URL / "
                                             "KFP_HOST).", show_default=False)] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (default: ARGO_TOKEN / KFP_TOKEN).",
                                              show_default=False)] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace (default: ARGO_NAMESPACE or stereo-spot; "
                                                  "KFP_NAMESPACE for Kubeflow profiles).", show_default=False)]
    = None,
    format: Annotated[OutputFormat | None, typer.Option(help="Override the job's format.", show_default=False)]
    = None,
    divergence: Annotated[float | None, typer.Option(min=0.0, max=10.0, show_default=False,
                                                     help="Override the job's divergence.")] = None,
    convergence: Annotated[float | None, typer.Option(min=0.0, max=1.0, show_default=False,
                                                      help="Override the job's convergence.")] = None,
    baseline_mm: Annotated[float | None, typer.Option("--baseline-mm", show_default=False,
                                                      help="Override the job's spatial-video baseline (mm).")]
    = None,
    hfov: Annotated[float | None, typer.Option(show_default=False, help="Override the job's spatial-video "
                                               "horizontal field of view (degrees).")] = None,
    experiment: Annotated[str | None, typer.Option(help="Kubeflow experiment (default: stereo-spot).",
                                                   show_default=False)] = None,
    gpu_workers: Annotated[int | None, typer.Option(min=1, show_default=False,
                                                    help="Most convert pods (GPU workers) for this run.")] = None,
    depth_video: Annotated[str | None, typer.Option(help="Render from the depth video uploaded to "
                                                    "input/<job id>/depth.mkv (its key).", show_default=False)]
    = None,
    registry: Annotated[str, typer.Option(help="Kubeflow: registry of the images the run uses.")] = DEFAULT_REGISTRY,
    tag: Annotated[str | None, typer.Option(help="Kubeflow: image tag (default: the project's version).",
                                            show_default=False)] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify the server's TLS certificate.")]
    = False,
) -> None:
    """Start a run for an uploaded source and print its link in the Argo or Kubeflow UI."""
    _require_engines()
    from stereo_spot.errors import UserError, one_line
    from stereo_spot.pipelines.submit import submit

    try:
        run = submit(engine.value, bucket, key, host=host, token=token, namespace=namespace,
                     output_format=format.value if format else None, divergence=divergence,
                     convergence=convergence, verify_ssl=not insecure, config=_config(registry, tag),
                     experiment=experiment, gpu_workers=gpu_workers, baseline_mm=baseline_mm, hfov=hfov,
                     depth_video=depth_video)
    except UserError as exc:
        _die(one_line(exc))
    console.print(f"started {run.engine} run {run.run_id}", highlight=False)
    out.print(run.link, highlight=False, soft_wrap=True)
