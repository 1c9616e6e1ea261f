"""On this machine (local storage) at most ``MAX_CONCURRENT_JOBS`` conversions run at once; every runner already
uses all the cores, so more would only make each slower. The others wait, oldest first: a job is queued when its
source is stored (status ``created``, ``uploaded_at`` set) and no runner works on it yet.

A small dispatcher process (``python -m stereo_spot.ui.local_queue HOME``) starts runners as slots free up, so the
queue moves with no page open. One dispatcher at a time: it holds an exclusive lock on ``{home}/queue.lock`` while
it runs and exits when the queue is empty (after checking once more with the lock released, so a job queued just as
it was leaving is not stranded). The page starts a job itself when a slot is free, and the dispatcher when not.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from stereo_spot.config import Settings
from stereo_spot.models import Job, JobStatus
from stereo_spot.ports import Backend

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
# Jobs looked at when working out the queue (oldest first); a queue longer than this waits its turn anyway.
SCAN_LIMIT = 1000


def _pid_file(home: Path, job_id: str) -> Path:
    from stereo_spot.runner import log_path

    return log_path(home, job_id).with_suffix(".pid")


def runner_alive(home: Path, job_id: str) -> bool:
    """A runner process of this job is alive (its pid file names a live ``stereo_spot.runner`` of the job)."""
    try:
        pid = int(_pid_file(home, job_id).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a finished (zombie) process
    except (OSError, ValueError):
        return False
    return b"stereo_spot.runner" in command and job_id.encode() in command


def queued(backend: Backend, home: Path) -> list[Job]:
    """Jobs waiting for a runner, oldest first."""
    waiting = [job for job in backend.jobs.list_by_status(JobStatus.CREATED, limit=SCAN_LIMIT).items
               if job.uploaded_at is not None and not runner_alive(home, job.job_id)]
    return sorted(waiting, key=lambda job: (job.uploaded_at, job.job_id))


def running(backend: Backend, home: Path) -> int:
    return sum(runner_alive(home, job.job_id) for job in backend.jobs.list_in_progress(limit=SCAN_LIMIT))


def place(backend: Backend, home: Path, job_id: str) -> int | None:
    """1 for the next job to start; None when the job is not waiting."""
    for position, job in enumerate(queued(backend, home), start=1):
        if job.job_id == job_id:
            return position
    return None


@contextlib.contextmanager
def _exclusive(home: Path, *, wait: bool) -> Iterator[bool]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "queue.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dispatch_once(backend: Backend, home: Path, cap: int) -> list[str]:
    """Start runners for the oldest waiting jobs while fewer than ``cap`` run; the ids started."""
    from stereo_spot.runner import start_background

    started = []
    with _exclusive(home / "logs", wait=True):  # pages and the dispatcher never start the same job twice
        free = cap - running(backend, home)
        for job in queued(backend, home)[:max(0, free)]:
            start_background(job.job_id, home)
            started.append(job.job_id)
    return started


def ensure_dispatcher(home: Path) -> None:
    """Start the dispatcher in the background (it exits at once when one is already running)."""
    # the dispatcher inherits the app's whole environment (its settings), with the job's storage fixed
    env = {**os.environ, "STEREO_SPOT_HOME": str(home), "STORAGE_ADAPTER": "local"}
    subprocess.Popen([sys.executable, "-m", "stereo_spot.ui.local_queue", str(home)], env=env, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def run_dispatcher(backend: Backend, home: Path, cap: int) -> None:
    while True:
        with _exclusive(home, wait=False) as mine:
            if not mine:
                return  # another dispatcher is at work
            while queued(backend, home):
                dispatch_once(backend, home, cap)
                time.sleep(POLL_SECONDS)
        if not queued(backend, home):
            return


def main(argv: list[str] | None = None) -> int:
    from stereo_spot.adapters import build_backend

    args = argv if argv is not None else sys.argv[1:]
    home = Path(args[0])
    settings = Settings(stereo_spot_home=home, storage_adapter="local")
    run_dispatcher(build_backend(settings), home, settings.max_concurrent_jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
