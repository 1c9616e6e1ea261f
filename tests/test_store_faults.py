"""Damaged or busy state on this machine: a locked job database, a lost database, scratch left by a killed run.

What each test is there to catch:
- ``convert`` against a database another process keeps locked ending in a ``StoreError`` traceback, or without
  saying who holds it (planted: ``build_backend`` back outside the command's ``try``; ``database_holders``
  returning []);
- job folders whose records were lost staying on disk unnoticed: ``jobs`` and ``gc`` must warn, ``gc --orphans``
  list and remove them, ``--dry-run`` only list (planted: ``orphans`` returning []; ``collect_orphans`` skipped);
- scratch folders and partial writes a killed run left behind surviving the next run (planted: ``remove_stale``
  returning at once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import stereo_spot.adapters.local as local
from stereo_spot import keys, steps
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample

WIDE = {"COLUMNS": "500"}


@pytest.fixture
def clip(tmp_path):
    return write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)


@pytest.fixture
def holder(backend):
    """Another process holding the job database in an exclusive transaction until the test ends."""
    code = ("import sqlite3, sys\n"
            f"c = sqlite3.connect({str(backend.jobs.db.path)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline().strip() == b"held"
        yield process
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def test_convert_against_a_locked_database_says_who_holds_it_in_one_line(backend, holder, clip, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(local, "BUSY_TIMEOUT_SECONDS", 0.5)
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(tmp_path / "x.mp4")], env=WIDE)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not a StoreError escaping as a traceback
    assert f"the job database {backend.jobs.db.path} is locked" in result.output
    assert f"pid {holder.pid}" in result.output and "stayed locked for 0.5 s" in result.output


def _converted_job(backend, clip, title: str) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), title)
    steps.store_source(backend, job.job_id, clip)
    run_job(backend, job.job_id, workers=1)
    return job.job_id


def _files_of(home, job_id: str) -> list:
    return [p for p in (home / "objects").rglob("*") if p.is_file() and job_id in p.as_posix()]


def test_a_lost_database_is_noticed_and_its_job_folders_removed_on_request(home, backend, clip):
    lost_id = _converted_job(backend, clip, "lost")
    assert _files_of(home, lost_id)
    backend.jobs.db.path.write_bytes(b"")  # emptied: SQLite takes it for a new database
    for suffix in ("-wal", "-shm"):
        backend.jobs.db.path.with_name(backend.jobs.db.path.name + suffix).unlink(missing_ok=True)
    backend = local.local_backend(home)  # the next command opens it afresh
    kept_id = _converted_job(backend, clip, "kept")  # a job recorded in the new database is no orphan

    listed = CliRunner().invoke(app, ["jobs"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "1 job folders in the store have no job record" in listed.output

    plain = CliRunner().invoke(app, ["gc"], env=WIDE)
    assert plain.exit_code == 0 and "1 job folders in the store have no job record" in plain.output
    assert _files_of(home, lost_id)  # a warning only: the records may come back

    dry = CliRunner().invoke(app, ["gc", "--orphans", "--dry-run"], env=WIDE)
    assert dry.exit_code == 0 and f"would remove orphan: job {lost_id} (no record)" in dry.output
    assert _files_of(home, lost_id)

    removed = CliRunner().invoke(app, ["gc", "--orphans"], env=WIDE)
    assert removed.exit_code == 0 and f"removed orphan: job {lost_id} (no record)" in removed.output
    assert _files_of(home, lost_id) == []
    assert backend.objects.exists(backend.output_bucket, keys.final_key(kept_id))
    assert "no job record" not in CliRunner().invoke(app, ["jobs"], env=WIDE).output


def test_gc_removes_partial_writes_of_killed_runs_and_says_how_much(home, backend, clip):
    job_id = _converted_job(backend, clip, "done")
    folder = backend.objects.local_path(backend.output_bucket, keys.final_key(job_id)).parent
    stale, live = folder / ".final.mp4.0123abcd.part", folder / ".final.mp4.4567ef01.part"
    stale.write_bytes(b"x" * 3000)
    live.write_bytes(b"y" * 10)
    os.utime(stale, (0, 0))  # untouched for decades: its writer is gone; ``live`` is being written now
    result = CliRunner().invoke(app, ["gc"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "removed 1 partial writes left by killed runs, 2.9 KB" in result.output
    assert not stale.exists() and live.exists()


def test_a_truncated_database_is_reported_in_one_line_that_says_what_to_do(home, backend, clip):
    _converted_job(backend, clip, "lost")
    path = backend.jobs.db.path
    path.write_bytes(path.read_bytes()[:5000])
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["jobs"], env=WIDE)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{path}: database disk image is malformed" in result.output and "gc --orphans" in result.output


def test_scratch_left_by_a_killed_run_is_removed_by_the_next_run(home, backend, clip, tmp_path):
    """A real SIGKILL inside a step's scratch folder, with a partial ``converted.mp4``, then the next run."""
    work = tmp_path / "work"
    code = ("import os, signal\n"
            "from stereo_spot.scratch import workdir\n"
            "with workdir('convert') as folder:\n"
            "    (folder / 'converted.mp4').write_bytes(b'partial')\n"
            "    print(folder, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert killed.returncode == -9
    left = Path(killed.stdout.strip())
    assert left.parent == work and (left / "converted.mp4").is_file()
    foreign = work / "stereo-spot-chunk-0123abcd-1-xyz"  # another host's: its process table is not ours
    foreign.mkdir()
    _converted_job(backend, clip, "next")
    assert not left.exists() and foreign.is_dir()
    assert [p.name for p in work.iterdir()] == [foreign.name]  # and the run's own folders are gone too
