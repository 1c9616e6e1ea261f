"""Check before work, and a delivery that fails after the conversion is retried without converting again.

Full and read-only folders are real: small tmpfs mounts (``mount -t tmpfs -o size=…``, ``-o ro``), since a chmod
does not stop root. Without the right to mount (not root, no CAP_SYS_ADMIN) these tests are skipped.

What each test is there to catch:
- the room check dropped or run after the conversion: a full or read-only output folder, or a home without room
  for the segments, must fail before any job exists (planted: ``_check_room`` returning at once);
- a delivery failure after a completed conversion ending in a traceback, or the same command converting again
  (planted: ``_undelivered_job`` returning None; ``delivery_error`` returning False).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import stereo_spot.runner as runner
from stereo_spot import delivery, keys
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat
from stereo_spot.sample import write_sample

WIDE = {"COLUMNS": "500"}


@pytest.fixture
def mount(tmp_path):
    """``mount(folder, size, read_only=False)``: a tmpfs there, unmounted after the test."""
    mounted: list[Path] = []

    def _mount(folder: Path, size: str, read_only: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield _mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def clip(tmp_path):
    return write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)


def _convert(clip: Path, output: Path):
    return CliRunner().invoke(app, ["convert", str(clip), "-o", str(output), "--segment-seconds", "0.5",
                                    "--workers", "1"], env=WIDE)


def _no_jobs(backend) -> bool:
    return not backend.jobs.list_in_progress() and not backend.jobs.list_completed().items \
        and not backend.jobs.list_by_status(JobStatus.FAILED).items


def test_the_estimate_scales_with_the_layout_and_the_window():
    full = delivery.estimate(1000, ConversionSettings())
    half = delivery.estimate(1000, ConversionSettings(output_format=OutputFormat.HSBS))
    part = delivery.estimate(1000, ConversionSettings(start=0.0, duration=5.0), duration_seconds=10.0)
    assert full.result == 2 * half.result and part.result == full.result // 2
    assert full.work == 1000 + 2 * full.result and full.scratch == full.result


def test_folders_on_one_filesystem_need_room_for_everything_they_hold_together(tmp_path, mount):
    """Home, scratch folder and output on one small disk: each alone would fit, together they do not."""
    disk = mount(tmp_path / "disk", "512k")
    need = delivery.SpaceNeeded(result=100_000, work=350_000, scratch=200_000)
    with pytest.raises(delivery.NoRoom, match=r"the conversion's segments and result and the scratch copies need "
                                              r"about 537\.1 KB"):
        delivery.check_room(disk / "out" / "x.mp4", disk / "home", need, scratch=disk / "work")
    delivery.check_room(disk / "out" / "x.mp4", disk / "home", need, scratch=tmp_path / "work")  # scratch elsewhere


def test_a_full_output_folder_is_refused_before_any_work(backend, clip, tmp_path, mount):
    out = mount(tmp_path / "out", "8k")
    result = _convert(clip, out / "clip-3d.mp4")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"not enough space in {out}" in result.output and "free" in result.output
    assert _no_jobs(backend)


def test_a_read_only_output_folder_is_refused_before_any_work(backend, clip, tmp_path, mount):
    out = mount(tmp_path / "out", "1m", read_only=True)
    result = _convert(clip, out / "clip-3d.mp4")
    assert result.exit_code == 1 and f"cannot write to {out}: Read-only file system" in result.output
    assert _no_jobs(backend)


def test_a_home_without_room_for_the_segments_is_refused(tmp_path, clip, mount, monkeypatch):
    home = mount(tmp_path / "small-home", "192k")
    monkeypatch.setenv("STEREO_SPOT_HOME", str(home))
    result = _convert(clip, tmp_path / "out" / "clip-3d.mp4")
    assert result.exit_code == 1 and f"not enough space in {home}" in result.output
    assert "segments" in result.output


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_failed_delivery_is_retried_by_the_same_command_without_converting(backend, clip, tmp_path, mount,
                                                                             monkeypatch, fault):
    out = mount(tmp_path / "out", "2m")
    output = out / "clip-3d.mp4"
    real_run_job, runs = runner.run_job, []

    def run_then_lose_the_folder(*args, **kwargs):
        """The conversion completes; meanwhile the output folder fills up or is remounted read-only."""
        runs.append(args[1])
        job = real_run_job(*args, **kwargs)
        if fault == "full":
            filler = out / "filler"
            with open(filler, "wb") as handle:
                try:
                    while True:
                        handle.write(b"\0" * 65536)
                except OSError:
                    pass
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
        return job

    monkeypatch.setattr(runner, "run_job", run_then_lose_the_folder)
    first = _convert(clip, output)
    assert first.exit_code == 1 and "Traceback" not in first.output
    expected = "No space left on device" if fault == "full" else "Read-only file system"
    assert f"cannot write {output}: {expected}" in first.output and "run the same command again" in first.output
    job_id = runs[0]
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job_id))
    assert not output.exists() and not list(out.glob(".*.part"))

    listed = CliRunner().invoke(app, ["gc"], env=WIDE)
    assert f"kept: job {job_id} (clip), its result not yet written to its output" in listed.output
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job_id))  # gc keeps it for the retry

    if fault == "full":
        (out / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(out)], check=True)
    again = _convert(clip, output)
    assert again.exit_code == 0, again.output
    assert runs == [job_id]  # delivered, not converted again
    assert f"job {job_id} is converted already" in again.output
    assert output.is_file() and output.stat().st_size > 0
    assert not backend.objects.exists(backend.output_bucket, keys.final_key(job_id))  # moved out, no copy left


def test_resume_of_a_delivered_job_copies_the_delivered_result_or_says_in_one_line_it_is_gone(backend, clip,
                                                                                                tmp_path):
    output = tmp_path / "clip-3d.mp4"
    assert _convert(clip, output).exit_code == 0
    job = backend.jobs.list_completed().items[0]
    assert job.delivered_to == str(output.resolve())
    copy = tmp_path / "x.mp4"
    again = CliRunner().invoke(app, ["resume", job.job_id, "-o", str(copy)], env=WIDE)
    assert again.exit_code == 0, again.output
    assert copy.read_bytes() == output.read_bytes()  # from where the first delivery moved it, checked first
    output.write_bytes(output.read_bytes()[:-10])  # the user edited (or damaged) their copy
    changed = CliRunner().invoke(app, ["resume", job.job_id, "-o", str(tmp_path / "y.mp4")], env=WIDE)
    assert changed.exit_code == 1 and "has changed since" in changed.output and "Traceback" not in changed.output
    output.unlink()
    gone = CliRunner().invoke(app, ["resume", job.job_id, "-o", str(tmp_path / "y.mp4")], env=WIDE)
    assert gone.exit_code == 1 and "Traceback" not in gone.output
    assert f"job {job.job_id} has no result in the store any more" in gone.output and "is gone" in gone.output
    assert not (tmp_path / "y.mp4").exists()


def test_resume_after_the_stored_result_was_removed_says_so_in_one_line(backend, clip, tmp_path):
    from stereo_spot import steps
    from stereo_spot.runner import run_job

    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)  # as the app stores it: the result stays in the store
    run_job(backend, job.job_id, workers=1)
    backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id)).unlink()
    result = CliRunner().invoke(app, ["resume", job.job_id, "-o", str(tmp_path / f"{uuid.uuid4().hex}.mp4")],
                                env=WIDE)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "has no result in the store any more" in result.output


def test_a_still_image_named_mp4_is_refused_an_mp4_output_in_one_line(home, tmp_path):
    """It was written as ``…out.png`` while ``-o …out.mp4`` was asked for: a script then finds no file."""
    import cv2
    import numpy as np

    picture = tmp_path / "photo.mp4"
    ok, data = cv2.imencode(".png", np.full((48, 64, 3), 128, np.uint8))
    picture.write_bytes(data.tobytes())
    asked = tmp_path / "out.mp4"
    refused = CliRunner().invoke(app, ["convert", str(picture), "-o", str(asked)], env=WIDE)
    assert refused.exit_code == 1 and "is a still image" in refused.output and str(asked.with_suffix(".png")) \
        in refused.output
    assert list(tmp_path.glob("out.*")) == []
    done = CliRunner().invoke(app, ["convert", str(picture), "-o", str(asked.with_suffix(".png"))], env=WIDE)
    assert done.exit_code == 0, done.output
    assert asked.with_suffix(".png").is_file()
