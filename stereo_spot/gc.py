"""``stereo-spot gc``: what the store holds, and removing what is no longer needed.

Always removed: the intermediates of completed jobs (source and converted segments; concat removes them itself,
so these are left by older versions or by a concat that died just after completing), anything left under a
deleted job's prefixes, and partial writes a killed process left in the store (untouched for an hour). With
``older_than``, completed and failed jobs finished before that age are deleted as well (``steps.delete_job``:
the record stays, marked deleted). A failed job's segments are otherwise kept: they
are what ``stereo-spot resume`` continues from. Nothing in progress is touched.

Orphans are job folders with no record at all: what a lost, emptied or replaced database leaves. They are found
every time (``jobs`` and ``gc`` warn) and removed only when asked (``gc --orphans``): the records may come back
with a restored database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from stereo_spot import keys, steps
from stereo_spot.models import Job, JobStatus, utcnow
from stereo_spot.ports import Backend

# Where each kind of object lives (bucket attribute, key prefix) for the storage summary.
AREAS = (("sources", "input_bucket", "input/"), ("segments", "input_bucket", "segments/"),
         ("results", "output_bucket", "jobs/"))


class Kind(StrEnum):
    INTERMEDIATES = "intermediates"  # a completed job's segments
    LEFTOVERS = "leftovers of a deleted job"
    OLD_JOB = "job past the age limit"
    UNDELIVERED = "result not yet written to its output"  # shown, never removed


@dataclass(frozen=True)
class Removal:
    job: Job
    kind: Kind
    objects: int
    bytes: int


@dataclass(frozen=True)
class Orphan:
    """A job's objects with no job record."""

    job_id: str
    objects: tuple[tuple[str, str, int], ...]  # (bucket, key, size)

    @property
    def bytes(self) -> int:
        return sum(size for *_, size in self.objects)


def storage_used(backend: Backend) -> dict[str, tuple[int, int]]:
    """(objects, bytes) per area: sources, segments, results."""
    used = {}
    for name, bucket_attr, prefix in AREAS:
        found = backend.objects.list_objects(getattr(backend, bucket_attr), prefix)
        used[name] = (len(found), sum(o.size for o in found))
    return used


def _jobs(backend: Backend, status: JobStatus) -> Iterator[Job]:
    cursor = None
    while True:
        if status is JobStatus.COMPLETED:
            page = backend.jobs.list_completed(limit=200, cursor=cursor)
        else:
            page = backend.jobs.list_by_status(status, limit=200, cursor=cursor)
        yield from page.items
        cursor = page.next_cursor
        if cursor is None:
            return


def _objects(backend: Backend, job: Job, *, intermediates_only: bool) -> list[tuple[str, str, int]]:
    areas = [(backend.input_bucket, keys.segments_prefix(job.job_id)),
             (backend.output_bucket, keys.job_output_prefix(job.job_id) + "segments/")]
    if not intermediates_only:
        areas += [(backend.input_bucket, f"input/{job.job_id}/"),
                  (backend.output_bucket, keys.job_output_prefix(job.job_id))]
    found: dict[tuple[str, str], int] = {}
    for bucket, prefix in areas:
        for info in backend.objects.list_objects(bucket, prefix):
            found[(bucket, info.key)] = info.size
    return [(bucket, key, size) for (bucket, key), size in found.items()]


def _finished_at(job: Job) -> datetime:
    return job.completed_at or job.updated_at


def plan(backend: Backend, *, older_than: timedelta | None = None, now: datetime | None = None) -> list[Removal]:
    """What a collection would remove, without removing anything."""
    now = now or utcnow()
    removals = []
    for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DELETED):
        for job in _jobs(backend, status):
            old = older_than is not None and status is not JobStatus.DELETED and _finished_at(job) < now - older_than
            if old:
                kind = Kind.OLD_JOB
            elif status is JobStatus.COMPLETED:
                kind = Kind.INTERMEDIATES
            elif status is JobStatus.DELETED:
                kind = Kind.LEFTOVERS
            else:
                continue  # a failed job keeps its segments for resume
            objects = _objects(backend, job, intermediates_only=kind is Kind.INTERMEDIATES)
            if objects or old:
                removals.append(Removal(job, kind, len(objects), sum(size for *_, size in objects)))
    return removals


def collect(backend: Backend, removals: list[Removal]) -> None:
    for removal in removals:
        if removal.kind is Kind.OLD_JOB:
            steps.delete_job(backend, removal.job.job_id)
            continue
        intermediates_only = removal.kind is Kind.INTERMEDIATES
        for bucket, key, _ in _objects(backend, removal.job, intermediates_only=intermediates_only):
            backend.objects.delete(bucket, key)


def orphans(backend: Backend) -> list[Orphan]:
    """Every job folder in the store (sources, segments, results) whose job has no record."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for _, bucket_attr, prefix in AREAS:
        bucket = getattr(backend, bucket_attr)
        for info in backend.objects.list_objects(bucket, prefix):
            job_id = info.key.split("/")[1] if info.key.count("/") >= 2 else ""
            try:
                keys.validate_job_id(job_id)
            except keys.InvalidKey:
                continue  # not laid out by the project: left alone
            found.setdefault(job_id, []).append((bucket, info.key, info.size))
    return [Orphan(job_id, tuple(objects)) for job_id, objects in sorted(found.items())
            if backend.jobs.get(job_id) is None]


def undelivered(backend: Backend) -> list[Removal]:
    """Completed command-line jobs (their source a reference to the user's file) whose result is still in the
    store: its delivery failed. Kept (the same command writes it), but shown, since it is a film's worth of disk."""
    is_reference = getattr(backend.objects, "is_reference", None)
    if is_reference is None:
        return []
    found = []
    for job in _jobs(backend, JobStatus.COMPLETED):
        info = backend.objects.head(backend.output_bucket, keys.final_key(job.job_id))
        if info is not None and is_reference(backend.input_bucket, keys.input_key(job.job_id)):
            found.append(Removal(job, Kind.UNDELIVERED, 1, info.size))
    return found


def collect_orphans(backend: Backend, found: list[Orphan]) -> None:
    for orphan in found:
        for bucket, key, _ in orphan.objects:
            backend.objects.delete(bucket, key)


#: A partial write untouched this long belongs to a process that died: a live write keeps its file's time fresh.
SCRAP_AGE_SECONDS = 3600


def scraps(backend: Backend, *, now: float | None = None) -> list[Path]:
    """Partial writes a killed process left in a store on this machine (none elsewhere: S3 has no such thing)."""
    listing = getattr(backend.objects, "scraps", None)
    if listing is None:
        return []
    cutoff = (time.time() if now is None else now) - SCRAP_AGE_SECONDS
    found = [*listing(backend.input_bucket), *listing(backend.output_bucket)]
    return [path for path in found if _mtime(path) < cutoff]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")  # gone meanwhile: nothing to remove


def remove_scraps(found: list[Path]) -> None:
    for path in found:
        path.unlink(missing_ok=True)
