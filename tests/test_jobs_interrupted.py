"""``jobs`` says "interrupted" for a job in progress that no process is running, and only for such a job.

A job is being worked on while a process of it lives: one holding one of its leases (the run's own, its chunking,
a segment, the join) or its background runner (the app's). What the tests catch: a run that holds no lease
between its steps (its job shown interrupted while it runs: the run lease dropped from ``job_leases``), a
stopped-but-living process taken for dead, the background runner's pid file ignored, and a killed run still
shown by its last status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from stereo_spot import leases, runner, steps
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.sample import write_sample


def job_status(job_id: str) -> str:
    """The status column of the job's row in ``stereo-spot jobs`` (tab-separated when piped)."""
    result = CliRunner().invoke(app, ["jobs"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.output.splitlines() if line.startswith(job_id)]
    assert len(rows) == 1, result.output
    return rows[0][3]


def test_a_killed_run_shows_as_interrupted(home, tmp_path, backend):
    clip = write_sample(tmp_path / "clip.mp4", seconds=4.0, size=(160, 96), fps=24, gop=6)
    env = {**os.environ, "STEREO_SPOT_WORKDIR": str(tmp_path / "work")}
    command = [sys.executable, "-m", "stereo_spot", "-q", "convert", str(clip), "--segment-seconds", "0.5",
               "--workers", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job = None
        for _ in range(1200):  # until the run has converted a segment (or gave up: asserted below)
            jobs = backend.jobs.list_in_progress(limit=10)
            if jobs and backend.completions.query_by_job(jobs[0].job_id):
                job = jobs[0]
                break
            assert process.poll() is None, "the conversion ended before it could be stopped"
            time.sleep(0.1)
        assert job is not None
        process.send_signal(signal.SIGSTOP)  # alive, holding its leases, doing nothing: not interrupted
        assert job_status(job.job_id) == JobStatus.CHUNKING_COMPLETE.value
        process.kill()
        process.wait()
        assert job_status(job.job_id) == f"interrupted (stereo-spot resume {job.job_id[:8]})"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def chunked_job(backend):
    job = steps.create_job(backend, ConversionSettings(), "clip")
    return backend.jobs.update(job.job_id, status=JobStatus.CHUNKING_COMPLETE, total_segments=2)


def test_a_run_between_its_steps_is_not_interrupted(home, backend, chunked_job):
    """A run holds its job's run lease from start to end, so the job is not taken for abandoned while the run
    holds none of its step leases (between chunking and the first segment, while workers start)."""
    with leases.keeping(backend, leases.run_lease(chunked_job.job_id), leases.this_owner()):
        assert not runner.is_interrupted(backend, chunked_job, home)
        assert job_status(chunked_job.job_id) == JobStatus.CHUNKING_COMPLETE.value
    assert runner.is_interrupted(backend, chunked_job, home)  # released at the end of the run


def test_a_living_background_runner_is_not_interrupted(home, backend, chunked_job):
    """The app's background runner holds no lease while it starts (importing torch takes seconds): its pid file
    says it runs, as long as that pid is a runner of this job."""
    job_id = chunked_job.job_id
    # a process whose command line is a runner's of this job, without the run (it holds no lease). Its first
    # line says it runs: until the kernel has finished starting it, its /proc cmdline reads empty.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)",
                                 "stereo_spot.runner", job_id], stdout=subprocess.PIPE, text=True)
    try:
        assert stand_in.stdout.readline() == "ready\n"
        pid_file = home / "logs" / f"{job_id}.pid"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(stand_in.pid))
        assert not runner.is_interrupted(backend, chunked_job, home)
        stand_in.kill()
        stand_in.wait()
        assert runner.is_interrupted(backend, chunked_job, home)
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
            stand_in.wait()
