"""A new run of a job whose run failed or went away resumes it at the segment level, through the step functions
both engines' containers call (components.chunk for the first step, then steps.convert / steps.concat), on the
local stores. What starts that run is tested beside the engines: tests/test_sensor_events.py (Argo's name per
upload), tests/test_pipelines_submit.py and tests/test_kfp_trigger.py (a run that ended badly does not count)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stereo_spot import keys, steps
from stereo_spot.components import chunk
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.sample import write_sample


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=1.5, size=(96, 64), fps=12, gop=6)


def _job(backend, clip: Path) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    return job.job_id


def _segment_objects(backend, job_id: str) -> dict[str, object]:
    return {key: backend.objects.head(backend.input_bucket, key)
            for key in backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job_id))}


@pytest.mark.slow
def test_a_new_run_of_a_failed_job_keeps_its_converted_segments_and_finishes(backend, clip):
    """Breakages caught: chunk refusing a failed job (it must reopen it, not raise), chunk splitting the source
    again (new segment objects), convert redoing a segment it has a completion for."""
    job_id = _job(backend, clip)
    key = keys.input_key(job_id)
    shards = chunk.chunk(backend.input_bucket, key, gpu_workers="8")
    total = backend.jobs.get(job_id).total_segments
    assert total >= 2 and shards == list(range(total))
    first = steps.convert(backend, job_id, 0)
    segments = _segment_objects(backend, job_id)
    steps.fail(backend, job_id, "convert: the spot node was reclaimed")  # the run's exit handler

    # the new run (a re-upload, a re-drive): the same first step, then the rest
    assert chunk.chunk(backend.input_bucket, key, gpu_workers="8") == shards
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.CHUNKING_COMPLETE and job.failure_reason is None and job.total_segments == total
    assert _segment_objects(backend, job_id) == segments  # not chunked again
    assert steps.convert(backend, job_id, 0) == first  # the converted segment is kept, not redone
    for index in range(1, total):
        steps.convert(backend, job_id, index)
    assert steps.concat(backend, job_id).status == JobStatus.COMPLETED
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job_id))


def test_a_job_that_failed_while_chunking_is_chunked_by_the_new_run(backend, clip):
    job_id = _job(backend, clip)
    backend.jobs.update(job_id, status=JobStatus.CHUNKING_IN_PROGRESS)
    steps.fail(backend, job_id, "chunk: the pod was evicted")
    shards = chunk.chunk(backend.input_bucket, keys.input_key(job_id), gpu_workers="2")
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.CHUNKING_COMPLETE and job.total_segments >= 2 and shards == [0, 1]


def test_a_second_run_of_a_job_being_converted_does_not_chunk_it_again(backend, clip):
    """Two runs of one job wait on each other (the per-job mutex); the second one's chunk hands on the same
    fan-out and leaves the job as it is."""
    job_id = _job(backend, clip)
    shards = chunk.chunk(backend.input_bucket, keys.input_key(job_id), gpu_workers="8")
    segments = _segment_objects(backend, job_id)
    assert chunk.chunk(backend.input_bucket, keys.input_key(job_id), gpu_workers="8") == shards
    assert backend.jobs.get(job_id).status == JobStatus.CHUNKING_COMPLETE
    assert _segment_objects(backend, job_id) == segments


def test_a_completed_or_deleted_job_starts_no_run_but_a_failed_one_does():
    assert JobStatus.FAILED not in steps.FINAL_STATUSES
    assert set(steps.FINAL_STATUSES) == {JobStatus.COMPLETED, JobStatus.DELETED}
