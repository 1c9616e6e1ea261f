"""A job's life after the happy path: deleted while it runs, its intermediates after the join, and the
reassembly lock of a concat that was killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stereo_spot import keys, steps
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample

SIZE, FPS = (160, 96), 24


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0, size=SIZE, fps=FPS, gop=6)


def _submit(backend, source: Path) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, source)
    return job.job_id


def _all_keys(backend, job_id: str) -> list[str]:
    return (backend.objects.list_keys(backend.input_bucket, f"input/{job_id}/")
            + backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job_id))
            + backend.objects.list_keys(backend.output_bucket, keys.job_output_prefix(job_id)))


def test_delete_during_chunk_leaves_no_segment_behind(backend, clip):
    job_id = _submit(backend, clip)
    upload = backend.objects.upload_file
    written: list[str] = []

    def upload_then_delete(bucket, key, path, content_type=None):
        upload(bucket, key, path, content_type=content_type)
        written.append(key)
        if len(written) == 1:  # the user deletes the job while chunk is writing its segments
            steps.delete_job(backend, job_id)

    backend.objects.upload_file = upload_then_delete
    with pytest.raises(steps.StepError, match="was deleted"):
        steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    assert len(written) == 1  # the segment written after the delete was removed, and chunk stopped there
    assert _all_keys(backend, job_id) == []
    assert backend.jobs.get(job_id).status == JobStatus.DELETED


def test_delete_during_convert_removes_the_late_segment(backend, clip):
    job_id = _submit(backend, clip)
    steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    upload = backend.objects.upload_file

    def delete_then_upload(bucket, key, path, content_type=None):
        steps.delete_job(backend, job_id)  # delete finished while this segment was converting
        upload(bucket, key, path, content_type=content_type)

    backend.objects.upload_file = delete_then_upload
    with pytest.raises(steps.StepError, match="was deleted"):
        steps.convert(backend, job_id, 0)
    assert _all_keys(backend, job_id) == [] and backend.completions.query_by_job(job_id) == []


def test_intermediates_are_removed_after_the_join(backend, clip):
    job_id = _submit(backend, clip)
    job = run_job(backend, job_id, workers=1)
    assert job.status == JobStatus.COMPLETED
    assert sorted(_all_keys(backend, job_id)) == sorted(
        [keys.input_key(job_id), keys.final_key(job_id), keys.report_key(job_id)])
    assert len(backend.completions.query_by_job(job_id)) == job.total_segments  # the records stay


def test_the_lock_is_renewed_while_concat_runs(backend, clip, monkeypatch):
    import stereo_spot.media.concat as media_concat

    monkeypatch.setattr(steps, "REASSEMBLY_LOCK_TTL_SECONDS", 1)
    job_id = _submit(backend, clip)
    run_job_until_concat(backend, job_id)
    join = media_concat.concat_segments
    seen: list[bool] = []

    def slow_join(*args, **kwargs):
        for _ in range(3):  # three TTLs: without renewal the lock would have expired twice over
            time.sleep(1.0)
            seen.append(backend.reassembly.try_acquire(job_id, "someone-else", ttl_seconds=1))
        return join(*args, **kwargs)

    monkeypatch.setattr(media_concat, "concat_segments", slow_join)
    assert steps.concat(backend, job_id).status == JobStatus.COMPLETED
    assert seen == [False, False, False]


def run_job_until_concat(backend, job_id: str) -> None:
    chunked = steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    for index in chunked.segment_indices:
        steps.convert(backend, job_id, index)


KILLED_CONCAT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import stereo_spot.media.concat as media_concat
    from stereo_spot import steps
    from stereo_spot.adapters.local import local_backend

    steps.REASSEMBLY_LOCK_TTL_SECONDS = {ttl}
    def hang(*args, **kwargs):
        print("joining", flush=True)
        time.sleep(3600)
    media_concat.concat_segments = hang
    steps.concat(local_backend(Path(sys.argv[1])), sys.argv[2])
""")


def test_resume_after_a_sigkilled_concat_completes(home, backend, clip, monkeypatch):
    ttl = 2  # seconds (30 in production): how long a dead holder's lock outlives it
    monkeypatch.setattr(steps, "REASSEMBLY_LOCK_TTL_SECONDS", ttl)
    job_id = _submit(backend, clip)
    run_job_until_concat(backend, job_id)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    holder = subprocess.Popen([sys.executable, "-c", KILLED_CONCAT.format(ttl=ttl), str(home), job_id],
                              stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"joining"
        assert backend.jobs.get(job_id).status == JobStatus.REASSEMBLING
        assert not backend.reassembly.try_acquire(job_id, "someone-else", ttl_seconds=ttl)  # held
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # resume: waits out the dead holder's short lock and finishes the job
    job = run_job(backend, job_id, workers=1)
    assert job.status == JobStatus.COMPLETED
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job_id))
