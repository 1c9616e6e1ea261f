"""The SQS worker against a moto server over HTTP: a real upload's S3 event runs the pipeline to final.mp4;
duplicate deliveries start one run; shutdown releases the message and another worker resumes the job; bad input
is dropped or fails the job with a reason while the worker keeps going, and nothing in the input bucket is
deleted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import av
import boto3
import pytest

from stereo_spot import keys, steps
from stereo_spot.adapters.aws import AwsClients, AwsConfig, SqsQueue, aws_backend, events_queue
from stereo_spot.cluster.worker import MalformedEvent, Outcome, Worker, event_id, parse_event, run_worker
from stereo_spot.models import ConversionSettings, JobStatus, ObjectCreated
from tests.moto_server import REGION, aws_settings, moto_endpoint  # noqa: F401

SIZE, FPS = (160, 96), 24


def _s3_event(bucket: str, key: str, etag: str = "abc", sequencer: str | None = "0061") -> str:
    obj = {"key": key, "size": 1, "eTag": etag}
    if sequencer:
        obj["sequencer"] = sequencer
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": bucket}, "object": obj}}]})


# --- parsing (no server) --------------------------------------------------------------------------------


def test_parse_event_reads_records_and_decodes_keys():
    (found,) = parse_event(_s3_event("in", "input/a+b%2Fc/source.mp4"))
    assert found == ObjectCreated(bucket="in", key="input/a b/c/source.mp4", etag="abc", sequencer="0061", size=1)
    assert parse_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "in"})) == []
    removed = json.loads(_s3_event("in", "input/x/source.mp4"))
    removed["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    assert parse_event(json.dumps(removed)) == []
    via_sns = json.dumps({"Type": "Notification", "Message": _s3_event("in", "input/x/source.mp4")})
    assert parse_event(via_sns)[0].key == "input/x/source.mp4"


@pytest.mark.parametrize("body,reason", [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"hello": "world"}', "no 'Records'"),
    ('{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}', "lacks s3.bucket.name"),
    ('{"Records": ["x"]}', "not an object"),
])
def test_parse_event_rejects_what_is_not_an_s3_event(body, reason):
    with pytest.raises(MalformedEvent, match=reason):
        parse_event(body)


def test_event_id_tells_deliveries_from_uploads():
    first = ObjectCreated(bucket="b", key="input/x/source.mp4", etag="e1", sequencer="01")
    assert event_id(first) == event_id(first.model_copy())
    assert event_id(first) != event_id(first.model_copy(update={"sequencer": "02"}))  # uploaded again
    assert event_id(first) != event_id(first.model_copy(update={"version_id": "v2"}))


# --- against the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from stereo_spot.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0, size=SIZE, fps=FPS, gop=6)


@pytest.fixture
def aws(aws_settings, tmp_path, monkeypatch):  # noqa: F811
    """Backend and events queue of fresh resources, with bootstrap's s3:TestEvent already consumed."""
    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    backend = aws_backend(aws_settings)
    queue = events_queue(aws_settings)
    for message in queue.receive(max_messages=10, wait_seconds=1):
        assert parse_event(message.body) == []
        queue.delete(message)
    return backend, queue, aws_settings


def _upload(backend, clip: Path, title: str = "clip") -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), title)
    steps.store_source(backend, job.job_id, clip)  # the S3 ObjectCreated event goes to the queue
    return job.job_id


def _queue_counts(settings) -> tuple[int, int]:
    attributes = boto3.client("sqs", endpoint_url=settings.aws_endpoint_url, region_name=REGION) \
        .get_queue_attributes(QueueUrl=settings.chunking_queue_url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _frames(path: Path) -> tuple[int, int, int, int]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for packet in container.demux(video) if packet.size)
        return frames, video.codec_context.width, video.codec_context.height, len(container.streams.audio)


def test_upload_event_runs_the_pipeline_to_final_mp4(aws, clip, tmp_path):
    backend, queue, settings = aws
    job_id = _upload(backend, clip)
    input_before = backend.objects.list_keys(backend.input_bucket, f"input/{job_id}/")

    stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=2, wait_seconds=5)

    assert [h.outcome for h in stats.handled] == [Outcome.COMPLETED]
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.COMPLETED and job.total_segments == 4 and job.completed_at is not None
    assert job.completed_at > job.uploaded_at
    final = tmp_path / "final.mp4"
    backend.objects.download_file(backend.output_bucket, keys.final_key(job_id), final)
    assert _frames(final) == (2 * FPS, 2 * SIZE[0], SIZE[1], 1)
    assert [c.segment_index for c in backend.completions.query_by_job(job_id)] == [0, 1, 2, 3]
    assert _queue_counts(settings) == (0, 0)  # deleted once the job completed
    assert backend.objects.list_keys(backend.input_bucket, f"input/{job_id}/") == input_before
    # the intermediates are gone once the final video is stored
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job_id)) == []
    assert backend.objects.list_keys(backend.output_bucket, f"jobs/{job_id}/segments/") == []


def test_a_duplicate_delivery_during_the_run_starts_no_second_run(aws, clip):
    backend, queue, settings = aws
    job_id = _upload(backend, clip)
    (original,) = queue.receive(wait_seconds=5)
    queue.send(original.body)  # S3 delivering the same event twice: a second message, same object
    queue.release(original)

    other_worker = Worker(aws_backend(settings), SqsQueue(AwsClients(AwsConfig.from_settings(settings)),
                                                          settings.chunking_queue_url),
                          abort_event=threading.Event(), workers=1)
    seen: list[str] = []
    duplicates = []

    def progress(state) -> None:
        seen.append(state.stage)
        if state.stage == "convert" and not duplicates:
            # While the first delivery is converting, another worker receives the other copy.
            (copy,) = other_worker.receiver.receive(wait_seconds=5)
            duplicates.append(other_worker.handle(copy))

    stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5,
                       progress=progress)
    assert [h.outcome for h in stats.handled] == [Outcome.COMPLETED]
    assert [d.outcome for d in duplicates] == [Outcome.DUPLICATE]
    assert "duplicate delivery" in duplicates[0].reason and duplicates[0].job_id == job_id
    assert seen.count("chunk") == 1 and seen.count("done") == 1
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert _queue_counts(settings) == (0, 0)

    # A late duplicate after completion is dropped too.
    queue.send(original.body)
    late = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, wait_seconds=5)
    assert [h.outcome for h in late.handled] == [Outcome.DUPLICATE]
    assert _queue_counts(settings) == (0, 0)


def test_shutdown_releases_the_message_and_the_redelivery_resumes_the_job(aws, clip):
    backend, queue, settings = aws
    job_id = _upload(backend, clip)
    abort = threading.Event()

    def abort_while_converting(state) -> None:
        if state.stage == "convert":
            abort.set()  # what the SIGTERM handler does once the grace period is over

    stats = run_worker(backend, queue, stop_event=threading.Event(), abort_event=abort, workers=1,
                       wait_seconds=5, progress=abort_while_converting)
    assert [h.outcome for h in stats.handled] == [Outcome.RELEASED]
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.CHUNKING_COMPLETE and job.failure_reason is None  # left to resume
    assert _queue_counts(settings) == (1, 0)  # visible again at once

    resumed = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5)
    assert resumed.handled[0].message_id == stats.handled[0].message_id  # the same message ...
    assert [h.outcome for h in resumed.handled] == [Outcome.COMPLETED]  # ... is not taken for a duplicate
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert backend.objects.exists(backend.output_bucket, keys.final_key(job_id))


def test_bad_input_is_dropped_or_fails_the_job_and_the_worker_keeps_running(aws, clip):
    """Bad messages are dropped and the worker keeps going; an upload without a job record gets one and is
    converted (steps.job_for_upload, the policy every engine applies)."""
    backend, queue, settings = aws
    s3 = boto3.client("s3", endpoint_url=settings.aws_endpoint_url, region_name=REGION)
    queue.send("this is not json")
    queue.send(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    queue.send(_s3_event("some-other-bucket", f"input/{keys.new_job_id()}/source.mp4"))
    # Uploads the notification passes on (input/*.mp4) but that are not a job's source:
    s3.upload_file(str(clip), backend.input_bucket, f"input/{keys.new_job_id()}/other.mp4")
    s3.upload_file(str(clip), backend.input_bucket, "input/not-a-job-id/source.mp4")
    unknown = keys.new_job_id()
    s3.upload_file(str(clip), backend.input_bucket, keys.input_key(unknown))  # no Job record: one is made
    deleted_job = _upload(backend, clip, "deleted before chunking")
    backend.objects.delete(backend.input_bucket, keys.input_key(deleted_job))
    input_before = backend.objects.list_keys(backend.input_bucket, "input/")

    stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=7, workers=1, wait_seconds=5)

    outcomes = sorted(h.outcome.value for h in stats.handled)
    assert outcomes == sorted(["ignored"] * 5 + ["failed", "completed"])
    reasons = " | ".join(h.reason for h in stats.handled)
    assert "malformed message: the body is not JSON" in reasons
    assert "S3 test event" in reasons
    assert "not the input bucket" in reasons
    assert "is not an input key" in reasons and "invalid job id 'not-a-job-id'" in reasons
    stray = backend.jobs.get(unknown)
    assert stray.status == JobStatus.COMPLETED and stray.title == f"upload {unknown[:8]}"
    assert stray.source_file_size_bytes == clip.stat().st_size
    assert backend.objects.exists(backend.output_bucket, keys.final_key(unknown))
    failed = backend.jobs.get(deleted_job)
    assert failed.status == JobStatus.FAILED and "was deleted before the job could finish" in failed.failure_reason
    assert _queue_counts(settings) == (0, 0)
    assert backend.objects.list_keys(backend.input_bucket, "input/") == input_before  # the worker deleted nothing

    # ... and it is still working: a real upload afterwards completes.
    job_id = _upload(backend, clip)
    after = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5)
    assert [h.outcome for h in after.handled] == [Outcome.COMPLETED]
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED


def test_a_conversion_error_fails_the_job_with_its_reason_and_deletes_the_message(aws, tmp_path):
    backend, queue, settings = aws
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing a decoder can use" * 50)
    job_id = _upload(backend, garbage, "garbage")
    stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5)
    assert [h.outcome for h in stats.handled] == [Outcome.FAILED]
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.FAILED and job.failure_reason
    assert stats.handled[0].reason == job.failure_reason
    assert _queue_counts(settings) == (0, 0)
    assert backend.objects.exists(backend.input_bucket, keys.input_key(job_id))  # the source stays


def test_a_new_upload_event_resumes_a_failed_job_at_the_segment_level(aws, clip):
    backend, queue, settings = aws
    job_id = _upload(backend, clip)
    (first,) = queue.receive(wait_seconds=5)
    queue.delete(first)  # this delivery's run is lost: chunked, one segment converted, then the job failed
    steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    kept = steps.convert(backend, job_id, 0)
    steps.fail(backend, job_id, "the node was reclaimed")
    body = json.loads(first.body)
    body["Records"][0]["s3"]["object"]["sequencer"] = "00A1B2C3D4E5F60718"  # a re-upload: a new sequencer
    queue.send(json.dumps(body))

    stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5)

    assert [h.outcome for h in stats.handled] == [Outcome.COMPLETED]
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    completions = backend.completions.query_by_job(job_id)
    assert [c.segment_index for c in completions] == [0, 1, 2, 3]
    assert completions[0].convert_seconds == kept.convert_seconds  # the segment done before was not redone


def test_worker_survives_an_unreachable_queue_until_stopped(moto_endpoint, caplog):  # noqa: F811
    # (the moto fixture only provides the dummy credentials here; the queue points at a closed port)
    queue = SqsQueue(AwsClients(AwsConfig(endpoint_url="http://127.0.0.1:9")), "http://127.0.0.1:9/1/q")
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    from stereo_spot.adapters.aws import aws_backend as build
    from stereo_spot.config import Settings

    backend = build(Settings(aws_endpoint_url="http://127.0.0.1:9"))
    with caplog.at_level("WARNING", logger="stereo_spot.cluster.worker"):
        stats = run_worker(backend, queue, stop_event=stop, wait_seconds=1)
    timer.join()
    assert stats.handled == []
    assert "cannot receive messages" in caplog.text and "cannot reach SQS at http://127.0.0.1:9" in caplog.text


def test_sigterm_stops_the_worker_process_cleanly(aws):
    _, _, settings = aws
    env = {key.upper(): str(value) for key, value in settings.model_dump().items()
           if value is not None and key != "stereo_spot_home"}
    import os

    env = {**os.environ, **env}
    code = "import typer; from stereo_spot.cli.aws import worker_command; typer.run(worker_command)"
    process = subprocess.Popen([sys.executable, "-c", code, "--wait-seconds", "1"], env=env,
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        lines = []
        for line in process.stderr:  # wait until it polls
            lines.append(line)
            if "worker started" in line:
                break
        process.terminate()  # SIGTERM
        _, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "SIGTERM: taking no new messages" in output and "worker stopped" in output


def test_heartbeat_keeps_a_long_job_message_hidden(aws):
    import time

    from stereo_spot.cluster.worker import _Heartbeat

    _, queue, settings = aws
    queue.send("long job")
    (message,) = queue.receive(wait_seconds=1, visibility_timeout=1)
    heartbeat = _Heartbeat(queue, message, visibility_timeout=60)
    heartbeat.interval = 0.1  # beat often, so the 1 s visibility it was received with is extended in time
    with heartbeat:
        time.sleep(2.0)  # well past the visibility the message was received with
        assert queue.receive(wait_seconds=0) == []  # still hidden: extended by the heartbeat
    assert _queue_counts(settings) == (0, 1)
    queue.release(message)
    assert [m.message_id for m in queue.receive(wait_seconds=1)] == [message.message_id]


def test_a_job_past_its_maximum_runtime_is_failed_and_not_retried(aws, clip):
    backend, queue, settings = aws
    job_id = _upload(backend, clip)
    (message,) = queue.receive(wait_seconds=5)
    worker = Worker(backend, queue, abort_event=threading.Event(), workers=1, max_runtime_seconds=0)
    handled = worker.handle(message)
    assert handled.outcome == Outcome.FAILED and "MAX_JOB_RUNTIME_SECONDS" in handled.reason
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.FAILED and "MAX_JOB_RUNTIME_SECONDS" in job.failure_reason
    assert _queue_counts(settings) == (0, 0)  # deleted: not handed to another worker


def test_the_heartbeat_stops_at_the_runtime_deadline():
    import time

    from stereo_spot.cluster.worker import _Heartbeat
    from stereo_spot.ports import QueueMessage

    class Counting:
        beats = 0

        def extend_visibility(self, message, seconds):
            Counting.beats += 1

    message = QueueMessage("m", "{}", "r")
    with _Heartbeat(Counting(), message, visibility_timeout=3):  # beats every second
        time.sleep(1.5)
    assert Counting.beats >= 1
    Counting.beats = 0
    with _Heartbeat(Counting(), message, visibility_timeout=3, deadline=time.monotonic()):  # already past it
        time.sleep(1.5)
    assert Counting.beats == 0  # the message is not held any longer
