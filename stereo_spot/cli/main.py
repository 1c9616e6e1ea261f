"""``stereo-spot``: convert on this machine, list jobs, and the entry points of the other parts (UI, pipelines,
AWS, worker). Heavy imports (torch, kfp, streamlit) happen inside the commands that need them, so ``--help`` and
``jobs`` stay fast."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from stereo_spot.cli.console import console, out, print_error, print_result
from stereo_spot.config import SettingsError, reporting_settings
from stereo_spot.errors import UserError, one_line
from stereo_spot.models import (
    AnaglyphMethod,
    ConversionSettings,
    JobStatus,
    OutputFormat,
    PixelFormat,
    Precision,
    VideoCodec,
)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn 2D video into stereoscopic 3D (side-by-side, top-bottom, anaglyph).")


def _version(value: bool) -> None:
    if value:
        from stereo_spot import __version__

        print_result(f"stereo-spot {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Log more: -v the story of a "
                                               "run (probe, segments and their fps, join, delivery), -vv each "
                                               "segment's decisions too (device, encoder, batch, window, "
                                               "convergence).")] = 0,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log errors only.")] = False) -> None:
    """Turn 2D video into stereoscopic 3D (side-by-side, top-bottom, anaglyph)."""
    _configure_logging(verbose, quiet)


#: What a person at the shell sees by default: warnings and errors (the progress bar tells the rest).
_DEFAULT_LEVEL = "WARNING"


def _configure_logging(verbose: int, quiet: bool) -> None:
    """One logging setup (``stereo_spot.logs``) for every command. ``-v``/``-q`` set ``STEREO_SPOT_LOG_LEVEL`` as
    well, so the worker and operator commands, which configure logging again for unattended runs, and the
    worker processes the runner spawns, log at the level chosen here."""
    from stereo_spot.logs import configure_logging

    if quiet or verbose:
        level = "ERROR" if quiet else ("INFO" if verbose == 1 else "DEBUG")
        os.environ["STEREO_SPOT_LOG_LEVEL"] = level
    configure_logging(reporting_settings().stereo_spot_log_level or _DEFAULT_LEVEL)


class CommandError(typer.Exit):
    """A command (or one input of a folder conversion) ends with this one-line message and exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(code)
        self.message = message


#: Exit code of an interrupted command (Ctrl-C): a folder conversion stops there too.
INTERRUPTED = 130


def die(message: str, code: int = 1) -> NoReturn:
    print_error(message)
    raise CommandError(message, code)


def _user_message(exc: BaseException) -> str | None:
    """The one line a user sees for an error they can act on; None for bugs."""
    from stereo_spot.errors import Failure, classify

    return None if classify(exc) is Failure.INTERNAL else one_line(exc)


def _report_failure(exc: BaseException, job_id: str | None = None) -> NoReturn:
    if reporting_settings().stereo_spot_debug:
        console.print_exception()
    message = _user_message(exc)
    suffix = f" (job {job_id} marked failed)" if job_id else ""
    if message is None:
        message = f"internal error: {one_line(exc)}{suffix}; set STEREO_SPOT_DEBUG=1 for the traceback"
    else:
        message += suffix
    die(message)


# Options that `convert` and `preview` share, so a preview is converted exactly as the job would be.
FormatOption = Annotated[OutputFormat, typer.Option(
    "--format", "-f", help="sbs, hsbs (half), tb, htb (half), anaglyph, cross (right-left, for cross-eyed "
    "viewing), vr180 (equirectangular, for headsets) or spatial (MV-HEVC for Apple Vision Pro; needs "
    "scripts/setup --spatial).")]
AnaglyphOption = Annotated[AnaglyphMethod, typer.Option(help="Anaglyph method (with --format anaglyph).")]
BaselineOption = Annotated[float, typer.Option("--baseline-mm", help="--format spatial: the distance between "
                                              "the eyes' cameras the file declares, in millimetres.")]
HfovOption = Annotated[float, typer.Option("--hfov", help="--format spatial: the horizontal field of view the "
                                          "file declares, in degrees.")]
SwapEyesOption = Annotated[bool, typer.Option("--swap-eyes", help="Exchange the left and right eyes in the layout.")]
DivergenceOption = Annotated[float, typer.Option(min=0.0, max=10.0, help="Maximum disparity in % of the image "
                                                 "width: the strength of the 3D effect.")]
ConvergenceOption = Annotated[str, typer.Option(help="Depth (0 far .. 1 near) that sits on the screen plane; "
                                                "nearer pops out. auto: frame by frame, so what touches the "
                                                "frame edges sits at or behind the screen.")]
FloatingWindowOption = Annotated[bool, typer.Option("--floating-window/--no-floating-window", help="Mask the "
                                                    "frame edges of each eye where something in front of the "
                                                    "screen touches them (a floating stereo window).")]
DepthModelOption = Annotated[str, typer.Option(help="Depth estimator: heuristic (no weights) or a neural model "
                                               "such as depth-anything.")]
DepthWeightsOption = Annotated[str | None, typer.Option(help="Folder or s3:// prefix with the depth model's "
                                                        "weights.")]
InpaintOption = Annotated[str, typer.Option(help="Hole filling: classical or diffusion.")]
InpaintWeightsOption = Annotated[str | None, typer.Option(help="Folder or s3:// prefix with the inpainting "
                                                          "model.")]
PrecisionOption = Annotated[Precision, typer.Option(help="Number format of the neural models: auto (fp16 on a "
                                                  "GPU, bf16 for a model that overflows in fp16, fp32 on the CPU), "
                                                  "fp32, fp16 or bf16.")]
CodecOption = Annotated[VideoCodec, typer.Option(help="Video encoder: auto (NVENC H.264 on a GPU when it opens, "
                                                  "libx264 otherwise), libx264, libx265, h264_nvenc, hevc_nvenc.")]
CrfOption = Annotated[int | None, typer.Option(min=0, max=51, help="Constant quality, 0 (lossless) .. 51; "
                                               "default 18 (STEREO_SPOT_CRF).")]
PresetOption = Annotated[str | None, typer.Option(help="Encoder speed preset: ultrafast .. veryslow (x264, x265), "
                                                  "p1 .. p7 (NVENC); default fast / p4.")]
PixFmtOption = Annotated[PixelFormat | None, typer.Option("--pix-fmt", help="yuv420p, yuv420p10le (10-bit) or "
                                                          "yuv444p; default yuv444p for anaglyph, else yuv420p.")]
MaxFpsOption = Annotated[float | None, typer.Option("--max-fps", min=1.0, help="Drop frames above this rate "
                                                    "(a 60 fps phone video at 30 converts in half the time).")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda (every GPU) or cuda:N (that GPU); default: "
                                                  "every GPU when there is one.")]
MaxFramePixelsOption = Annotated[int | None, typer.Option(
    "--max-frame-pixels", min=1, help="The most pixels one frame may have (default: what this machine's memory "
    "converts, about 128 bytes a pixel); a larger input is refused before anything runs.")]


def _check_device(device: str | None) -> None:
    """A device that is not there is refused before any job exists, naming the ones that are."""
    from stereo_spot.stereo.devices import check_device

    try:
        check_device(device)
    except UserError as exc:
        die(one_line(exc))


def _checked_settings(**fields) -> ConversionSettings:
    """The settings of a conversion from the command line (``stereo_spot.choices``, the rule the app uses too),
    or a one-line error before any work starts."""
    from stereo_spot.choices import conversion_settings

    try:
        return conversion_settings(**fields)
    except UserError as exc:
        die(one_line(exc))


@app.command()
def convert(
    inputs: Annotated[list[Path], typer.Argument(help="Videos, still images, or folders (searched recursively).",
                                                 show_default=False, metavar="PATH...")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the 3D file (default: next "
                                                "to the input, with the layout suffix); with several inputs or a "
                                                "folder, the folder to write them to.")] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose 3D file already "
                                                "exists.")] = False,
    format: FormatOption = OutputFormat.SBS,
    anaglyph: AnaglyphOption = AnaglyphMethod.DUBOIS,
    swap_eyes: SwapEyesOption = False,
    baseline_mm: BaselineOption = 64.0,
    hfov: HfovOption = 63.0,
    divergence: DivergenceOption = 2.0,
    convergence: ConvergenceOption = "0.5",
    floating_window: FloatingWindowOption = True,
    depth_model: DepthModelOption = "heuristic",
    depth_weights: DepthWeightsOption = None,
    inpaint: InpaintOption = "classical",
    inpaint_weights: InpaintWeightsOption = None,
    precision: PrecisionOption = Precision.AUTO,
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
    codec: CodecOption = VideoCodec.AUTO,
    crf: CrfOption = None,
    preset: PresetOption = None,
    pix_fmt: PixFmtOption = None,
    max_fps: MaxFpsOption = None,
    device: DeviceOption = None,
    title: Annotated[str | None, typer.Option(help="Job title (default: the file name).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start a new job even where an interrupted or failed "
                                        "one of the same input and settings could be resumed.")] = False,
    max_frame_pixels: MaxFramePixelsOption = None,
    depth_video: Annotated[Path | None, typer.Option("--depth-video", help="Render from this depth video (as "
                                                     "`stereo-spot depth` writes it, edited or not) instead of "
                                                     "estimating depth.")] = None,
) -> None:
    """Convert videos (or still images, or whole folders of them) to 3D on this machine."""
    settings = _checked_settings(output_format=format, anaglyph=anaglyph, swap_eyes=swap_eyes,
                                 divergence=divergence, convergence=convergence, floating_window=floating_window,
                                 depth_model=depth_model, depth_video=depth_video is not None,
                                 depth_weights=depth_weights, inpaint=inpaint, inpaint_weights=inpaint_weights,
                                 auto_divergence=auto_divergence, segment_seconds=segment_seconds,
                                 start=start, duration=duration, codec=codec, crf=crf, preset=preset,
                                 pix_fmt=pix_fmt, max_fps=max_fps, precision=precision,
                                 baseline_mm=baseline_mm, hfov=hfov)
    _check_device(device)
    if len(inputs) > 1 or inputs[0].is_dir():
        for flag, value in (("--report", report), ("--title", title), ("--disparity", disparity),
                            ("--depth-video", depth_video)):
            if value is not None:
                die(f"{flag} works with one input file; convert the files one by one to use it")
        _convert_many(inputs, output, settings, skip_existing, workers, device, fresh, max_frame_pixels)
        return
    input = inputs[0]
    if not input.is_file():
        die(f"{input} does not exist or is not a file")
    from stereo_spot.media.probe import is_image
    from stereo_spot.naming import output_path_for

    image = is_image(input)
    if output is None:
        output = output_path_for(input, format, ".png" if image else ".mp4", swap_eyes=swap_eyes)
    elif image and output.suffix.lower() != ".png":
        # Writing another name than the one asked for would leave scripts looking for a file that is not there,
        # and PNG data under a video's name would mislead every player: refuse, and say what to ask for.
        die(f"{input} is a still image (whatever its name): its 3D version is a PNG; give -o a .png name such as "
            f"{output.with_suffix('.png')}")
    elif not image:
        _warn_unless_layout_named(output, format, swap_eyes)
    if _same_file(output, input):
        die(f"the output {output} is the input: choose another --output")
    if report is not None:
        if settings.output_format.is_rgbd:
            die(f"--report works with stereo layouts: --format {settings.output_format.value} is colour and depth, "
                "with no stereo pair to measure")
        if report.is_dir():
            die(f"--report {report} is a folder: give a file name such as report.json")
        if _same_file(report, input):
            die(f"--report {report} is the input video: give the report a file name of its own such as "
                "report.json")
        if _same_file(report, output) or report.resolve() == output.resolve():
            die(f"--report {report} is the output video: give the report a file name of its own")
    _refuse_oversized_frame(input, max_frame_pixels)
    if image:
        if depth_video is not None:
            die("--depth-video works with videos; a still image takes its depth with --disparity")
        if report is not None:
            die("--report works with videos: a still image has no comfort report")
        _convert_image(input, output, settings, disparity)
    else:
        if disparity is not None:
            die("--disparity works with still images only; for video the depth is estimated per frame")
        if depth_video is not None:
            _check_depth_video(depth_video, input, settings)
        _convert_video(input, output, settings, workers, device, title or input.stem, report, fresh,
                       depth_video=depth_video)


def _warn_unless_layout_named(output: Path, output_format: OutputFormat, swap_eyes: bool) -> None:
    """A name given with -o is written as given (scripts rely on that), but players find the layout only in
    the name: say so, with the name that carries it."""
    from stereo_spot.naming import names_layout, output_file_name

    if not names_layout(output.name, output_format):
        better = output_file_name(output.stem.removesuffix("-3d"), output_format, output.suffix or ".mp4",
                                  swap_eyes=swap_eyes)
        logging.getLogger(__name__).warning(
            "players find the 3D layout in the file name, and %s has none: they may play it flat. Name it %s (the "
            "default without -o) or set the layout in the player.", output.name, better)


def _convert_many(paths: list[Path], output_dir: Path | None, settings: ConversionSettings, skip_existing: bool,
                  workers: int | None, device: str | None, fresh: bool = False,
                  max_frame_pixels: int | None = None) -> None:
    """Convert every input in turn, past the ones that fail, and end with a summary; the exit status is 1 when
    any failed. Interrupted jobs resume as a single conversion does (each job is found by its fingerprint)."""
    from stereo_spot.inputs import plan

    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        die(f"-o {output_dir} is a file: with several inputs or a folder, -o names the folder to write to")
    try:
        conversions = plan(paths, settings.output_format, output_dir=output_dir, swap_eyes=settings.swap_eyes)
    except UserError as exc:
        die(one_line(exc))
    if not conversions:
        die(f"no videos or still images in {', '.join(map(str, paths))}")
    results: list[tuple[Path, str, str]] = []
    for number, item in enumerate(conversions, 1):
        console.print(f"[bold]{number}/{len(conversions)}[/] {escape(str(item.source))}", highlight=False)
        if skip_existing and item.output.exists():
            console.print(f"skipped: {escape(str(item.output))} exists", highlight=False)
            results.append((item.source, "skipped", f"{item.output} exists"))
            continue
        try:
            if _same_file(item.output, item.source):
                die(f"the output {item.output} is the input")
            _refuse_oversized_frame(item.source, max_frame_pixels)
            if item.is_image:
                _convert_image(item.source, item.output, settings, None)
            else:
                _convert_video(item.source, item.output, settings, workers, device, item.source.stem, fresh=fresh)
        except CommandError as failure:
            if failure.exit_code == INTERRUPTED:
                raise
            results.append((item.source, "failed", failure.message))
            continue
        results.append((item.source, "converted", str(item.output)))
    _print_summary(results)
    if any(status == "failed" for _, status, _ in results):
        raise typer.Exit(1)


def _print_summary(results: list[tuple[Path, str, str]]) -> None:
    table = Table("input", "result", "output or reason", title="summary", title_justify="left")
    style = {"converted": "green", "skipped": "cyan", "failed": "red"}
    for source, status, detail in results:
        table.add_row(escape(str(source)), f"[{style[status]}]{status}[/]", escape(detail))
    console.print(table)
    counts = {s: sum(1 for _, status, _ in results if status == s) for s in style}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)


def _refuse_oversized_frame(path: Path, max_frame_pixels: int | None) -> None:
    """Stop (one line: the size and the limit) before a frame too large for this machine is decoded; the size
    comes from the stream's parameters or the image's header. A file whose size cannot be read is left to the
    conversion, which says what is wrong with it."""
    from stereo_spot.limits import LimitExceeded, check_frame_fits
    from stereo_spot.media.errors import MediaError
    from stereo_spot.media.probe import frame_size

    try:
        size = frame_size(path, required=False)
    except MediaError:
        return
    if size is not None:
        try:
            check_frame_fits(path.name, *size, max_frame_pixels)
        except LimitExceeded as exc:
            die(one_line(exc))


def _same_file(path: Path, other: Path) -> bool:
    """True when both names lead to one file (hard links, symlinks, ``./x`` and ``x`` included)."""
    try:
        return path.exists() and os.path.samefile(path, other)
    except OSError:
        return False


def _write_atomically(path: Path, write) -> None:
    from stereo_spot.delivery import write_atomically

    write_atomically(path, write)


@app.command()
def preview(
    input: Annotated[Path, typer.Argument(help="A video (or a still image).", show_default=False)],
    at: Annotated[float, typer.Option("--at", min=0.0, help="The moment to preview, in seconds.")] = 0.0,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the PNG (default: next to "
                                                "the input, named after the moment).")] = None,
    format: FormatOption = OutputFormat.SBS,
    anaglyph: AnaglyphOption = AnaglyphMethod.DUBOIS,
    swap_eyes: SwapEyesOption = False,
    divergence: DivergenceOption = 2.0,
    convergence: ConvergenceOption = "0.5",
    floating_window: FloatingWindowOption = True,
    depth_model: DepthModelOption = "heuristic",
    depth_weights: DepthWeightsOption = None,
    inpaint: InpaintOption = "classical",
    inpaint_weights: InpaintWeightsOption = None,
    precision: PrecisionOption = Precision.AUTO,
    depth_video: Annotated[Path | None, typer.Option("--depth-video", help="Render from this depth video (as "
                                                     "`stereo-spot depth` writes it) instead of estimating the "
                                                     "depth, as convert --depth-video would.")] = None,
    device: DeviceOption = None,
    max_frame_pixels: MaxFramePixelsOption = None,
) -> None:
    """Write one converted frame as a PNG, to tune --divergence and --convergence before converting."""
    if not input.is_file():
        die(f"{input} does not exist or is not a file")
    if depth_video is not None and not depth_video.is_file():
        die(f"--depth-video {depth_video} does not exist or is not a file")
    settings = _checked_settings(output_format=format, anaglyph=anaglyph, swap_eyes=swap_eyes,
                                 divergence=divergence, convergence=convergence, floating_window=floating_window,
                                 depth_model=depth_model, depth_weights=depth_weights, inpaint=inpaint,
                                 inpaint_weights=inpaint_weights, precision=precision,
                                 depth_video=depth_video is not None)
    _check_device(device)
    from stereo_spot.media.probe import is_image

    output = output or input.with_name(f"{input.stem}-preview-{at:g}s.png")
    if _same_file(output, input):
        die(f"the output {output} is the input: choose another --output")
    _refuse_oversized_frame(input, max_frame_pixels)
    if is_image(input):
        if depth_video is not None:
            die(f"{input} is a still image: a depth video goes with a video (a still takes --disparity)")
        _convert_image(input, output, settings, None)
        return
    from stereo_spot.stereo.preview import preview_frame, write_png

    try:
        written = write_png(output, preview_frame(input, at, settings, device=device, depth_video=depth_video))
    except Exception as exc:  # noqa: BLE001 - reported as one line
        _report_failure(exc)
    print_result(str(written))


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
    print_result(str(written))


def _check_depth_video(depth_video: Path, input: Path, settings: ConversionSettings) -> None:
    """The depth video fits the input (``media.depth_video.check_fits``, the rule the chunk step applies too),
    or one line saying how they differ, before any job exists."""
    from stereo_spot.media.depth_video import check_fits
    from stereo_spot.media.probe import probe, require_video

    if not depth_video.is_file():
        die(f"--depth-video {depth_video} does not exist or is not a file")
    try:
        size = require_video(probe(input)).display_size
        check_fits(depth_video, input, size=size, window=settings.window, max_fps=settings.max_fps)
    except UserError as exc:
        die(one_line(exc))


@app.command()
def depth(
    input: Annotated[Path, typer.Argument(help="A video.", show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the depth video (default: "
                                                "next to the input, named NAME-depth.mkv).")] = None,
    depth_model: DepthModelOption = "heuristic",
    depth_weights: DepthWeightsOption = None,
    precision: PrecisionOption = Precision.AUTO,
    segment_seconds: Annotated[float, typer.Option(min=0.1, help="Target segment length for parallel "
                                                   "work.")] = 10.0,
    workers: Annotated[int | None, typer.Option(min=1, help="Segments worked on at once, one process each "
                                                "(default: one per GPU, else one per CPU core).")] = None,
    start: Annotated[float | None, typer.Option(min=0.0, help="From this time (seconds).")] = None,
    duration: Annotated[float | None, typer.Option(min=0.001, help="This many seconds.")] = None,
    max_fps: MaxFpsOption = None,
    device: DeviceOption = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start a new job even where an interrupted one of the "
                                        "same input and settings could be resumed.")] = False,
    max_frame_pixels: MaxFramePixelsOption = None,
) -> None:
    """Write the depth video of a video: 16-bit grey, lossless (FFV1 in Matroska), frame for frame with the
    source, near = bright; edit it and render from it with `convert --depth-video`."""
    settings = _checked_settings(depth_output=True, depth_model=depth_model, depth_weights=depth_weights,
                                 precision=precision, segment_seconds=segment_seconds, start=start,
                                 duration=duration, max_fps=max_fps)
    _check_device(device)
    if not input.is_file():
        die(f"{input} does not exist or is not a file")
    from stereo_spot.media.probe import is_image

    if is_image(input):
        die(f"{input} is a still image: `stereo-spot depth` writes the depth of a video")
    from stereo_spot.naming import depth_path_for

    output = output or depth_path_for(input)
    if output.suffix.lower() != ".mkv":
        die(f"the depth video is Matroska (FFV1): give -o a .mkv name such as {output.with_suffix('.mkv')}")
    if _same_file(output, input):
        die(f"the output {output} is the input: choose another --output")
    _refuse_oversized_frame(input, max_frame_pixels)
    _convert_video(input, output, settings, workers, device, input.stem, None, fresh)


def _convert_video(input: Path, output: Path, settings: ConversionSettings, workers: int | None,
                   device: str | None, title: str, report: Path | None = None, fresh: bool = False,
                   depth_video: Path | None = None) -> None:
    from stereo_spot.adapters import build_backend
    from stereo_spot.config import get_settings

    config = get_settings()
    if config.storage_adapter != "local":
        die("`convert` runs on the embedded storage; unset STORAGE_ADAPTER or set it to local")
    from stereo_spot import steps
    from stereo_spot.runner import job_for_input

    job = None
    try:
        backend = build_backend(config)
        undelivered = None if fresh else _undelivered_job(backend, steps.fingerprint(input, settings, depth_video))
        if undelivered is not None:  # converted before, but its delivery failed: deliver it, convert nothing
            console.print(f"job {undelivered.job_id} is converted already: writing its result", highlight=False)
            _deliver(backend, undelivered.job_id, output)
            _comfort_report(backend, undelivered.job_id, report)
            return
        job, resumed = job_for_input(
            backend, input, settings, title, fresh=fresh,
            before_new=lambda: _check_room(input, output, settings, config.stereo_spot_home),
            depth_video=depth_video)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc, job.job_id if job else None)
    if not resumed:
        console.print(f"job {job.job_id}", highlight=False)
    elif job.status == JobStatus.FAILED:
        console.print(f"resuming failed job {job.job_id} ({escape(job.failure_reason or 'no reason recorded')})",
                      highlight=False)
    else:
        console.print(f"resuming job {job.job_id}", highlight=False)
    _run_with_progress(backend, job.job_id, workers, device)
    if settings.auto_divergence:
        chosen = backend.jobs.get(job.job_id).settings
        console.print(f"automatic divergence {chosen.divergence:.2f} %, convergence {chosen.convergence:.2f}"
                      + (" (the floor of the automatic screen plane)" if chosen.auto_convergence else ""),
                      highlight=False)
    _deliver(backend, job.job_id, output)
    _comfort_report(backend, job.job_id, report)


def _check_room(input: Path, output: Path, settings: ConversionSettings, home: Path) -> None:
    """Before a new job: the output folder is writable and both it and the store have room (one line if not)."""
    from stereo_spot import delivery
    from stereo_spot.media.errors import MediaError
    from stereo_spot.media.probe import probe

    duration = video = None
    if settings.start is not None or settings.duration is not None or settings.depth_output:
        try:
            info = probe(input)
            duration, video = info.duration_seconds, info.video
        except MediaError:
            pass  # bad input: the job fails on it with its own message
    try:
        from stereo_spot.scratch import root as scratch_root

        delivery.check_room(output, home, delivery.estimate(input.stat().st_size, settings, duration, video),
                            scratch=scratch_root())
    except delivery.NoRoom as exc:
        die(one_line(exc))


def _undelivered_job(backend, fingerprint: str):
    """A completed job of this input and these settings whose result is still in the store: its delivery
    failed (a full or read-only output folder), so the same command delivers it without converting again."""
    from stereo_spot import keys

    cursor = None
    while True:
        page = backend.jobs.list_completed(limit=200, cursor=cursor)
        for job in page.items:
            if job.source_fingerprint == fingerprint and \
                    backend.objects.exists(backend.output_bucket, keys.final_key(job.job_id)):
                return job
        cursor = page.next_cursor
        if cursor is None:
            return None


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
    report = json.loads(raw)
    plane = report.get("convergence_chosen")
    if plane:
        console.print(f"automatic screen plane: convergence {plane['mean']:.2f} on average ({plane['min']:.2f} .. "
                      f"{plane['max']:.2f})", highlight=False)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]comfort:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if path is not None:
        _write_atomically(path, lambda tmp: tmp.write_bytes(raw))
        out.print(str(path), soft_wrap=True)


def progress_total(expected: int | None, done: int) -> int | None:
    """The progress bar's total: the job's expected frames (None while unknown), never fewer than are done.

    The expected count is the container's frame count, or the duration times the frame rate for a part of the
    video; some files understate it by a frame or two, and a bar showing 81/80 reads as a bug."""
    return max(expected, done) if expected else None


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
                       total=progress_total(state.frames_total, state.frames_done))

        try:
            job = run_job(backend, job_id, workers=workers, device=device, progress=on_progress)
            if job.status == JobStatus.FAILED:  # the run that held the join failed while this one waited
                bar.stop()
                die(f"job {job_id} failed in another run: {job.failure_reason}")
            if job.status != JobStatus.COMPLETED:
                bar.stop()
                die(f"job {job_id} is being assembled by another run; `stereo-spot jobs` shows when it is done")
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            bar.stop()
            die(f"interrupted; run the same command again to resume job {job_id}", code=INTERRUPTED)
        except Exception as exc:  # noqa: BLE001
            bar.stop()
            _report_failure(exc, job_id)


def _deliver(backend, job_id: str, output: Path) -> None:
    """Write the job's result to ``output``. A command-line job's result is moved out of the store (the store
    keeps no second copy) and the job records where; an app job's stays, since the app serves it. A folder that
    cannot take it (full, read-only) gets one line, and the result stays in the store for the next try."""
    from stereo_spot import delivery, keys, steps
    from stereo_spot.integrity import FinalDamaged
    from stereo_spot.ports import NotFound

    final = keys.final_key(job_id)

    def check(path: Path) -> None:  # the size and SHA-256 the join recorded, before anything is replaced
        steps.verify_final(backend, job_id, path)

    if not backend.objects.exists(backend.output_bucket, final):
        _deliver_again(backend, job_id, output, check)
        return
    move = _result_moves_out(backend, job_id)
    if move:  # recorded first: a run of the same job that finds the store empty a moment later looks there
        backend.jobs.update(job_id, delivered_to=str(output.resolve()))
    try:
        delivery.deliver(backend.objects, backend.output_bucket, final, output, move=move, check=check)
    except NotFound:  # another run of this job moved it out in the meantime
        _deliver_again(backend, job_id, output, check)
        return
    except FinalDamaged as exc:
        die(f"{one_line(exc)}; nothing was written to {output}")
    except OSError as exc:  # full, read-only, gone: the store's copy is only removed once the output is whole
        die(f"cannot write {output}: {exc.strerror or exc}; job {job_id} keeps its result: make room (or make "
            f"the folder writable) and run the same command again")
    print_result(str(output))


def _deliver_again(backend, job_id: str, output: Path, check) -> None:
    """The result was moved out of the store by an earlier delivery: it is where the job says, if it is still
    what the join wrote; copied from there when another output is asked for."""
    from stereo_spot import delivery, steps
    from stereo_spot.integrity import FinalDamaged

    job = steps.require_job(backend, job_id)
    delivered = Path(job.delivered_to) if job.delivered_to else None
    if delivered is None or not delivered.is_file():
        die(f"job {job_id} has no result in the store any more (a finished job's result is moved to its output, "
            f"or it was removed){f' and {delivered} is gone' if delivered else ''}: nothing to write to {output}")
    try:
        check(delivered)
    except FinalDamaged:
        die(f"job {job_id}'s result was written to {delivered} and has changed since: nothing was written to "
            f"{output}; convert the input again with --fresh")
    if delivered != output.resolve():
        import shutil

        try:
            delivery.write_atomically(output, lambda tmp: shutil.copyfile(delivered, tmp))
        except OSError as exc:
            die(f"cannot write {output}: {exc.strerror or exc}; the result stays at {delivered}")
    print_result(str(output))


def _result_moves_out(backend, job_id: str) -> bool:
    """A job whose source is a reference to the user's file came from the command line: its result is the
    user's too, and leaves the store. An app upload's job keeps its result in the store for the app."""
    from stereo_spot import keys

    is_reference = getattr(backend.objects, "is_reference", None)
    return is_reference is not None and is_reference(backend.input_bucket, keys.input_key(job_id))


@app.command()
def resume(job_id: Annotated[str, typer.Argument(help="The job to finish: its id, or the first characters of it.")],
           output: Annotated[Path | None, typer.Option("-o", "--output", help="Also copy the result here.")] = None,
           workers: Annotated[int | None, typer.Option(min=1)] = None,
           device: DeviceOption = None) -> None:
    """Finish an interrupted or failed job on this machine (completed segments are kept)."""
    from stereo_spot import steps
    from stereo_spot.adapters import build_backend

    _check_device(device)
    try:
        backend = build_backend()
        job_id = steps.resolve_job_id(backend, job_id)
        steps.require_job(backend, job_id)
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc)
    _run_with_progress(backend, job_id, workers, device)
    if output is not None:
        _deliver(backend, job_id, output)


@app.command()
def delete(job_ids: Annotated[list[str], typer.Argument(help="The jobs to delete: ids, or their first characters.",
                                                        show_default=False,
                                                        metavar="JOB...")]) -> None:
    """Delete jobs and every file they have (source, segments, result); a running job is stopped first."""
    from stereo_spot import steps
    from stereo_spot.adapters import build_backend
    from stereo_spot.config import get_settings
    from stereo_spot.runner import stop_background

    try:
        config = get_settings()
        backend = build_backend(config)
        for job_id in [steps.resolve_job_id(backend, text) for text in job_ids]:  # all valid before any goes
            job = steps.require_job(backend, job_id)
            if not job.status.is_terminal and config.storage_adapter == "local":
                stop_background(job_id, config.stereo_spot_home)  # nothing more is written after the delete
            steps.delete_job(backend, job_id)
            print_result(f"deleted {job_id}")
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc)


@app.command()
def gc(older_than: Annotated[float | None, typer.Option("--older-than", min=0.0, help="Also delete completed and "
                                                        "failed jobs finished more than this many days ago.")] = None,
       orphans: Annotated[bool, typer.Option("--orphans", help="Also remove job folders that have no job record "
                                             "(left by a lost or replaced database).")] = False,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False
       ) -> None:
    """Show the storage used and remove what is no longer needed: completed jobs' segments, deleted jobs'
    leftovers, partial writes of killed runs and, with --older-than, old jobs; with --orphans, job folders
    without a record."""
    from datetime import timedelta

    from stereo_spot import gc as collector
    from stereo_spot.adapters import build_backend
    from stereo_spot.units import format_bytes

    try:
        backend = build_backend()
        used = collector.storage_used(backend)
        removals = collector.plan(backend, older_than=timedelta(days=older_than) if older_than is not None else None)
        scraps = collector.scraps(backend)
        lost = collector.orphans(backend)
        kept = collector.undelivered(backend)
        scrap_bytes = sum(p.stat().st_size for p in scraps if p.exists())
        if not dry_run:
            collector.collect(backend, removals)
            collector.remove_scraps(scraps)
            if orphans:
                collector.collect_orphans(backend, lost)
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc)
    table = Table("area", "objects", "size", title="storage", title_justify="left")
    for area, (count, size) in used.items():
        table.add_row(area, str(count), format_bytes(size))
    console.print(table)
    verb = "would remove" if dry_run else "removed"
    for removal in removals:
        console.print(f"{verb} {removal.kind.value}: job {removal.job.job_id} ({escape(removal.job.title)}), "
                      f"{removal.objects} objects, {format_bytes(removal.bytes)}", highlight=False)
    for waiting in kept:
        console.print(f"kept: job {waiting.job.job_id} ({escape(waiting.job.title)}), its {waiting.kind.value}, "
                      f"{format_bytes(waiting.bytes)}: run its convert command again, or `stereo-spot resume "
                      f"{waiting.job.job_id} -o FILE`", highlight=False, soft_wrap=True)
    if scraps:
        console.print(f"{verb} {len(scraps)} partial writes left by killed runs, {format_bytes(scrap_bytes)}",
                      highlight=False)
    if orphans:
        for orphan in lost:
            console.print(f"{verb} orphan: job {orphan.job_id} (no record), {len(orphan.objects)} objects, "
                          f"{format_bytes(orphan.bytes)}", highlight=False)
    else:
        _warn_orphans(lost)
    total = sum(r.bytes for r in removals) + scrap_bytes + (sum(o.bytes for o in lost) if orphans else 0)
    jobs_count = len(removals) + (len(lost) if orphans else 0)
    console.print(f"{verb} {format_bytes(total)} in {jobs_count} jobs" + (" and partial writes" if scraps else "")
                  if removals or scraps or (orphans and lost) else "nothing to remove", highlight=False)


def _warn_orphans(lost) -> None:
    """Job folders without a record are not listed anywhere else: say so, with what they hold."""
    from stereo_spot.units import format_bytes

    if lost:
        console.print(f"[yellow]warning:[/] {len(lost)} job folders in the store have no job record (a lost, "
                      f"emptied or replaced database?), {format_bytes(sum(o.bytes for o in lost))}: "
                      "`stereo-spot gc --orphans --dry-run` lists them, `stereo-spot gc --orphans` removes them",
                      highlight=False, soft_wrap=True)


@app.command()
def jobs(limit: Annotated[int, typer.Option(min=1, max=1000, help="Completed jobs to show.")] = 20,
         cursor: Annotated[str | None, typer.Option(help="Page cursor printed by the previous page.")] = None
         ) -> None:
    """List jobs: in progress first, then completed (newest first)."""
    from stereo_spot import gc as collector
    from stereo_spot.adapters import build_backend
    from stereo_spot.config import get_settings
    from stereo_spot.runner import is_interrupted

    try:
        config = get_settings()
        backend = build_backend(config)
        in_progress = backend.jobs.list_in_progress(limit=100) if cursor is None else []
        page = backend.jobs.list_completed(limit=limit, cursor=cursor)
        failed = backend.jobs.list_by_status(JobStatus.FAILED, limit=10).items if cursor is None else []
        # on this machine the store is a folder, cheap to walk; a bucket is left to `gc`
        lost = collector.orphans(backend) if config.storage_adapter == "local" and cursor is None else []
    except Exception as exc:  # noqa: BLE001
        _report_failure(exc)
    _warn_orphans(lost)
    header = ("job id", "title", "format", "status", "segments", "created", "took")
    rows = []
    for job in [*in_progress, *page.items, *failed]:
        done = len(backend.completions.query_by_job(job.job_id)) if job.total_segments else 0
        took = f"{job.conversion_seconds:.0f} s" if job.conversion_seconds is not None else ""
        status = job.status.value + (f": {job.failure_reason}" if job.failure_reason else "")
        if is_interrupted(backend, job, config.stereo_spot_home):
            status = f"interrupted (stereo-spot resume {job.job_id[:8]})"
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

    print_result(str(write_sample(path, seconds, (width, height), fps)))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8501,
       address: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
       no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without sign-in on a non-loopback address "
                                             "(UI_AUTH=none): anyone who can reach it sees every job.")] = False
       ) -> None:
    """Start the Streamlit app (this process becomes the server, so signals reach it)."""
    from stereo_spot.config import get_settings
    from stereo_spot.errors import require_extra

    try:
        require_extra("streamlit", "ui", "the app")
        config = get_settings()
    except (UserError, ValueError) as exc:
        die(one_line(exc))
    from stereo_spot.ui.auth import header_mode_unprotected, is_loopback

    if config.ui_auth == "none" and not is_loopback(address) and not no_auth:
        die(f"UI_AUTH=none serves every job to anyone who can reach {address}; bind to 127.0.0.1, set "
            "UI_AUTH=header (behind an authenticating proxy) or UI_AUTH=oidc, or pass --no-auth")
    if header_mode_unprotected(config) and not is_loopback(address):
        die(f"UI_AUTH=header on {address} would let anyone who reaches it name themselves in "
            f"{config.ui_auth_header}; bind to 127.0.0.1 behind the proxy, or set UI_AUTH_PROXY_SECRET (sent by "
            "the proxy in X-Auth-Proxy-Secret) or UI_AUTH_TRUSTED_PROXIES (the proxy's addresses)")
    import stereo_spot.ui as ui_package  # the repository's ui/ when installed editable, else the installed copy

    app_path = Path(ui_package.__file__).resolve().parent / "app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", address,
               "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    sys.stdout.flush()
    sys.stderr.flush()
    # Replace this process rather than wait on a child: a SIGTERM from a service manager or Kubernetes then
    # reaches streamlit itself, and nothing is left running when it stops.
    os.execv(sys.executable, command)


def _register_optional_commands() -> None:
    """Commands owned by the engine and cloud modules; each module keeps its heavy imports inside."""
    from stereo_spot.cli import aws as cli_aws
    from stereo_spot.cli import models as cli_models

    app.add_typer(cli_models.app, name="models", help="Depth models by name: list, download, verify.")
    app.add_typer(cli_aws.app, name="aws",
                  help="AWS resources and runbooks: bootstrap, destroy, recover-chunking, queues, dlq.")
    app.command("worker")(cli_aws.worker_command)
    from stereo_spot.cli import ops as cli_ops

    cli_ops.register(app)
    try:
        from stereo_spot.pipelines import cli as pipelines_cli
    except ImportError:  # pragma: no cover
        pipelines_cli = None
    if pipelines_cli is not None:
        app.command("compile")(pipelines_cli.compile_command)
        app.command("submit")(pipelines_cli.submit_command)
    from stereo_spot.components import cli as components_cli

    app.add_typer(components_cli.app, name="step")


_register_optional_commands()


def main() -> None:
    started = time.monotonic()
    try:
        app(prog_name="stereo-spot")  # the same name (and shell completion) for ``python -m stereo_spot``
    except SettingsError as exc:  # a bad variable, whichever command read it first: one line, no traceback
        if reporting_settings().stereo_spot_debug:
            console.print_exception()
        print_error(str(exc))
        raise SystemExit(1) from None
    finally:
        if reporting_settings().stereo_spot_debug:
            console.print(f"took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
