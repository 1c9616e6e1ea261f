"""`stereo-spot delete` and `stereo-spot gc`.

What each test is there to catch: a delete that leaves files or forgets the record, a gc that removes what a
resume needs (a failed job's segments) or touches a job in progress, an age limit that deletes recent jobs, and a
dry run that removes something.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from typer.testing import CliRunner

from stereo_spot import gc, keys, steps
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, JobStatus, utcnow
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample


@pytest.fixture
def clip(tmp_path):
    return write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)


def _job(backend, clip, title, *, run=True):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), title)
    steps.store_source(backend, job.job_id, clip)
    if run:
        run_job(backend, job.job_id, workers=1)
    return backend.jobs.get(job.job_id)


def _keys(backend, job_id):
    return (backend.objects.list_keys(backend.input_bucket, f"input/{job_id}/")
            + backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job_id))
            + backend.objects.list_keys(backend.output_bucket, keys.job_output_prefix(job_id)))


def test_delete_removes_every_file_and_keeps_the_record(backend, clip):
    job = _job(backend, clip, "done")
    assert _keys(backend, job.job_id)
    result = CliRunner().invoke(app, ["delete", job.job_id])
    assert result.exit_code == 0, result.output
    assert _keys(backend, job.job_id) == []
    assert backend.jobs.get(job.job_id).status == JobStatus.DELETED
    again = CliRunner().invoke(app, ["delete", job.job_id])
    assert again.exit_code == 1 and "was deleted" in again.output
    bad = CliRunner().invoke(app, ["delete", "../../etc"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output


def test_gc_removes_what_is_not_needed_and_keeps_what_resume_needs(backend, clip):
    done = _job(backend, clip, "done")
    # leftovers as an older version (or a concat that died after completing) leaves them
    backend.objects.upload_file(backend.input_bucket, keys.segment_key(done.job_id, 0, 2, done.mode), clip)
    failed = _job(backend, clip, "failed", run=False)
    steps.chunk(backend, backend.input_bucket, keys.input_key(failed.job_id))
    steps.fail(backend, failed.job_id, "a bad segment")
    running = _job(backend, clip, "running", run=False)
    failed_keys, running_keys = _keys(backend, failed.job_id), _keys(backend, running.job_id)

    dry = CliRunner().invoke(app, ["gc", "--dry-run"], env={"COLUMNS": "200"})
    assert dry.exit_code == 0, dry.output
    assert "would remove intermediates" in dry.output and "storage" in dry.output
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(done.job_id))  # nothing removed

    result = CliRunner().invoke(app, ["gc"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(done.job_id)) == []
    assert backend.objects.exists(backend.output_bucket, keys.final_key(done.job_id))  # the result stays
    assert _keys(backend, failed.job_id) == failed_keys  # resume continues from these
    assert _keys(backend, running.job_id) == running_keys
    assert gc.plan(backend) == []


def test_an_age_limit_deletes_old_finished_jobs_only(backend, clip):
    old, recent = _job(backend, clip, "old"), _job(backend, clip, "recent")
    backend.jobs.update(old.job_id, completed_at=utcnow() - timedelta(days=40))
    removals = gc.plan(backend, older_than=timedelta(days=30))
    assert [(r.job.job_id, r.kind) for r in removals] == [(old.job_id, gc.Kind.OLD_JOB)]
    gc.collect(backend, removals)
    assert backend.jobs.get(old.job_id).status == JobStatus.DELETED and _keys(backend, old.job_id) == []
    assert backend.jobs.get(recent.job_id).status == JobStatus.COMPLETED
    assert backend.objects.exists(backend.output_bucket, keys.final_key(recent.job_id))
