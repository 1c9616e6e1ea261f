"""``stereo-spot step <name>``: one pipeline step as a command, what Kubeflow's container components run in the
image (its own console entry point, no kfp inside). Each command calls the same function as Argo's Hera runner
and writes its result to the output file the component names (``--<output>-path``), which the KFP launcher reads;
the exit code is the step's (0 done, 2 a user error, 1 retryable).

Registered on the main app by ``stereo_spot.cli.main``; the step modules are imported inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run one pipeline step (what Kubeflow's container components call).")

Key = Annotated[str, typer.Option(help="The uploaded source: input/<job id>/source.mp4 (URL-encoded or not).")]


@app.command("chunk")
def chunk_command(
    bucket: Annotated[str, typer.Option(help="Bucket of the uploaded source.")],
    key: Key,
    shards_path: Annotated[str, typer.Option(help="Where to write the fan-out list (JSON).")],
    output_format: Annotated[str, typer.Option(help="Override the job's format; empty: keep it.")] = "",
    divergence: Annotated[str, typer.Option(help="Override the job's divergence; empty: keep it.")] = "",
    convergence: Annotated[str, typer.Option(help="Override the job's convergence; empty: keep it.")] = "",
    baseline_mm: Annotated[str, typer.Option("--baseline-mm", help="Override the job's spatial-video baseline "
                                             "(mm); empty: keep it.")] = "",
    hfov: Annotated[str, typer.Option(help="Override the job's spatial-video horizontal field of view (degrees); "
                                      "empty: keep it.")] = "",
    gpu_workers: Annotated[str, typer.Option(help="Most convert pods (shards) for this job.")] = "8",
    depth_video: Annotated[str, typer.Option(help="The depth video to render from (input/<job id>/depth.mkv); "
                                             "empty: estimate the depth.")] = "",
) -> None:
    """Split the source into segments; write one shard index per GPU worker."""
    from stereo_spot.components._common import write_output
    from stereo_spot.components.chunk import chunk

    write_output(shards_path, chunk(bucket, key, output_format, divergence, convergence, baseline_mm, hfov,
                                    gpu_workers, depth_video))


@app.command("convert")
def convert_command(
    key: Key,
    shard_index: Annotated[int, typer.Option(help="The shard of the job's segments to convert.")],
    segments_path: Annotated[str, typer.Option(help="Where to write the shard's segment count.")],
    gpu_workers: Annotated[int, typer.Option(help="The most shards, as chunk planned them.")] = 8,
) -> None:
    """Convert one shard of segments to 3D."""
    from stereo_spot.components._common import write_output
    from stereo_spot.components.convert import convert

    write_output(segments_path, convert(key, shard_index, gpu_workers))


@app.command("concat")
def concat_command(
    key: Key,
    converted: Annotated[str, typer.Option(help="JSON list of the convert tasks' segment counts.")],
    final_key_path: Annotated[str, typer.Option(help="Where to write the final video's key.")],
    report_path: Annotated[str | None, typer.Option(help="Where to write the comfort report (Markdown).")] = None,
    preview_path: Annotated[str | None, typer.Option(help="Where to write the report with a preview still "
                                                          "(HTML).")] = None,
) -> None:
    """Join the converted segments with the source's audio; write the run's outputs."""
    import shutil
    import tempfile

    from stereo_spot.components._common import write_output
    from stereo_spot.components.concat import assemble
    from stereo_spot.components.run_outputs import REPORT_HTML, REPORT_MARKDOWN

    with tempfile.TemporaryDirectory(prefix="stereo-spot-outputs-") as outputs:
        write_output(final_key_path, assemble(key, _segment_total(converted), outputs))
        for name, path in ((REPORT_MARKDOWN, report_path), (REPORT_HTML, preview_path)):
            if not path:
                continue
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if (Path(outputs) / name).is_file():
                shutil.copyfile(Path(outputs) / name, path)
            else:  # Kubeflow uploads every declared output: say why it is empty (the log says more)
                Path(path).write_text("The run's outputs could not be written; see the concat task's log.\n")


@app.command("fail")
def fail_kfp_command(
    key: Key,
    status: Annotated[str, typer.Option(help="The pipeline's final status (PipelineTaskFinalStatus as JSON).")],
) -> None:
    """Kubeflow's exit task: mark the job failed unless the run succeeded."""
    from stereo_spot.components.fail import fail_kfp_status

    fail_kfp_status(key, status)


def _segment_total(converted: str) -> int:
    """The sum of the shards' segment counts; -1 (not counted) when the engine passed no list."""
    try:
        counts = json.loads(converted)
    except json.JSONDecodeError:
        return -1
    if not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
        return -1
    return sum(counts)
