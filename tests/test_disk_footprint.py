"""Disk in proportion: the command line's store keeps records, not films.

What each test is there to catch:
- a source copied into the store, or a result copied (not moved) to the output: the store's bytes after a
  conversion exceed 5 % of the source's (planted: ``reference_source`` calling ``store_source``; ``_deliver``
  with ``move=False``);
- a referenced source that changed or went away being converted anyway: ``resume`` must fail with one line naming
  the user's file (planted: ``verified_path`` returning the path unchecked);
- an app upload losing its only copy: ``store_source`` keeps it in the store until the job is deleted;
- outputs written 0600 whatever the umask (planted: ``tempfile.mkstemp`` back in ``write_atomically``).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample

FPS = 12


def _noisy_clip(path: Path, frames: int = 48, size: tuple[int, int] = (224, 128)) -> Path:
    """A losslessly coded clip of noise: about 2.5 MB, so a store holding only records is a small share of it."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"qp": "0", "g": "6", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        video.codec_context.time_base = Fraction(1, FPS)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return path


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow  # about 13 s on a shared 2-core machine
def test_the_store_keeps_records_not_films(home, tmp_path):
    source = _noisy_clip(tmp_path / "film.mp4")
    output = tmp_path / "out" / "film-3d.mp4"
    old_umask = os.umask(0o027)
    try:
        result = CliRunner().invoke(app, ["convert", str(source), "-o", str(output), "--segment-seconds", "1",
                                          "--workers", "1", "--report", str(tmp_path / "out" / "report.json")])
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.output
    assert output.is_file() and output.stat().st_size > 0
    for written in (output, tmp_path / "out" / "report.json"):  # moved, and written atomically
        assert written.stat().st_mode & 0o777 == 0o640  # the user's umask, not mkstemp's 0600
    store, source_bytes = _bytes_under(home), source.stat().st_size
    print(f"store {store} bytes (database included) for a {source_bytes}-byte source: "
          f"{100 * store / source_bytes:.1f} %")
    assert store < 0.05 * source_bytes
    assert not list((home / "objects").rglob("*.mp4"))  # neither the source nor the result stays


def _referenced_job(backend, source: Path) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.reference_source(backend, job.job_id, source)
    return job.job_id


def test_a_changed_source_stops_resume_with_one_line_naming_it(backend, tmp_path):
    source = write_sample(tmp_path / "holiday.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    job_id = _referenced_job(backend, source)
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same time: only the checksum sees it
    stat = source.stat()
    source.write_bytes(bytes(data))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    import stereo_spot.source_refs as refs

    refs._verified.clear()  # a resume is a new process: nothing hashed yet
    result = CliRunner().invoke(app, ["resume", job_id], env={"COLUMNS": "500"})
    assert result.exit_code == 1
    assert str(source) in result.output and "changed since the job started" in result.output
    assert "Traceback" not in result.output
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.FAILED and str(source) in job.failure_reason


def test_a_missing_source_stops_resume_with_one_line_naming_it(backend, tmp_path):
    source = write_sample(tmp_path / "holiday.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    job_id = _referenced_job(backend, source)
    source.unlink()
    result = CliRunner().invoke(app, ["resume", job_id], env={"COLUMNS": "500"})
    assert result.exit_code == 1 and str(source) in result.output and "is gone" in result.output
    assert "Traceback" not in result.output


def test_a_touched_but_unchanged_source_still_converts(backend, tmp_path):
    source = write_sample(tmp_path / "holiday.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    job_id = _referenced_job(backend, source)
    os.utime(source, (1_000_000_000, 1_000_000_000))
    assert run_job(backend, job_id, workers=1).status == JobStatus.COMPLETED


def test_an_app_upload_is_kept_in_the_store_until_the_job_is_deleted(backend, tmp_path):
    staged = write_sample(tmp_path / "upload.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "upload")
    steps.store_source(backend, job.job_id, staged)
    staged.unlink()  # the app's staging file goes; the store's copy is the only one
    assert run_job(backend, job.job_id, workers=1).status == JobStatus.COMPLETED
    stored = backend.objects.local_path(backend.input_bucket, keys.input_key(job.job_id))
    assert stored.is_file() and stored.is_relative_to(backend.objects.root)
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job.job_id))
    steps.delete_job(backend, job.job_id)
    assert not backend.objects.exists(backend.input_bucket, keys.input_key(job.job_id))


def test_a_reference_is_listed_and_deleted_like_an_object(backend, tmp_path):
    source = write_sample(tmp_path / "holiday.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    job_id = _referenced_job(backend, source)
    key = keys.input_key(job_id)
    assert backend.objects.list_keys(backend.input_bucket, f"input/{job_id}/") == [key]
    assert backend.objects.head(backend.input_bucket, key).size < 1000  # the record, not the film
    assert backend.objects.local_path(backend.input_bucket, key) == source.resolve()
    steps.delete_job(backend, job_id)
    assert backend.objects.list_keys(backend.input_bucket, f"input/{job_id}/") == []
    assert source.is_file()  # deleting the job never touches the user's file


@pytest.mark.parametrize("content,message", [(b"", "holiday.mp4 is empty (0 bytes)"),
                                             (b"hello\n", "holiday.mp4 is not a video file FFmpeg can read")])
def test_messages_name_the_users_file_not_the_stored_copy(home, tmp_path, content, message):
    """The source is read where the user keeps it, so what goes wrong names their file (was ``source.mp4``)."""
    source = tmp_path / "holiday.mp4"
    source.write_bytes(content)
    result = CliRunner().invoke(app, ["convert", str(source), "-o", str(tmp_path / "x.mp4")],
                                env={"COLUMNS": "500"})
    assert result.exit_code == 1 and message in result.output and "source.mp4" not in result.output
