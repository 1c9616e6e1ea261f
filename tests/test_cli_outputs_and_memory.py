"""`stereo-spot convert` plans every output before anything runs: two inputs never write one file and no output
overwrites an input; and a frame too large for the machine's memory is refused up front."""

from __future__ import annotations

from typer.testing import CliRunner

from stereo_spot.adapters import build_backend
from stereo_spot.cli.main import app
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


# --- frames too large for the machine -------------------------------------------------------------------


def test_a_still_larger_than_the_machines_memory_is_refused_up_front(home, tmp_path):
    """A 100000×100000 picture would need about 1.3 TB: refused before it is read, with its size and the limit.
    Catches the guard missing (the converter would size its buffers from the header)."""
    from stereo_spot.limits import BYTES_PER_FRAME_PIXEL, machine_memory_bytes
    from tests.media_fixtures import make_png_header

    huge = make_png_header(tmp_path / "huge.png", (100_000, 100_000))
    limit = machine_memory_bytes() // BYTES_PER_FRAME_PIXEL
    assert limit < 100_000 * 100_000
    result = _run(huge)
    assert result.exit_code == 1, result.output
    assert f"huge.png is 100000×100000 (10,000,000,000 pixels a frame); the limit is {limit:,}" in result.output
    assert "of memory" in result.output and "--max-frame-pixels raises it" in result.output
    assert not (tmp_path / "huge-3d_LRF_Full_SBS.png").exists()
    # --max-frame-pixels replaces the machine's limit: past the guard, the file's own fault is what is reported
    raised = _run(huge, "--max-frame-pixels", str(10**11))
    assert raised.exit_code != 0 and "the limit is" not in raised.output and "Traceback" not in raised.output


def test_a_video_frame_larger_than_the_memory_is_refused_and_the_option_raises_the_limit(home, tmp_path,
                                                                                          monkeypatch):
    """The machine's memory set to 64 MB (about 500,000 pixels): a one-frame 1024×576 video is refused by
    ``convert`` and ``preview`` before a frame is decoded, and converts with ``--max-frame-pixels 600000``.
    Catches the guard missing on either command, and the option not replacing the machine's limit."""
    from stereo_spot import limits
    from tests.media_fixtures import make_one_frame_h264

    monkeypatch.setattr(limits, "machine_memory_bytes", lambda: 64 * 1024**2)
    clip = make_one_frame_h264(tmp_path / "wide.mp4", (1024, 576))
    refused = _run(clip)
    assert refused.exit_code == 1, refused.output
    assert "wide.mp4 is 1024×576 (589,824 pixels a frame); the limit is 524,288" in refused.output
    assert _no_jobs(home)
    preview = CliRunner().invoke(app, ["preview", str(clip)], env={"COLUMNS": "200"})
    assert preview.exit_code == 1 and "the limit is 524,288" in preview.output
    converted = _run(clip, "--max-frame-pixels", "600000")
    assert converted.exit_code == 0, converted.output
    assert (tmp_path / "wide-3d_LRF_Full_SBS.mp4").is_file()


def test_a_written_path_is_printed_whole_on_stdout_for_scripts(tmp_path):
    """``path=$(stereo-spot sample …)`` must be the path, however long: with no terminal the console is 80 columns
    wide and it broke a longer path over two lines. Catches a result printed with wrapping (or rich markup)."""
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / "holiday [1080p] with a long title.mp4"
    deep.parent.mkdir(parents=True)
    result = CliRunner().invoke(app, ["sample", str(deep), "--seconds", "0.5", "--width", "64", "--height", "48"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert len(str(deep)) > 80 and result.stdout == f"{deep}\n"
