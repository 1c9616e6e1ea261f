"""The embedded runner: the same steps the cluster runs, on this machine, segments in parallel processes.

    chunk (once) → convert the segments that have no completion yet, N at a time → concat

Resuming is free: completions are the record of what is done, so running a job again converts only what is
missing. Worker processes are started with ``spawn`` (PyTorch and fork do not mix) and each rebuilds the
backend from ``Backend.factory``; each gets an equal share of the cores for its torch threads.

How many workers and on which device is ``stereo.devices``' decision: one per GPU (worker i on ``cuda:i``, so
each GPU holds one copy of the models, loaded once and reused for every segment that worker converts), or one
per core on the CPU.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from stereo_spot import keys, leases, steps
from stereo_spot.errors import UserError, failure_reason, one_line
from stereo_spot.models import ConversionSettings, Job, JobStatus
from stereo_spot.ports import Backend

log = logging.getLogger("stereo_spot.runner")  # the same name when run as `python -m stereo_spot.runner`


@dataclass
class Progress:
    job_id: str
    stage: str  # chunk | convert | concat | done
    frames_done: int = 0
    frames_total: int | None = None
    segments_done: int = 0
    segments_total: int | None = None


ProgressCallback = Callable[[Progress], None]


def default_workers() -> int:
    """Worker processes on the CPU: one per usable core."""
    from stereo_spot.stereo.devices import usable_cores

    return usable_cores()


# --- worker processes -----------------------------------------------------------------------------------

_worker_backend: Backend | None = None
_worker_frames: mp.Queue | None = None
_worker_device: str | None = None


def _init_worker(factory: Callable[[], Backend], frames: mp.Queue, threads: int, devices: mp.Queue,
                 log_level: int = logging.WARNING) -> None:
    """Set up one worker process. ``devices`` holds one entry per worker of the plan: each process takes its
    own (worker i gets ``cuda:i``) and keeps it for every segment it converts. ``log_level`` is the parent's: a
    spawned process starts with no logging set up, and its segments' lines belong in the same story."""
    global _worker_backend, _worker_frames, _worker_device
    import torch

    from stereo_spot.logs import configure_logging

    configure_logging(logging.getLevelName(log_level))

    _worker_device = devices.get()
    if _worker_device.startswith("cuda"):
        torch.cuda.set_device(torch.device(_worker_device))
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - opencv is a dependency
        pass
    _worker_backend, _worker_frames = factory(), frames


def _convert_in_worker(job_id: str, segment_index: int) -> bool:
    """True where this worker converted the segment, False where another run holds it."""
    assert _worker_backend is not None and _worker_frames is not None
    frames = _worker_frames
    done = steps.convert_leased(_worker_backend, job_id, segment_index, device=_worker_device, progress=frames.put)
    return done is not None


# --- the job for an input --------------------------------------------------------------------------------

#: Failed jobs searched for one to resume (newest first).
_FAILED_SEARCHED = 200


def job_for_input(backend: Backend, source: Path, settings: ConversionSettings, title: str, *,
                  fresh: bool = False, before_new: Callable[[], None] | None = None,
                  depth_video: Path | None = None) -> tuple[Job, bool]:
    """The job that converts ``source`` with ``settings``, and whether it existed: the newest unfinished or
    failed job of the same input and settings (an interrupted run, a crash, a full disk, or another command
    converting it right now) is resumed, its converted segments kept; ``fresh`` starts a new job regardless.

    Two commands started together on one input hold the input's lease in turn, so the second finds the job
    the first created instead of making its own. ``before_new`` runs before a new job is made (the command
    line's check for room), and may raise to stop. The source is referenced, not copied, where the storage
    allows (``steps.reference_source``): it is the user's own file; so is ``depth_video``, the depth video the
    job renders from (``steps.store_depth_video``), stored before the source."""
    fingerprint = steps.fingerprint(source, settings, depth_video)
    name, owner = leases.input_lease(fingerprint), leases.this_owner()
    leases.acquire(backend, name, owner, job_id=f"of {source.name}", activity="looking it up or creating it")
    with leases.holding(backend, name, owner):
        job = None if fresh else _resumable(backend, fingerprint)
        existed = job is not None and job.uploaded_at is not None
        if not existed and before_new is not None:
            before_new()
        if job is None:
            job = steps.create_job(backend, settings, title, source_fingerprint=fingerprint)
        if job.uploaded_at is None:  # new, or created by a run stopped before the source was stored
            if depth_video is not None:
                steps.store_depth_video(backend, job.job_id, depth_video, by_reference=True)
            job = steps.reference_source(backend, job.job_id, source)
        return job, existed


def _resumable(backend: Backend, fingerprint: str) -> Job | None:
    candidates = [*backend.jobs.list_in_progress(limit=1000),
                  *backend.jobs.list_by_status(JobStatus.FAILED, limit=_FAILED_SEARCHED).items]
    matching = [job for job in candidates if job.source_fingerprint == fingerprint]
    return max(matching, key=lambda job: job.created_at, default=None)


# --- the run --------------------------------------------------------------------------------------------


def run_job(backend: Backend, job_id: str, *, workers: int | None = None, device: str | None = None,
            progress: ProgressCallback | None = None) -> Job:
    """Run (or resume) a job to completion. On a failure the job is marked failed with a readable reason and
    the error is raised again; an interrupt (Ctrl-C, SIGTERM) leaves the job as it is, ready to resume."""
    job = steps.require_job(backend, job_id)
    if job.status == JobStatus.COMPLETED:
        return job
    with leases.keeping(backend, leases.run_lease(job_id), leases.this_owner()):
        return _run(backend, job_id, workers, device, progress)


def _run(backend: Backend, job_id: str, workers: int | None, device: str | None,
         progress: ProgressCallback | None) -> Job:
    report = progress or (lambda _p: None)
    state = Progress(job_id, "chunk")
    try:
        job = steps.reopen_failed(backend, job_id)  # an explicit re-run retries from where it stopped
        if job.status in (JobStatus.CREATED, JobStatus.CHUNKING_IN_PROGRESS):
            report(state)
            steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
            job = steps.require_job(backend, job_id)
        job = _convert_and_join(backend, job_id, workers, device, state, report)
        if job.status == JobStatus.COMPLETED:
            state.stage = "done"
            report(state)
        # otherwise another run holds the reassembly lock and finishes the job: not a failure of this one
        return job
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        reason = failure_reason(exc)
        steps.fail(backend, job_id, reason)
        raise


#: Joins retried after converting again the segments that failed verification, before the run gives up.
JOIN_ATTEMPTS = 3


def _convert_and_join(backend: Backend, job_id: str, workers: int | None, device: str | None, state: Progress,
                      report: ProgressCallback) -> Job:
    """Convert what is missing and join. Segments that fail verification at the join have lost their records
    (``steps.concat``): they are converted again, with one line saying so, and the join is retried."""
    from stereo_spot.integrity import SegmentsDamaged

    for attempt in range(1, JOIN_ATTEMPTS + 1):
        _convert_missing(backend, steps.require_job(backend, job_id), workers, device, state, report)
        state.stage = "concat"
        report(state)
        try:
            # no time limit: a live holder renews its lock, a dead one here is taken over, elsewhere it expires
            return steps.concat(backend, job_id, wait_seconds=float("inf"))
        except SegmentsDamaged as damaged:
            if attempt == JOIN_ATTEMPTS:
                raise
            for index, why in damaged.problems.items():
                log.warning("job %s: stored segment %d failed verification (%s); converting it again", job_id,
                            index, why)
    raise AssertionError("unreachable")


def _convert_missing(backend: Backend, job: Job, workers: int | None, device: str | None, state: Progress,
                     report: ProgressCallback) -> None:
    """Convert the segments that have no completion, under their leases: another run of the same job (a second
    command on the same input) converts the others. Returns once every segment has a completion."""
    total = job.total_segments or 0
    state.stage, state.frames_total, state.segments_total = "convert", job.source_frames, total
    waiting_for: set[str] = set()
    while True:
        done = {c.segment_index: c for c in backend.completions.query_by_job(job.job_id)}
        state.frames_done = sum(c.frames for c in done.values())
        state.segments_done = len(done)
        report(state)
        todo = [i for i in range(total) if i not in done]
        if not todo:
            return
        free = [i for i in todo if _lease_free(backend, job.job_id, i)]
        if free and _convert_segments(backend, job, free, workers, device, state, report):
            continue
        for index in todo:  # every missing segment is being converted by another live run: name each run once
            holder = backend.reassembly.holder(leases.segment_lease(job.job_id, index))
            who = leases.describe(holder.owner) if holder is not None else None
            if who is not None and who not in waiting_for:
                waiting_for.add(who)
                log.warning("waiting for job %s held by %s (converting segment %d)", job.job_id, who, index)
        time.sleep(leases.POLL_SECONDS)


def _lease_free(backend: Backend, job_id: str, segment_index: int) -> bool:
    holder = backend.reassembly.holder(leases.segment_lease(job_id, segment_index))
    return holder is None or leases.is_dead_here(holder.owner)


def _convert_segments(backend: Backend, job: Job, todo: list[int], workers: int | None, device: str | None,
                      state: Progress, report: ProgressCallback) -> int:
    """Convert the segments whose leases this run gets; how many it converted."""
    from stereo_spot.stereo.devices import cuda_device_count, plan_workers, resolve_devices, usable_cores

    plan = plan_workers(resolve_devices(device, cuda_device_count()), usable_cores(), workers, len(todo))
    log.info("job %s: converting %d segment(s) with %d worker(s) on %s", job.job_id, len(todo), plan.workers,
             ", ".join(plan.devices[:plan.workers]))
    log.debug("job %s: %d torch thread(s) per worker", job.job_id, plan.threads)
    if plan.workers <= 1 or backend.factory is None:
        def on_frames(n: int) -> None:
            state.frames_done += n
            report(state)

        converted = 0
        for index in todo:
            if steps.convert_leased(backend, job.job_id, index, device=plan.devices[0], progress=on_frames):
                _converted(job, index, state, report)
                converted += 1
        return converted
    ctx = mp.get_context("spawn")
    frames: mp.Queue = ctx.Queue()
    devices: mp.Queue = ctx.Queue()
    for worker_device in plan.devices:
        devices.put(worker_device)
    with ProcessPoolExecutor(plan.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(backend.factory, frames, plan.threads, devices,
                                       logging.getLogger().getEffectiveLevel())) as pool:
        pending = {pool.submit(_convert_in_worker, job.job_id, i): i for i in todo}
        converted = 0
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                _drain(frames, state)
                for future in finished:
                    index = pending.pop(future)
                    if future.result():  # raises the segment's error
                        _converted(job, index, state, report)
                        converted += 1
                report(state)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return converted


def _converted(job: Job, index: int, state: Progress, report: ProgressCallback) -> None:
    log.debug("job %s: segment %d of %d is done", job.job_id, index, job.total_segments or 0)
    state.segments_done += 1
    report(state)


def _drain(frames: mp.Queue, state: Progress) -> None:
    while True:
        try:
            state.frames_done += frames.get_nowait()
        except queue.Empty:
            return


# --- background runs (the UI) ---------------------------------------------------------------------------


def log_path(home: Path, job_id: str) -> Path:
    return Path(home) / "logs" / f"{keys.validate_job_id(job_id)}.log"


def _pid_path(home: Path, job_id: str) -> Path:
    return Path(home) / "logs" / f"{keys.validate_job_id(job_id)}.pid"


def start_background(job_id: str, home: Path, *, workers: int | None = None) -> subprocess.Popen:
    """Run a job in a detached process that outlives the caller (a Streamlit page can be reloaded or closed).
    The process leads its own process group, so stopping it stops its segment workers too."""
    path = log_path(home, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "stereo_spot.runner", job_id]
    if workers:
        command += ["--workers", str(workers)]
    # the runner inherits this process's whole environment (its settings), with the job's storage fixed; its log
    # is read by a person (the app's job page shows its last lines), so text unless a format was chosen
    env = {"STEREO_SPOT_LOG_FORMAT": "text", **os.environ, "STEREO_SPOT_HOME": str(home), "STORAGE_ADAPTER": "local"}
    with open(path, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    _pid_path(home, job_id).write_text(str(process.pid))
    return process


def _background_pid(home: Path, job_id: str) -> int | None:
    """The pid of the background run of the job started under ``home``, where it still runs."""
    try:
        pid = int(_pid_path(home, job_id).read_text())
    except (OSError, ValueError):
        return None
    try:  # the pid may have been reused since: only our own runner of this job counts
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"stereo_spot.runner" not in command or job_id.encode() not in command:
            return None
    except OSError:
        if sys.platform.startswith("linux"):
            return None  # not running any more
    return pid


def is_interrupted(backend: Backend, job: Job, home: Path) -> bool:
    """A job in progress on this machine's storage that no process is running: every lease of it is free or
    held by a process that is gone (``leases.is_dead_here``), and no background run of it lives. Its run was
    killed, or the machine restarted; ``stereo-spot resume`` finishes it. A cluster's jobs are run by pods this
    machine cannot see: never called interrupted here."""
    if backend.name != "local" or job.status.is_terminal:
        return False
    if leases.anyone_alive(backend, leases.job_leases(job.job_id, job.total_segments)):
        return False
    return _background_pid(home, job.job_id) is None


def stop_background(job_id: str, home: Path) -> bool:
    """Stop the background run of a job (before deleting it, so no segment lands after its files are gone).
    True where a running process was signalled."""
    pid = _background_pid(home, job_id)
    _pid_path(home, job_id).unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_all_background(home: Path) -> int:
    """Stop every background run started under ``home`` (tests, and shutting an app down)."""
    logs = Path(home) / "logs"
    return sum(stop_background(p.stem, home) for p in logs.glob("*.pid")) if logs.is_dir() else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from stereo_spot.adapters import build_backend

    parser = argparse.ArgumentParser(prog="python -m stereo_spot.runner", description="Run one job to completion.")
    parser.add_argument("job_id")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    from stereo_spot.logs import configure_logging

    configure_logging()  # the level the starting process chose (STEREO_SPOT_LOG_LEVEL), else INFO
    started = time.monotonic()
    try:
        job = run_job(build_backend(), args.job_id, workers=args.workers)
    except (UserError, Exception) as exc:  # noqa: BLE001 - recorded on the job; the log gets one line
        log.error("job %s failed: %s", args.job_id, one_line(exc))
        return 1
    log.info("job %s %s in %.1f s", job.job_id, job.status.value, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
