"""The embedded adapters against a real SQLite file and folder, including several processes at once."""

from __future__ import annotations

import io
import multiprocessing as mp
from datetime import timedelta
from pathlib import Path

import pytest

from stereo_spot.adapters.local import local_backend
from stereo_spot.keys import new_job_id
from stereo_spot.models import Job, JobStatus, SegmentCompletion, utcnow
from stereo_spot.ports import ConflictError, NotFound


def _completed_jobs(backend, count):
    now = utcnow()
    jobs = []
    for i in range(count):
        job = Job(job_id=new_job_id(), title=f"job {i}", status=JobStatus.COMPLETED,
                  completed_at=now - timedelta(seconds=count - i))
        backend.jobs.put(job)
        jobs.append(job)
    return jobs


def test_job_round_trip_and_conditional_update(backend):
    job = Job(job_id=new_job_id(), title="holiday")
    backend.jobs.put(job, if_absent=True)
    with pytest.raises(ConflictError):
        backend.jobs.put(job, if_absent=True)
    assert backend.jobs.get(job.job_id) == job
    updated = backend.jobs.update(job.job_id, expected_status=JobStatus.CREATED,
                                  status=JobStatus.CHUNKING_IN_PROGRESS)
    assert updated.status == JobStatus.CHUNKING_IN_PROGRESS
    with pytest.raises(ConflictError):
        backend.jobs.update(job.job_id, expected_status=JobStatus.CREATED, status=JobStatus.FAILED)
    with pytest.raises(NotFound):
        backend.jobs.update(new_job_id(), status=JobStatus.FAILED)
    assert backend.jobs.get(new_job_id()) is None


def test_list_completed_pages_newest_first_without_gaps(backend):
    jobs = _completed_jobs(backend, 45)
    seen, cursor = [], None
    while True:
        page = backend.jobs.list_completed(limit=10, cursor=cursor)
        seen += [j.job_id for j in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [j.job_id for j in reversed(jobs)]


def test_list_in_progress_excludes_finished_jobs(backend):
    running = Job(job_id=new_job_id(), status=JobStatus.CHUNKING_COMPLETE)
    backend.jobs.put(running)
    backend.jobs.put(Job(job_id=new_job_id(), status=JobStatus.FAILED, failure_reason="bad"))
    _completed_jobs(backend, 2)
    assert [j.job_id for j in backend.jobs.list_in_progress()] == [running.job_id]
    assert len(backend.jobs.list_by_status(JobStatus.FAILED).items) == 1


def test_segment_completions_are_ordered_and_idempotent(backend):
    job_id = new_job_id()
    for index in (2, 0, 1, 2):
        backend.completions.put(SegmentCompletion(job_id=job_id, segment_index=index, total_segments=3,
                                                  output_key=f"k{index}", frames=10))
    assert [c.segment_index for c in backend.completions.query_by_job(job_id)] == [0, 1, 2]
    assert backend.completions.get(job_id, 1).output_key == "k1"
    assert backend.completions.get(job_id, 3) is None
    backend.completions.delete_job(job_id)
    assert backend.completions.query_by_job(job_id) == []


def _acquire(home: str, job_id: str, owner: str, barrier, results) -> None:
    backend = local_backend(Path(home))
    barrier.wait()
    results.put((owner, backend.reassembly.try_acquire(job_id, owner)))


def test_reassembly_lock_has_exactly_one_winner_across_processes(home):
    local_backend(home)  # create the database once
    job_id = new_job_id()
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(5), ctx.Queue()
    procs = [ctx.Process(target=_acquire, args=(str(home), job_id, f"owner-{i}", barrier, results)) for i in range(5)]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert sum(outcomes.values()) == 1
    winner = next(owner for owner, won in outcomes.items() if won)
    backend = local_backend(home)
    assert backend.reassembly.try_acquire(job_id, winner)  # the winner may retry
    backend.reassembly.release(job_id, winner)
    assert backend.reassembly.try_acquire(job_id, "someone-else")


def test_event_dedup_claims_once(backend):
    assert backend.dedup.claim("bucket/key/etag1", new_job_id())
    assert not backend.dedup.claim("bucket/key/etag1", new_job_id())


def test_object_storage_streams_and_replaces_atomically(backend, tmp_path):
    objects, bucket = backend.objects, backend.input_bucket
    data = bytes(range(256)) * 40_000
    assert objects.upload_fileobj(bucket, "a/b.bin", io.BytesIO(data)) == len(data)
    assert objects.exists(bucket, "a/b.bin") and objects.head(bucket, "a/b.bin").size == len(data)
    objects.download_file(bucket, "a/b.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data
    objects.write_bytes(bucket, "a/b.bin", b"new")
    assert objects.read_bytes(bucket, "a/b.bin") == b"new"
    assert objects.list_keys(bucket, "a/") == ["a/b.bin"]
    assert objects.presign_download(bucket, "a/b.bin").startswith("file://")
    objects.delete(bucket, "a/b.bin")
    objects.delete(bucket, "a/b.bin")  # missing is fine
    assert not objects.exists(bucket, "a/b.bin")
    with pytest.raises(NotFound):
        objects.download_file(bucket, "a/b.bin", tmp_path / "gone.bin")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "", "/abs"])
def test_object_keys_cannot_escape_the_folder(backend, key):
    with pytest.raises(ValueError):
        backend.objects.write_bytes(backend.input_bucket, key, b"x")


def test_sqlite_queue_has_visibility_semantics(home):
    from stereo_spot.adapters.local import SQLiteDatabase, SQLiteQueue

    queue = SQLiteQueue(SQLiteDatabase(home / "q.db"), visibility_timeout=60)
    queue.send("hello")
    [message] = queue.receive(wait_seconds=0)
    assert message.body == "hello"
    assert queue.receive(wait_seconds=0) == []  # hidden while being worked on
    queue.release(message)
    [again] = queue.receive(wait_seconds=0)
    queue.delete(again)
    assert queue.receive(wait_seconds=0) == []
