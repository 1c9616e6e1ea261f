"""A job's leases on SQLite and DynamoDB (moto over HTTP) alike: holder, expiry, taking over from a dead process
of this machine at once, a live holder named in one line, and concat on AWS verifying what it downloads."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import pytest

from stereo_spot import keys, leases, steps
from stereo_spot.adapters.aws import aws_backend
from stereo_spot.adapters.local import local_backend
from stereo_spot.integrity import SegmentsDamaged
from stereo_spot.models import ConversionSettings, Job, JobStatus, SegmentCompletion
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return local_backend(tmp_path / "home")
    return aws_backend(request.getfixturevalue("aws_settings"))


def dead_owner() -> str:
    """The owner string a process of this machine wrote before it was killed: its pid is gone now."""
    code = "from stereo_spot import leases; print(leases.this_owner())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_owner_names_this_process_and_tells_the_living_from_the_dead():
    """Breakage caught: a live owner taken for dead (its lease stolen), or a dead one kept (a silent wait)."""
    mine = leases.this_owner()
    assert f":{os.getpid()}:" in mine and leases.describe(mine).startswith(f"pid {os.getpid()} on ")
    assert not leases.is_dead_here(mine)
    assert leases.is_dead_here(dead_owner())
    # the same pid with another start time is another process: the owner is dead
    host, pid, started, token = mine.rsplit(":", 3)
    assert leases.is_dead_here(f"{host}:{pid}:{int(started) + 1}:{token}")
    # another machine's owner is never judged from here; its lease expires instead
    assert not leases.is_dead_here(f"elsewhere.invalid:{pid}:{started}:{token}")
    assert not leases.is_dead_here("node-7:12:abcd1234")  # an older release's owner format


def test_holder_expiry_and_takeover(store):
    locks = store.reassembly
    name = leases.segment_lease(keys.new_job_id(), 3)
    assert locks.holder(name) is None
    assert locks.try_acquire(name, "a", ttl_seconds=60)
    assert locks.holder(name).owner == "a"
    assert not locks.try_acquire(name, "b", ttl_seconds=60)
    assert not locks.try_acquire(name, "b", ttl_seconds=60, replacing="c")  # only the named dead owner
    assert locks.try_acquire(name, "b", ttl_seconds=60, replacing="a")
    assert locks.holder(name).owner == "b"
    locks.release(name, "a")  # not a's any more: stays b's
    assert locks.holder(name).owner == "b"
    locks.release(name, "b")
    assert locks.holder(name) is None
    assert locks.try_acquire(name, "c", ttl_seconds=-5)  # expired at once
    assert locks.holder(name) is None and locks.try_acquire(name, "d", ttl_seconds=60)


def test_a_dead_processes_lease_is_taken_over_without_waiting(store, monkeypatch):
    """The re-run after a kill during the join used to wait ~26 s in silence. Breakage caught: ``try_take``
    not checking the holder (the sleep below would be reached)."""
    name = leases.reassembly_lease(keys.new_job_id())
    assert store.reassembly.try_acquire(name, dead_owner(), ttl_seconds=3600)

    def no_waiting(seconds):
        raise AssertionError(f"waited {seconds} s for a dead holder")

    monkeypatch.setattr(leases.time, "sleep", no_waiting)
    me = leases.this_owner()
    assert leases.acquire(store, name, me, job_id="j", activity="joining")
    assert store.reassembly.holder(name).owner == me


def test_a_live_holder_is_named_once(store, caplog):
    """At the default verbosity (warnings) the wait says for whom. Breakage caught: a silent wait, or a line
    per poll."""
    name = leases.chunk_lease(keys.new_job_id())
    other = leases.this_owner()  # this test's own process: alive
    assert store.reassembly.try_acquire(name, other, ttl_seconds=3600)
    polls = iter([False, False, False, True])
    with caplog.at_level(logging.WARNING, logger="stereo_spot"):
        got = leases.acquire(store, name, leases.this_owner(), job_id="abc", activity="chunking",
                             give_up=lambda: next(polls))
    assert got is False
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith("stereo_spot") and r.levelno >= logging.WARNING]
    assert lines == [f"waiting for job abc held by pid {os.getpid()} on {other.split(':')[0]} (chunking)"]


def test_concat_on_aws_verifies_what_it_downloads(aws_settings):  # noqa: F811
    """The S3 copy of a segment differs from its completion record in DynamoDB: concat fails naming it and drops
    the record, before any media work. Breakage caught: trusting the download."""
    backend = aws_backend(aws_settings)
    job = Job(job_id=keys.new_job_id(), status=JobStatus.CHUNKING_COMPLETE, total_segments=2,
              settings=ConversionSettings())
    backend.jobs.put(job)
    for index, body in enumerate([b"segment zero", b"segment one, as stored"]):
        key = keys.output_segment_key(job.job_id, index)
        backend.objects.write_bytes(backend.output_bucket, key, body)
        recorded = b"segment one, as written" if index == 1 else body  # what convert had uploaded
        backend.completions.put(SegmentCompletion(
            job_id=job.job_id, segment_index=index, total_segments=2, output_key=key,
            size_bytes=len(recorded), sha256=hashlib.sha256(recorded).hexdigest()))
    with pytest.raises(SegmentsDamaged, match=r"segment 1: it has 22 bytes, 23 were stored"):
        steps.concat(backend, job.job_id)
    assert [c.segment_index for c in backend.completions.query_by_job(job.job_id)] == [0]
    assert not backend.objects.exists(backend.output_bucket, keys.output_segment_key(job.job_id, 1))
    assert backend.completions.get(job.job_id, 0).sha256 == hashlib.sha256(b"segment zero").hexdigest()
