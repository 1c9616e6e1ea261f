"""``stereo-spot``: convert on this machine, list jobs, and the entry points of the other parts (UI, pipelines,
AWS, worker). Heavy imports (torch, kfp, streamlit) happen inside the commands that need them, so ``--help`` and
``jobs`` stay fast."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stereo_spot.errors import UserError, one_line
from stereo_spot.models import AnaglyphMethod, ConversionSettings, JobStatus, OutputFormat

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn 2D video into stereoscopic 3D (side-by-side, top-bottom, anaglyph).")
console = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        from stereo_spot import __version__

        out.print(f"stereo-spot {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Turn 2D video into stereoscopic 3D (side-by-side, top-bottom, anaglyph)."""


def die(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # messages may hold [brackets]
    raise typer.Exit(code)


def _user_message(exc: BaseException) -> str | None:
    """The one line a user sees for an error they can act on; None for bugs."""
    from stereo_spot.keys import InvalidKey
    from stereo_spot.ports import StoreError

    if isinstance(exc, (UserError, StoreError, InvalidKey, FileNotFoundError, PermissionError, IsADirectoryError)):
        return one_line(exc)
    media_error = sys.modules.get("stereo_spot.media.errors")
    if media_error is not None and isinstance(exc, media_error.MediaError):
        return one_line(exc)
    return None


def _report_failure(exc: BaseException, job_id: str | None = None) -> NoReturn:
    if os.environ.get("STEREO_SPOT_DEBUG"):
        console.print_exception()
    message = _user_message(exc)
    suffix = f" (job {job_id} marked failed)" if job_id else ""
    if message is None:
        message = f"internal error: {one_line(exc)}{suffix}; set STEREO_SPOT_DEBUG=1 for the traceback"
    else:
        message += suffix
    die(message)


@app.command()
def convert(
    input: Annotated[Path, typer.Argument(help="A video or a still image.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the 3D file "
                                                "(default: next to the input, with the layout suffix).")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="sbs, hsbs (half), tb, htb (half) "
                                                 "or anaglyph.")] = OutputFormat.SBS,
    anaglyph: Annotated[AnaglyphMethod, typer.Option(help="Anaglyph method (with --format anaglyph).")]
    = AnaglyphMethod.DUBOIS,
    divergence: Annotated[float, typer.Option(min=0.0, max=10.0, help="Maximum disparity in % of the image "
                                              "width: the strength of the 3D effect.")] = 2.0,
    convergence: Annotated[float, typer.Option(min=0.0, max=1.0, help="Depth (0 far .. 1 near) that sits on "
                                               "the screen plane; nearer pops out.")] = 0.5,
    depth_model: Annotated[str, typer.Option(help="Depth estimator: heuristic (no weights) or a neural "
                                             "model such as depth-anything.")] = "heuristic",
    depth_weights: Annotated[str | None, typer.Option(help="Folder or s3:// prefix with the depth model's "
                                                      "weights.")] = None,
    inpaint: Annotated[str, typer.Option(help="Hole filling: classical or diffusion.")] = "classical",
    inpaint_weights: Annotated[str | None, typer.Option(help="Folder or s3:// prefix with the inpainting "
                                                        "model.")] = None,
    auto_divergence: Annotated[bool, typer.Option("--auto-divergence", help="Choose --divergence and "
                                                  "--convergence from the measured depth of the scene.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Also write the comfort report (JSON: parallax "
                                                "percentiles, holes, border violations, flicker, timings) "
                                                "here.")] = None,
    disparity: Annotated[Path | None, typer.Option(help="Still images only: .npy float32 HxW disparity in "
                                                   "pixels; skips depth estimation.")] = None,
    segment_seconds: Annotated[float, typer.Option(min=0.1, help="Target segment length for parallel "
                                                   "conversion.")] = 10.0,
    workers: Annotated[int | None, typer.Option(min=1, help="Segments converted at once, one process each "
                                                "(default: one per GPU, else one per CPU core).")] = None,
    start: Annotated[float | None, typer.Option(min=0.0, help="Convert from this time (seconds).")] = None,
    duration: Annotated[float | None, typer.Option(min=0.001, help="Convert this many seconds.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda (every GPU) or cuda:N (that GPU); default: "
                                               "every GPU when there is one.")] = None,
    title: Annotated[str | None, typer.Option(help="Job title (default: the file name).")] = None,
) -> None:
    """Convert a video (or a still image) to 3D on this machine."""
    if not input.is_file():
        die(f"{input} does not exist or is not a file")
    try:
        settings = ConversionSettings(output_format=format, anaglyph=anaglyph, divergence=divergence,
                                      convergence=convergence, depth_model=depth_model, depth_weights=depth_weights,
                                      inpaint=inpaint, inpaint_weights=inpaint_weights,
                                      auto_divergence=auto_divergence, segment_seconds=segment_seconds,
                                      start=start, duration=duration)
    except ValueError as exc:
        die(one_line(exc))
    from stereo_spot.stereo.devices import check_device
    from stereo_spot.stereo.engine import check_model_choice

    try:
        check_model_choice(settings)
        check_device(device)
    except UserError as exc:
        die(one_line(exc))
    from stereo_spot.media.probe import is_image
    from stereo_spot.naming import output_path_for

    image = is_image(input)
    if output is None:
        output = output_path_for(input, format, ".png" if image else ".mp4")
    if output.exists() and output.resolve() == input.resolve():
        die(f"the output {output} is the input: choose another --output")
    if report is not None and report.exists() and report.is_dir():
        die(f"--report {report} is a folder: give a file name such as report.json")
    if image:
        if report is not None:
            die("--report works with videos: a still image has no comfort report")
        _convert_image(input, output, settings, disparity)
    else:
        if disparity is not None:
            die("--disparity works with still images only; for video the depth is estimated per frame")
        _convert_video(input, output, settings, workers, device, title or input.stem, report)


def _convert_image(input: Path, output: Path, settings: ConversionSettings, disparity: Path | None) -> None:
    import numpy as np

    from stereo_spot.stereo.image import convert_image

    try:
        values = None
        if disparity is not None:
            try:
                values = np.load(disparity, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read the disparity file {disparity}: {one_line(exc)}") from exc
        written = convert_image(input, output, settings, disparity=values)
    except Exception as exc:  # noqa: BLE001 - reported as one line
        _report_failure(exc)
    out.print(str(written))


def _convert_video(input: Path, output: Path, settings: ConversionSettings, workers: int | None,
                   device: str | None, title: str, report: Path | None = None) -> None:
    from stereo_spot import steps
    from stereo_spot.adapters import build_backend
    from stereo_spot.config import get_settings

    config = get_settings()
    if config.storage_adapter != "local":
        die("`convert` runs on the embedded storage; unset STORAGE_ADAPTER or set it to local")
    backend = build_backend(config)
    fingerprint = steps.fingerprint(input, settings)
    job = next((j for j in backend.jobs.list_in_progress(limit=1000) if j.source_fingerprint == fingerprint), None)
    try:
        if job is not None and job.uploaded_at is not None:
            console.print(f"resuming job {job.job_id}", highlight=False)
        else:
            job = job or steps.create_job(backend, settings, title, source_fingerprint=fingerprint)
            console.print(f"job {job.job_id}", highlight=False)
            job = steps.store_source(backend, job.job_id, input)
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc, job.job_id if job else None)
    _run_with_progress(backend, job.job_id, workers, device)
    _deliver(backend, job.job_id, output)
    _comfort_report(backend, job.job_id, report)


def _comfort_report(backend, job_id: str, path: Path | None) -> None:
    """Show the report's warnings; with ``--report``, copy the report there."""
    import json

    from stereo_spot import keys
    from stereo_spot.ports import NotFound

    try:
        raw = backend.objects.read_bytes(backend.output_bucket, keys.report_key(job_id))
    except NotFound:
        if path is not None:
            die(f"job {job_id} has no comfort report to write to {path}")
        return
    for warning in json.loads(raw).get("warnings", []):
        console.print(f"[yellow]comfort:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        out.print(str(path), soft_wrap=True)


def _run_with_progress(backend, job_id: str, workers: int | None, device: str | None) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from stereo_spot.runner import run_job

    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("chunk", total=None)

        def on_progress(state) -> None:
            bar.update(task, description=state.stage, completed=state.frames_done,
                       total=state.frames_total or None)

        try:
            job = run_job(backend, job_id, workers=workers, device=device, progress=on_progress)
            if job.status != JobStatus.COMPLETED:
                bar.stop()
                die(f"job {job_id} is being assembled by another run; `stereo-spot jobs` shows when it is done")
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            bar.stop()
            die(f"interrupted; run the same command again to resume job {job_id}", code=130)
        except Exception as exc:  # noqa: BLE001
            bar.stop()
            _report_failure(exc, job_id)


def _deliver(backend, job_id: str, output: Path) -> None:
    from stereo_spot import keys

    output.parent.mkdir(parents=True, exist_ok=True)
    local_path = getattr(backend.objects, "local_path", None)
    if local_path is not None:
        shutil.copyfile(local_path(backend.output_bucket, keys.final_key(job_id)), output)
    else:
        backend.objects.download_file(backend.output_bucket, keys.final_key(job_id), output)
    out.print(str(output))


@app.command()
def resume(job_id: Annotated[str, typer.Argument(help="The job to finish.")],
           output: Annotated[Path | None, typer.Option("-o", "--output", help="Also copy the result here.")] = None,
           workers: Annotated[int | None, typer.Option(min=1)] = None,
           device: Annotated[str | None, typer.Option()] = None) -> None:
    """Finish an interrupted or failed job on this machine (completed segments are kept)."""
    from stereo_spot import steps
    from stereo_spot.adapters import build_backend
    from stereo_spot.stereo.devices import check_device

    try:
        check_device(device)
        backend = build_backend()
        steps.require_job(backend, job_id)
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc)
    _run_with_progress(backend, job_id, workers, device)
    if output is not None:
        _deliver(backend, job_id, output)


@app.command()
def jobs(limit: Annotated[int, typer.Option(min=1, max=1000, help="Completed jobs to show.")] = 20,
         cursor: Annotated[str | None, typer.Option(help="Page cursor printed by the previous page.")] = None
         ) -> None:
    """List jobs: in progress first, then completed (newest first)."""
    from stereo_spot.adapters import build_backend

    try:
        backend = build_backend()
        in_progress = backend.jobs.list_in_progress(limit=100) if cursor is None else []
        page = backend.jobs.list_completed(limit=limit, cursor=cursor)
        failed = backend.jobs.list_by_status(JobStatus.FAILED, limit=10).items if cursor is None else []
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc)
    header = ("job id", "title", "format", "status", "segments", "created", "took")
    rows = []
    for job in [*in_progress, *page.items, *failed]:
        done = len(backend.completions.query_by_job(job.job_id)) if job.total_segments else 0
        took = f"{job.conversion_seconds:.0f} s" if job.conversion_seconds is not None else ""
        status = job.status.value + (f": {job.failure_reason}" if job.failure_reason else "")
        rows.append((job.job_id, job.title, job.settings.output_format.value, status,
                     f"{done}/{job.total_segments}" if job.total_segments else "",
                     job.created_at.strftime("%Y-%m-%d %H:%M"), took))
    if out.is_terminal:
        table = Table()
        table.add_column(header[0], no_wrap=True)
        for name in header[1:]:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))  # titles may hold [brackets]
        out.print(table)
    else:  # piped: one tab-separated line per job, for scripts
        for row in (header, *rows):
            print("\t".join(row))
    if page.next_cursor:
        out.print(f"more: stereo-spot jobs --cursor {page.next_cursor}")


@app.command()
def sample(path: Annotated[Path, typer.Argument(help="Where to write the clip.")] = Path("sample.mp4"),
           seconds: Annotated[float, typer.Option(min=0.1, max=3600.0)] = 6.0,
           width: Annotated[int, typer.Option(min=16, max=7680)] = 640,
           height: Annotated[int, typer.Option(min=16, max=4320)] = 360,
           fps: Annotated[int, typer.Option(min=1, max=240)] = 30) -> None:
    """Write a synthetic test clip (layered scene with known depth, with audio) to try the converter on."""
    from stereo_spot.sample import write_sample

    out.print(str(write_sample(path, seconds, (width, height), fps)))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8501,
       address: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1") -> None:
    """Start the Streamlit app."""
    import subprocess

    from stereo_spot.errors import require_extra

    try:
        require_extra("streamlit", "ui", "the app")
    except UserError as exc:
        die(one_line(exc))
    app_path = Path(__file__).resolve().parent.parent / "ui" / "app.py"
    if not app_path.is_file():
        import ui as ui_package

        app_path = Path(ui_package.__file__).resolve().parent / "app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", address,
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    raise typer.Exit(subprocess.call(command))


def _register_optional_commands() -> None:
    """Commands owned by the engine and cloud modules; each module keeps its heavy imports inside."""
    from stereo_spot import cli_aws

    app.add_typer(cli_aws.app, name="aws",
                  help="AWS resources and runbooks: bootstrap, destroy, recover-chunking, queues, dlq.")
    app.command("worker")(cli_aws.worker_command)
    try:
        from pipelines import cli as pipelines_cli
    except ImportError:  # pragma: no cover
        pipelines_cli = None
    if pipelines_cli is not None:
        app.command("compile")(pipelines_cli.compile_command)
        app.command("submit")(pipelines_cli.submit_command)


_register_optional_commands()


def main() -> None:
    started = time.monotonic()
    try:
        app()
    finally:
        if os.environ.get("STEREO_SPOT_DEBUG"):
            console.print(f"took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
