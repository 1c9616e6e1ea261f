"""Runs of one input that overlap or follow a failure: two commands started together share the job (each
segment converted once, under its lease), the same command resumes a failed job (``--fresh`` starts over), and
a re-run after a kill during the join takes the dead run's lock over at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from stereo_spot import integrity, keys, leases, steps
from stereo_spot.adapters.local import local_backend
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample

SIZE, FPS = (160, 96), 24
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=3.0, size=SIZE, fps=FPS, gop=6)


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.slow
def test_two_commands_started_together_share_the_job(home, clip, tmp_path):
    """Before: both chunked one job and both exited 1 ("… is chunking_complete, expected chunking_in_progress").
    Each process reports (at -v) the segments it converted: together they are every segment, each once.
    Breakage caught: convert without the segment lease (a segment converted by both), chunk without its lease
    (a ConflictError exit 1), the job looked up outside the input's lease (two jobs)."""
    out = tmp_path / "out" / "x.mp4"
    command = [sys.executable, "-m", "stereo_spot", "-v", "convert", str(clip), "-o", str(out),
               "--segment-seconds", "0.5", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, results, strict=True):
        assert run.returncode == 0, stderr[-3000:]
    converted = [sorted(int(n) for n in re.findall(r"segment (\d+) of \d+: ", stderr)) for _, stderr in results]
    backend = local_backend(home)
    (job,) = backend.jobs.list_completed().items  # one job for both
    print(f"\nsegments converted: first process {converted[0]}, second {converted[1]}, "
          f"of {job.total_segments}")
    assert sorted(converted[0] + converted[1]) == list(range(job.total_segments))
    assert all(stdout.strip().endswith(str(out)) for stdout, _ in results)
    assert integrity.digest(out).sha256 == job.final_sha256
    assert decoded_frames(out) == 3 * FPS


def test_the_same_command_resumes_a_failed_job(home, clip, tmp_path, monkeypatch):
    """Before: after a "No space left on device" the same command made a new job and converted every segment
    again. Breakage caught: the lookup ignoring failed jobs (a new job id), reopening losing the converted
    segments (their records rewritten), ``--fresh`` ignored."""
    out = tmp_path / "x.mp4"
    command = ["convert", str(clip), "-o", str(out), "--segment-seconds", "0.5", "--workers", "1"]
    convert = steps.convert

    def disk_full_at_segment_3(backend, job_id, index, **kwargs):
        if index == 3:
            raise OSError(28, "No space left on device")
        return convert(backend, job_id, index, **kwargs)

    monkeypatch.setattr(steps, "convert", disk_full_at_segment_3)
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 1 and "No space left on device" in first.output
    backend = local_backend(home)
    (failed,) = backend.jobs.list_by_status(JobStatus.FAILED).items
    kept = {c.segment_index: c.completed_at for c in backend.completions.query_by_job(failed.job_id)}
    assert sorted(kept) == [0, 1, 2]

    monkeypatch.setattr(steps, "convert", convert)  # space freed
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert f"resuming failed job {failed.job_id} (" in again.output
    job = backend.jobs.get(failed.job_id)
    assert job.status == JobStatus.COMPLETED
    records = {c.segment_index: c.completed_at for c in backend.completions.query_by_job(job.job_id)}
    assert all(records[i] == kept[i] for i in kept)  # not converted again
    assert decoded_frames(out) == 3 * FPS

    fresh = CliRunner().invoke(app, [*command, "--fresh"])
    assert fresh.exit_code == 0, fresh.output
    assert "resuming" not in fresh.output
    assert len(backend.jobs.list_completed().items) == 2


KILLED_CONCAT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import stereo_spot.media.concat as media_concat
    from stereo_spot import steps
    from stereo_spot.adapters.local import local_backend

    def hang(*args, **kwargs):
        print("joining", flush=True)
        time.sleep(3600)
    media_concat.concat_segments = hang
    steps.concat(local_backend(Path(sys.argv[1])), sys.argv[2])
""")


def test_a_rerun_after_a_kill_during_the_join_takes_the_lock_over_at_once(home, backend, clip, monkeypatch):
    """Before: the re-run waited ~26 s for the dead run's lock, silently. Here the lock lives its production TTL
    and any wait fails the test. Breakage caught: the dead holder not recognised (a sleep)."""
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    for index in steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id)).segment_indices:
        steps.convert(backend, job.job_id, index)
    holder = subprocess.Popen([sys.executable, "-c", KILLED_CONCAT, str(home), job.job_id], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == b"joining"
        assert backend.reassembly.holder(leases.reassembly_lease(job.job_id)) is not None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    def no_waiting(seconds):
        raise AssertionError(f"waited {seconds} s for a dead holder")

    monkeypatch.setattr(leases.time, "sleep", no_waiting)
    assert run_job(backend, job.job_id, workers=1).status == JobStatus.COMPLETED


LIVE_CHUNK_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stereo_spot import leases
    from stereo_spot.adapters.local import local_backend

    home, job_id, log = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    backend, owner = local_backend(home), leases.this_owner()
    assert backend.reassembly.try_acquire(leases.chunk_lease(job_id), owner, ttl_seconds=3600)
    print("held", flush=True)
    while "waiting for job" not in log.read_text():  # released once the waiter has said whom it waits for
        time.sleep(0.1)
    backend.reassembly.release(leases.chunk_lease(job_id), owner)
""")


def test_a_live_holder_is_named_at_the_default_verbosity(home, backend, clip, tmp_path):
    """`resume` of a job another live process is chunking: one line names that process's pid, without -v, and
    the run goes on once the lease is released. Breakage caught: the wait logged below the default level (the
    holder never releases: the test times out), or not at all."""
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    log = tmp_path / "stderr.txt"
    log.write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", LIVE_CHUNK_HOLDER, str(home), job.job_id, str(log)],
                              stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with open(log, "w") as stderr:
            done = subprocess.run([sys.executable, "-m", "stereo_spot", "resume", job.job_id, "--workers", "1"],
                                  stdout=subprocess.PIPE, stderr=stderr, env=env, timeout=120)
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    waits = [line for line in text.splitlines() if "waiting for job" in line]
    assert len(waits) == 1 and f"waiting for job {job.job_id} held by pid {holder.pid} on " in waits[0], text
    assert backend.jobs.get(job.job_id).status == JobStatus.COMPLETED


def test_a_run_waiting_for_a_join_that_fails_elsewhere_says_so(home, backend, clip):
    """While this command waits for another live run's join, that run fails the job: the command ends in one
    line with the recorded reason (it used to say the job "is being assembled by another run"). The failure is
    recorded the moment the wait is announced, so nothing depends on timing. Breakage caught: the FAILED branch
    dropped (the old message)."""
    import logging

    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    for index in steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id)).segment_indices:
        steps.convert(backend, job.job_id, index)
    assert backend.reassembly.try_acquire(leases.reassembly_lease(job.job_id), leases.this_owner(), 3600)

    class FailWhenWaiting(logging.Handler):
        def emit(self, record):
            if "waiting for job" in record.getMessage():
                steps.fail(backend, job.job_id, "concat: No space left on device")

    handler = FailWhenWaiting()
    logging.getLogger("stereo_spot").addHandler(handler)
    try:
        result = CliRunner().invoke(app, ["resume", job.job_id])
    finally:
        logging.getLogger("stereo_spot").removeHandler(handler)
    assert result.exit_code == 1
    assert f"job {job.job_id} failed in another run: concat: No space left on device" in " ".join(
        result.output.split())  # the console wraps long lines
