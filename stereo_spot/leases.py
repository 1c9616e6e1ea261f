"""A job's leases: who chunks it, who converts each segment, who joins it, and who creates the job for an input.

Each lease is a conditional write in the job store's lock table (``ReassemblyLock``: SQLite's
``reassembly_triggered``, DynamoDB's ReassemblyTriggered) with an owner and an expiry, renewed by its holder
while it works. A holder killed outright frees its lease when the entry expires; on this machine it is noticed
at once instead: the owner names its host, pid and the pid's start time, so a lease whose process is gone (or
whose pid now belongs to another process) is taken over without waiting.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from stereo_spot.ports import REASSEMBLY_LOCK_TTL_SECONDS, Backend

log = logging.getLogger(__name__)

#: How often a waiter asks again.
POLL_SECONDS = 1.0


# --- names ----------------------------------------------------------------------------------------------


def reassembly_lease(job_id: str) -> str:
    return job_id  # the table's original use: concat's lock is keyed by the job id alone


def chunk_lease(job_id: str) -> str:
    return f"{job_id}/chunk"


def segment_lease(job_id: str, segment_index: int) -> str:
    return f"{job_id}/segment/{segment_index}"


def run_lease(job_id: str) -> str:
    """Held by one live run of the job (the command line's, the app's background runner) for as long as it runs,
    so a job between its steps still shows as being worked on (``keeping``)."""
    return f"{job_id}/run"


def job_leases(job_id: str, total_segments: int | None) -> list[str]:
    """Every lease a run of the job holds while it works on it."""
    return [run_lease(job_id), chunk_lease(job_id), reassembly_lease(job_id),
            *(segment_lease(job_id, index) for index in range(total_segments or 0))]


def input_lease(fingerprint: str) -> str:
    """Held while a command looks up or creates the job for one input with one set of settings."""
    return f"input/{fingerprint}"


# --- owners ---------------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), "" where this system
    has no /proc, None where the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return fields[19].decode()  # fields[0] is field 3 (state): field 22 is fields[19]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def this_owner() -> str:
    """``host:pid:start:token``: unique per call, and enough for another process here to tell whether it lives."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or ''}:{uuid.uuid4().hex[:8]}"


def _parse(owner: str) -> tuple[str, int, str] | None:
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return None  # an owner written by something else (an older release): left to expire
    return parts[0], int(parts[1]), parts[2]


def is_dead_here(owner: str) -> bool:
    """True only where the owner is a process of this machine that is gone: its pid does not exist, or it is
    another process that reused the pid (a different start time)."""
    parsed = _parse(owner)
    if parsed is None or parsed[0] != socket.gethostname():
        return False
    _, pid, started = parsed
    now = _process_start(pid)
    return now is None or bool(started and now and now != started)


def describe(owner: str) -> str:
    parsed = _parse(owner)
    return f"pid {parsed[1]} on {parsed[0]}" if parsed else owner


# --- taking, waiting, renewing ----------------------------------------------------------------------------


def try_take(backend: Backend, name: str, owner: str, ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS) -> bool:
    """Take the lease if it is free, expired, ours, or held by a dead process of this machine."""
    locks = backend.reassembly
    if locks.try_acquire(name, owner, ttl_seconds=ttl_seconds):
        return True
    holder = locks.holder(name)
    if holder is not None and is_dead_here(holder.owner):
        log.warning("taking over the lease %s: its holder, %s, is no longer running", name, describe(holder.owner))
        return locks.try_acquire(name, owner, ttl_seconds=ttl_seconds, replacing=holder.owner)
    return False


def acquire(backend: Backend, name: str, owner: str, *, job_id: str, activity: str,
            give_up: Callable[[], bool] = lambda: False, wait_seconds: float = math.inf,
            ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS) -> bool:
    """Take the lease, waiting while a live holder renews it; each holder is named once, in one line. False
    when ``give_up()`` says the wait is pointless (the holder finished the work) or ``wait_seconds`` passed."""
    deadline = time.monotonic() + max(0.0, wait_seconds)
    announced: str | None = None
    while True:
        if try_take(backend, name, owner, ttl_seconds):
            return True
        if give_up() or time.monotonic() >= deadline:
            return False
        holder = backend.reassembly.holder(name)
        if holder is not None and holder.owner != announced:
            log.warning("waiting for job %s held by %s (%s)", job_id, describe(holder.owner), activity)
            announced = holder.owner
        time.sleep(max(0.01, min(POLL_SECONDS, deadline - time.monotonic())))


@contextlib.contextmanager
def _every(seconds: float, name: str, tick: Callable[[], None]) -> Iterator[None]:
    """Call ``tick`` every ``seconds`` on a background thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            tick()

    thread = threading.Thread(target=loop, name=f"lease-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def renewing(backend: Backend, name: str, owner: str,
             ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS) -> Iterator[None]:
    """Renew the lease every third of its TTL while the block runs (a long join of a 3-hour film)."""

    def renew() -> None:
        try:
            if not backend.reassembly.try_acquire(name, owner, ttl_seconds=ttl_seconds):
                log.warning("%s was taken over; finishing anyway (the result is the same)", name)
        except Exception as exc:  # noqa: BLE001 - a missed renewal is retried on the next tick
            log.warning("renewing %s failed: %s", name, exc)

    with _every(ttl_seconds / 3, name, renew):
        yield


@contextlib.contextmanager
def holding(backend: Backend, name: str, owner: str,
            ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS) -> Iterator[None]:
    """Renew a lease already taken while the block runs, and release it after (also on an error)."""
    try:
        with renewing(backend, name, owner, ttl_seconds):
            yield
    finally:
        backend.reassembly.release(name, owner)


#: How often a run checks that its job's run lease is held by a live process: how long a job whose run was
#: killed can go on showing as running while a second run of it lives.
KEEPING_SECONDS = 5.0


@contextlib.contextmanager
def keeping(backend: Backend, name: str, owner: str,
            ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS) -> Iterator[None]:
    """While the block runs, see that a live process holds the lease: take it where it is free, renew it where
    ours, and take it over from a holder of this machine that died. Unlike ``holding``, another live holder is
    no reason to wait: several runs may share a job, and one of them holding it is what it says. Released after,
    where this run holds it."""
    def take() -> None:
        try:
            try_take(backend, name, owner, ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - retried on the next tick
            log.warning("keeping %s failed: %s", name, exc)

    take()  # before the work starts: the job never looks abandoned while this run lives
    try:
        with _every(min(KEEPING_SECONDS, ttl_seconds / 3), name, take):
            yield
    finally:
        backend.reassembly.release(name, owner)


def anyone_alive(backend: Backend, names: list[str]) -> bool:
    """Whether a process that is not known to be dead holds one of the leases: one of this machine that still
    runs, or one of another machine (whose life cannot be seen from here; its entry expires if it died)."""
    for name in names:
        holder = backend.reassembly.holder(name)
        if holder is not None and not is_dead_here(holder.owner):
            return True
    return False
