"""`stereo-spot convert PATH...`: folders searched recursively, several files, --skip-existing, keeping going past
a bad file, a summary, and an exit status that says whether anything failed.

What each test is there to catch: a folder search that misses a subfolder or picks up the converter's own 3D
files (a second run converting its outputs), a bad file that stops the batch or is not reported, a skip that
converts again, an output folder that does not mirror the tree, and a batch that exits 0 after a failure.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot import steps
from stereo_spot.adapters import build_backend
from stereo_spot.cli.main import app
from stereo_spot.inputs import plan
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat
from stereo_spot.sample import write_sample


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "holiday"
    (root / "day 2").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    write_sample(root / "beach.mp4", seconds=0.5, size=(96, 64), fps=12, gop=6)
    write_sample(root / "day 2" / "hike.mov", seconds=0.5, size=(96, 64), fps=12, gop=6)
    write_sample(root / ".thumbnails" / "hidden.mp4", seconds=0.5, size=(96, 64), fps=12, gop=6)
    cv2.imwrite(str(root / "day 2" / "photo.png"), np.random.default_rng(0).integers(0, 255, (40, 56, 3),
                                                                                      dtype=np.uint8))
    (root / "broken.mp4").write_text("this is not a video")
    (root / "notes.txt").write_text("not media")
    (root / "beach-3d_Half_SBS.mp4").write_bytes(b"an earlier result")  # the converter's own output name
    return root


def _run(*args):
    return CliRunner().invoke(app, ["convert", *map(str, args), "--workers", "1"], env={"COLUMNS": "200"})


def test_the_plan_finds_media_recursively_and_leaves_outputs_and_hidden_files_alone(folder):
    found = plan([folder], OutputFormat.SBS)
    assert [c.source.relative_to(folder).as_posix() for c in found] == [
        "beach.mp4", "broken.mp4", "day 2/hike.mov", "day 2/photo.png"]
    assert [c.output.name for c in found] == ["beach-3d_LRF_Full_SBS.mp4", "broken-3d_LRF_Full_SBS.mp4",
                                              "hike-3d_LRF_Full_SBS.mp4", "photo-3d_LRF_Full_SBS.png"]
    assert found[3].is_image and not found[0].is_image
    assert plan([folder / "beach.mp4", folder], OutputFormat.SBS)[0].source == folder / "beach.mp4"
    assert len(plan([folder / "beach.mp4", folder], OutputFormat.SBS)) == 4  # named twice, converted once


def test_a_folder_converts_past_a_bad_file_and_says_what_failed(home, folder):
    result = _run(folder)
    assert result.exit_code == 1, result.output  # something failed
    for path in ("beach-3d_LRF_Full_SBS.mp4", "day 2/hike-3d_LRF_Full_SBS.mp4", "day 2/photo-3d_LRF_Full_SBS.png"):
        assert (folder / path).stat().st_size > 1000, path
    assert "summary" in result.output and "3 converted, 0 skipped, 1 failed" in result.output
    assert "broken.mp4" in result.output and "Traceback" not in result.output
    assert (folder / "broken.mp4").read_text() == "this is not a video"  # the source stays
    backend = build_backend()
    failed = backend.jobs.list_by_status(JobStatus.FAILED, limit=10).items
    assert [j.title for j in failed] == ["broken"] and failed[0].failure_reason
    assert not (folder / ".thumbnails" / "hidden-3d_LRF_Full_SBS.mp4").exists()


def test_skip_existing_skips_what_is_done(home, folder):
    _run(folder)
    before = (folder / "beach-3d_LRF_Full_SBS.mp4").stat().st_mtime_ns
    jobs_before = len(build_backend().jobs.list_completed(limit=100).items)
    again = _run(folder, "--skip-existing")
    assert again.exit_code == 1  # broken.mp4 still fails
    assert "0 converted, 3 skipped, 1 failed" in again.output
    assert (folder / "beach-3d_LRF_Full_SBS.mp4").stat().st_mtime_ns == before
    assert len(build_backend().jobs.list_completed(limit=100).items) == jobs_before


def test_an_output_folder_mirrors_the_tree_and_a_clean_batch_exits_zero(home, folder, tmp_path):
    (folder / "broken.mp4").unlink()
    out = tmp_path / "3d"
    result = _run(folder, "-o", out, "--format", "hsbs")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "beach-3d_Half_SBS.mp4", "day 2/hike-3d_Half_SBS.mp4", "day 2/photo-3d_Half_SBS.png"]


def test_several_files_and_an_interrupted_job_resumes(home, folder):
    beach = folder / "beach.mp4"
    settings = ConversionSettings(segment_seconds=10.0)
    backend = build_backend()
    job = steps.create_job(backend, settings, "beach", source_fingerprint=steps.fingerprint(beach, settings))
    steps.store_source(backend, job.job_id, beach)  # as a run that was stopped after storing the source
    result = _run(beach, folder / "day 2" / "hike.mov")
    assert result.exit_code == 0, result.output
    assert f"resuming job {job.job_id}" in result.output
    assert backend.jobs.get(job.job_id).status == JobStatus.COMPLETED
    assert (folder / "day 2" / "hike-3d_LRF_Full_SBS.mov").exists() is False  # results are mp4
    assert (folder / "day 2" / "hike-3d_LRF_Full_SBS.mp4").exists()


@pytest.mark.parametrize("args,message", [
    (["--report", "r.json"], "--report works with one input file"),
    (["--title", "x"], "--title works with one input file"),
])
def test_one_file_options_are_refused_for_a_folder(home, folder, args, message):
    result = _run(folder, *args)
    assert result.exit_code == 1 and message in result.output


def test_missing_paths_and_empty_folders_are_one_line(home, tmp_path):
    (tmp_path / "empty").mkdir()
    empty = _run(tmp_path / "empty")
    assert empty.exit_code == 1 and "no videos or still images" in empty.output
    missing = _run(tmp_path / "empty", tmp_path / "nope")
    assert missing.exit_code == 1 and "does not exist" in missing.output
