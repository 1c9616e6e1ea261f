"""``stereo-spot reconcile`` against a moto server: an upload whose event was dropped (the EventSource deleted it,
the trigger gave up) is re-driven through the events queue and the SQS worker then converts it; a stuck job is
re-driven once per interval and failed with a reason after the deadline; moving jobs, finished jobs and the
dry run change nothing."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.adapters.aws import aws_backend, events_queue
from stereo_spot.cluster.reconcile import Action, Problem, Reconciler, ReconcileSettings
from stereo_spot.cluster.worker import Outcome, event_id, parse_event, run_worker
from stereo_spot.models import ConversionSettings, JobStatus, SegmentCompletion, utcnow
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401

LATER = timedelta(minutes=30)  # past the default 15-minute grace


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from stereo_spot.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)


@pytest.fixture
def aws(aws_settings, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    backend, queue = aws_backend(aws_settings), events_queue(aws_settings)
    _drain(queue)  # bootstrap's s3:TestEvent
    return backend, queue, aws_settings


def _drain(queue) -> list[str]:
    """Receive and delete everything: what the SQS EventSource does once a message is on the EventBus."""
    bodies = []
    while True:
        messages = queue.receive(max_messages=10, wait_seconds=1)
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message.body)
            queue.delete(message)


def _upload(backend, clip: Path) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    return job.job_id


def test_a_dropped_upload_event_is_re_driven_and_the_job_completes(aws, clip):
    backend, queue, _ = aws
    job_id = _upload(backend, clip)
    (original,) = _drain(queue)  # the event was taken off the queue and the trigger failed: the upload is lost
    assert backend.jobs.get(job_id).status == JobStatus.CREATED

    (finding,) = Reconciler(backend, queue, now=utcnow() + LATER).run()
    assert (finding.problem, finding.action, finding.job_id) == (Problem.NO_RUN, Action.REDRIVE, job_id)

    (redrive,) = queue.receive(wait_seconds=5)
    (obj,) = parse_event(redrive.body)
    (first,) = parse_event(original)
    assert (obj.bucket, obj.key, obj.etag) == (first.bucket, first.key, first.etag)
    assert event_id(obj) != event_id(first)  # a new delivery for the dedup table, not a duplicate
    queue.release(redrive)
    stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5)
    assert [h.outcome for h in stats.handled] == [Outcome.COMPLETED]
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job_id))
    # and once it completed there is nothing left to do
    assert Reconciler(backend, queue, now=utcnow() + LATER).run() == []


def test_the_dry_run_sends_nothing(aws, clip):
    backend, queue, _ = aws
    job_id = _upload(backend, clip)
    _drain(queue)
    (finding,) = Reconciler(backend, None, dry_run=True, now=utcnow() + LATER).run()
    assert finding.job_id == job_id and finding.line(True).startswith(f"would re-drive {job_id}")
    assert _drain(queue) == []
    assert Reconciler(backend, None, dry_run=True, now=utcnow() + LATER).run()  # nothing was claimed either


def test_a_fresh_upload_is_left_alone(aws, clip):
    backend, queue, _ = aws
    _upload(backend, clip)
    _drain(queue)
    assert Reconciler(backend, queue).run() == []  # within the grace period its run may still be starting


def _stuck_job(backend, hours_ago: float) -> str:
    job = steps.create_job(backend, ConversionSettings(), "film")
    backend.objects.write_bytes(backend.input_bucket, keys.input_key(job.job_id), b"not looked at")
    backend.jobs.update(job.job_id, status=JobStatus.CHUNKING_COMPLETE, total_segments=3)
    past = utcnow() - timedelta(hours=hours_ago)
    backend.jobs.put(backend.jobs.get(job.job_id).model_copy(update={
        "updated_at": past, "created_at": past, "uploaded_at": past, "chunking_started_at": past}))
    backend.completions.put(SegmentCompletion(job_id=job.job_id, segment_index=0, total_segments=3,
                                              output_key=keys.output_segment_key(job.job_id, 0), completed_at=past))
    return job.job_id


def test_a_stuck_job_is_re_driven_once_per_interval_then_failed(aws):
    backend, queue, _ = aws
    job_id = _stuck_job(backend, hours_ago=3)
    _drain(queue)
    base = utcnow().replace(minute=10, second=0, microsecond=0)  # ten minutes into an hour-long window
    (finding,) = Reconciler(backend, queue, now=base).run()
    assert (finding.problem, finding.action, finding.status) == (Problem.STUCK, Action.REDRIVE, "chunking_complete")
    (body,) = _drain(queue)
    assert parse_event(body)[0].key == keys.input_key(job_id)

    (again,) = Reconciler(backend, queue, now=base + timedelta(minutes=15)).run()  # the next pass
    assert again.action == Action.WAIT and _drain(queue) == []

    # an hour later, still stuck: re-driven again, as a new delivery (the last re-drive may have been lost too)
    (later,) = Reconciler(backend, queue, now=base + timedelta(hours=1)).run()
    (second,) = _drain(queue)
    assert later.action == Action.REDRIVE
    assert event_id(parse_event(second)[0]) != event_id(parse_event(body)[0])

    (final,) = Reconciler(backend, queue, now=base + timedelta(hours=22)).run()
    assert final.action == Action.FAIL
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.FAILED and f"stereo-spot resume {job_id}" in job.failure_reason
    assert _drain(queue) == []
    assert backend.objects.exists(backend.input_bucket, keys.input_key(job_id))  # the source is kept


def test_a_job_that_is_converting_is_not_stuck(aws):
    backend, queue, _ = aws
    job_id = _stuck_job(backend, hours_ago=3)
    backend.completions.put(SegmentCompletion(job_id=job_id, segment_index=1, total_segments=3,
                                              output_key=keys.output_segment_key(job_id, 1)))  # just now
    _drain(queue)
    assert Reconciler(backend, queue).run() == []


def test_an_upload_without_a_job_is_re_driven_once(aws):
    backend, queue, _ = aws
    job_id = keys.new_job_id()
    backend.objects.write_bytes(backend.input_bucket, keys.input_key(job_id), b"uploaded by hand")
    _drain(queue)
    (finding,) = Reconciler(backend, queue, now=utcnow() + LATER).run()
    assert (finding.problem, finding.job_id, finding.status) == (Problem.NO_JOB, job_id, "none")
    assert len(_drain(queue)) == 1
    (again,) = Reconciler(backend, queue, now=utcnow() + LATER).run()
    assert again.action == Action.WAIT and _drain(queue) == []


def test_limit_and_the_command(aws, monkeypatch):
    backend, queue, settings = aws
    jobs = {_stuck_job(backend, hours_ago=3) for _ in range(3)}
    _drain(queue)
    assert len(Reconciler(backend, queue, ReconcileSettings(limit=2), dry_run=True).run()) == 2
    for name, value in settings.model_dump().items():
        if value is not None and name not in ("stereo_spot_home",):
            monkeypatch.setenv(name.upper(), str(value))
    from stereo_spot.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["reconcile", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert {line.split()[2] for line in result.output.splitlines() if line.startswith("would re-drive")} == jobs
    assert _drain(queue) == []
    result = runner.invoke(app, ["reconcile"])
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if line.startswith("re-drove")]) == 3, result.output
    assert len(_drain(queue)) == 3
    result = runner.invoke(app, ["reconcile", "--stuck-after", "2h", "--fail-after", "1h"])
    assert result.exit_code == 2 and "--fail-after" in result.output


def test_an_upload_whose_kubeflow_trigger_gave_up_gets_its_run(aws, tmp_path):
    """The backstop for the Kubeflow path: the trigger Job exhausted its retries while KFP was down, the
    EventSource had already deleted the message. reconcile's re-drive reaches the trigger as a new delivery and
    the run is created once; a second re-drive finds it."""
    from stereo_spot.cluster.kfp_trigger import KfpApi, KfpSettings, KfpUnavailable, Outcome, trigger
    from tests.fake_kfp import FakeKfp, make_token, serve

    backend, queue, _ = aws
    job = steps.create_job(backend, ConversionSettings(), "film")
    source = tmp_path / "film.mp4"
    source.write_bytes(b"a video")  # the trigger never looks inside
    steps.store_source(backend, job.job_id, source)
    (original,) = _drain(queue)  # what the EventSource put on the bus and deleted
    token = tmp_path / "token"
    sa = "system:serviceaccount:stereo-spot:stereo-spot-kfp-trigger"
    token.write_text(make_token(sa))
    with serve(FakeKfp(allowed={"team": {sa}}, pipelines={"p-1"}, fail_next_run_creations=100)) as kfp:
        api = KfpApi(KfpSettings(host=kfp.url, pipeline_id="p-1", namespace="team", token_path=str(token)))
        for _attempt in range(3):  # the Job's retries, all while KFP is down
            with pytest.raises(KfpUnavailable):
                trigger(backend, api, original, "event-1")
        kfp.fail_next_run_creations = 0
        assert kfp.runs == [] and backend.jobs.get(job.job_id).status == JobStatus.CREATED

        (finding,) = Reconciler(backend, queue, now=utcnow() + LATER).run()
        assert finding.problem == Problem.NO_RUN
        (redrive,) = _drain(queue)
        assert [r.outcome for r in trigger(backend, api, redrive, "event-2")] == [Outcome.STARTED]
        (run,) = kfp.runs
        assert run["display_name"] == f"stereo-spot-{job.job_id}"

        Reconciler(backend, queue, now=utcnow() + LATER + timedelta(hours=1)).run()  # still "created": again
        (again,) = _drain(queue)
        assert [r.outcome for r in trigger(backend, api, again, "event-3")] == [Outcome.EXISTS]
        assert len(kfp.runs) == 1
