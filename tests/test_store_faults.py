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

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import stereo_spot.adapters.local as local
from stereo_spot.cli import app
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
