"""`stereo-spot convert` plans every output before anything runs: two inputs never write one file and no output
overwrites an input; and a frame too large for the machine's memory is refused up front."""

from __future__ import annotations

from typer.testing import CliRunner

from stereo_spot.adapters import build_backend
from stereo_spot.cli import app
from stereo_spot.models import JobStatus
from stereo_spot.sample import write_sample


def _run(*args):
    return CliRunner().invoke(app, ["convert", *map(str, args), "--workers", "1"], env={"COLUMNS": "200"})


def _no_jobs(home) -> bool:
    backend = build_backend()
    return not backend.jobs.list_in_progress(limit=10) and not any(
        backend.jobs.list_by_status(status, limit=10).items for status in (JobStatus.COMPLETED, JobStatus.FAILED))


def test_two_inputs_with_one_output_are_refused_before_anything_runs(home, tmp_path):
    """``a/clip.mp4 b/clip.mp4 -o out``: both map to out/clip-3d_LRF_Full_SBS.mp4 and the second silently replaced
    the first. Catches the plan not checking that outputs are distinct."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_sample(tmp_path / folder / "clip.mp4", seconds=0.5, size=(96, 64), fps=12, gop=6)
    result = _run(tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "would both be written to" in result.output and "clip-3d_LRF_Full_SBS.mp4" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and _no_jobs(home)


def test_an_output_that_is_another_input_is_refused_before_anything_runs(home, tmp_path):
    """``clip.mp4 clip-3d_LRF_Full_SBS.mp4``: converting the first overwrote the second before it was converted.
    Catches the plan not checking outputs against the inputs."""
    write_sample(tmp_path / "clip.mp4", seconds=0.5, size=(96, 64), fps=12, gop=6)
    second = tmp_path / "clip-3d_LRF_Full_SBS.mp4"
    write_sample(second, seconds=0.5, size=(96, 64), fps=12, gop=6)
    before = second.read_bytes()
    result = _run(tmp_path / "clip.mp4", second)
    assert result.exit_code == 1, result.output
    assert "would overwrite" in result.output and "which is also an input" in result.output
    assert second.read_bytes() == before and _no_jobs(home)
