"""``stereo-spot worker``: run the pipeline for each upload, reading S3 events from SQS (deployments without
Kubernetes). The embedded runner does the work on this machine's CPU/GPU against the configured storage.

For each message:

* not JSON, or not an S3 event: deleted, with the reason logged;
* ``s3:TestEvent`` (sent when the notification is set up), other buckets and keys that are not
  ``input/{job_id}/source.mp4``: deleted and logged. An upload without a Job record gets one, as on every
  engine (``steps.job_for_upload``), and is converted with the default settings;
* a job that is completed or deleted already: deleted (a late duplicate). A failed job is not: a new upload
  event for it (a re-upload, reconcile's re-drive) starts it again, and it resumes at the segment level, as on
  the Argo and Kubeflow paths (``steps.FINAL_STATUSES``);
* otherwise the event is claimed in the dedup table before anything runs. A second delivery of the same upload
  (S3 -> SQS is at-least-once) finds the claim and is deleted without starting a second run. The claim also
  records the SQS message id, so the *same* message coming back (released at shutdown, or after a worker died)
  resumes the job: the steps are idempotent and skip what is done;
* the source object must still exist; if it was deleted the job is failed with a reason;
* while the job runs a heartbeat keeps extending the message's visibility; the message is deleted once the job
  ends completed or failed. Nothing in the input bucket is ever deleted by the worker.

Shutdown (SIGTERM, e.g. a spot reclaim): ``stop_event`` stops taking messages and lets the current job finish;
``abort_event`` gives the current job up at its next progress report and makes its message visible again at
once (visibility 0), so another worker resumes it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stereo_spot import keys, steps
from stereo_spot.errors import UserError, failure_reason, one_line
from stereo_spot.logs import log_context
from stereo_spot.models import JobStatus, ObjectCreated
from stereo_spot.ports import Backend, QueueMessage, QueueReceiver, StoreError

log = logging.getLogger(__name__)

DEFAULT_VISIBILITY_SECONDS = 300
COMPLETED_ELSEWHERE = "completed by another run"


class MalformedEvent(ValueError):
    """A queue message that is not an S3 event notification."""


class Outcome(StrEnum):
    COMPLETED = "completed"  # job completed; message deleted
    FAILED = "failed"  # job failed with a reason; message deleted
    IGNORED = "ignored"  # not an upload to convert; message deleted
    DUPLICATE = "duplicate"  # the upload already started (or finished) a run; message deleted
    RELEASED = "released"  # shutting down: message made visible again for another worker
    RETRY = "retry"  # the stores could not be reached: message left to come back after its visibility timeout


@dataclass
class HandledMessage:
    message_id: str
    outcome: Outcome
    reason: str = ""
    job_id: str | None = None
    user_error: bool = False  # a failed job's cause was the input (for the failure metric's reason)


@dataclass
class WorkerStats:
    handled: list[HandledMessage] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for h in self.handled if h.outcome == outcome)


class _TimedOut(KeyboardInterrupt):
    """The job ran longer than MAX_JOB_RUNTIME_SECONDS (raised from the progress callback, passed through by the
    runner like an interrupt)."""


class _Aborted(KeyboardInterrupt):
    """Raised from the progress callback to leave the runner like an interrupt: the job is left as it is (not
    failed), ready to resume. A KeyboardInterrupt subclass because the runner passes interrupts through."""


# --- parsing --------------------------------------------------------------------------------------------


def parse_event(body: str) -> list[ObjectCreated]:
    """The object-created records of an S3 event notification; [] for ``s3:TestEvent`` and for events of
    other kinds. Raises MalformedEvent for anything that is not an S3 notification."""
    try:
        event = json.loads(body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedEvent(f"the body is not JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from exc
    if isinstance(event, dict) and event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
        return parse_event(event["Message"])  # delivered through SNS: the S3 event is the SNS message
    if not isinstance(event, dict):
        raise MalformedEvent("the body is not a JSON object")
    if event.get("Event") == "s3:TestEvent":
        return []
    records = event.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("no 'Records' list: not an S3 event notification")
    found: list[ObjectCreated] = []
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise MalformedEvent(f"record {number} is not an object")
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        try:
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            key = keys.normalize_event_key(obj["key"])
        except (KeyError, TypeError) as exc:
            raise MalformedEvent(f"record {number} lacks s3.bucket.name or s3.object.key") from exc
        if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
            raise MalformedEvent(f"record {number} has an empty bucket or key")
        found.append(ObjectCreated(bucket=bucket, key=key, etag=obj.get("eTag") or None,
                                   version_id=obj.get("versionId") or None, sequencer=obj.get("sequencer") or None,
                                   size=obj.get("size")))
    return found


def event_id(obj: ObjectCreated) -> str:
    """Identifies one upload: the same object version delivered twice has the same id, a new upload of the
    same key a new one (another version/ETag and a later sequencer)."""
    return f"s3://{obj.bucket}/{obj.key}@{obj.version_id or obj.etag or '-'}#{obj.sequencer or '-'}"


# --- heartbeat ------------------------------------------------------------------------------------------


class _Heartbeat:
    """Keeps the message invisible to other workers while its job runs, but not past ``deadline`` (monotonic
    seconds): a job that hangs must not hold its message forever."""

    def __init__(self, receiver: QueueReceiver, message: QueueMessage, visibility_timeout: int,
                 deadline: float | None = None):
        self.receiver, self.message, self.visibility_timeout = receiver, message, visibility_timeout
        self.deadline = deadline
        self.interval = max(1.0, visibility_timeout / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{message.message_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.deadline is not None and time.monotonic() > self.deadline:
                log.warning("message %s: the job ran past MAX_JOB_RUNTIME_SECONDS; no more visibility extensions",
                            self.message.message_id)
                return
            try:
                self.receiver.extend_visibility(self.message, self.visibility_timeout)
            except Exception as exc:  # noqa: BLE001 - keep beating; the job itself is unaffected
                log.warning("could not extend the visibility of message %s: %s", self.message.message_id,
                            one_line(exc))

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the worker -----------------------------------------------------------------------------------------


class Worker:
    def __init__(self, backend: Backend, receiver: QueueReceiver, *, abort_event: threading.Event,
                 workers: int | None = None, device: str | None = None,
                 visibility_timeout: int = DEFAULT_VISIBILITY_SECONDS,
                 progress: Callable[[Any], None] | None = None, metrics: Any = None,
                 max_runtime_seconds: int | None = None):
        self.backend, self.receiver = backend, receiver
        self.metrics = metrics  # a stereo_spot.cluster.metrics.WorkerMetrics, or None
        self.abort_event, self.workers, self.device = abort_event, workers, device
        self.visibility_timeout, self.progress = visibility_timeout, progress
        self.max_runtime_seconds = max_runtime_seconds
        self._deadline: float | None = None
        if backend.dedup is None:
            log.warning("the backend has no event dedup table: a duplicate delivery would start a second run")

    def handle(self, message: QueueMessage) -> HandledMessage:
        try:
            records = parse_event(message.body)
        except MalformedEvent as exc:
            return self._drop(message, Outcome.IGNORED, f"malformed message: {exc}")
        if not records:
            return self._drop(message, Outcome.IGNORED, "an S3 test event or no object-created record")
        result = HandledMessage(message.message_id, Outcome.IGNORED)
        for obj in records:  # S3 sends one record per message; more are handled in turn
            result = self._handle_upload(message, obj)
            if result.outcome in (Outcome.RELEASED, Outcome.RETRY):
                return result  # the message stays: what is done is skipped when it comes back
        self._delete(message)
        return result

    def _drop(self, message: QueueMessage, outcome: Outcome, reason: str, job_id: str | None = None) \
            -> HandledMessage:
        log.info("message %s dropped: %s", message.message_id, reason)
        self._delete(message)
        return HandledMessage(message.message_id, outcome, reason, job_id)

    def _delete(self, message: QueueMessage) -> None:
        try:
            self.receiver.delete(message)
        except StoreError as exc:  # it comes back later and is recognised as done
            log.warning("could not delete message %s: %s", message.message_id, one_line(exc))

    def _handle_upload(self, message: QueueMessage, obj: ObjectCreated) -> HandledMessage:
        mid = message.message_id

        def skip(outcome: Outcome, reason: str, job_id: str | None = None) -> HandledMessage:
            log.info("message %s: %s", mid, reason)
            return HandledMessage(mid, outcome, reason, job_id)

        if obj.bucket != self.backend.input_bucket:
            return skip(Outcome.IGNORED, f"event for bucket {obj.bucket}, not the input bucket "
                                         f"{self.backend.input_bucket}")
        try:
            job_id = keys.parse_input_key(obj.key)
        except keys.InvalidKey as exc:
            return skip(Outcome.IGNORED, str(exc))
        try:
            job = self.backend.jobs.get(job_id)
            if job is not None and job.status in steps.FINAL_STATUSES:
                return skip(Outcome.DUPLICATE, f"job {job_id} is {job.status.value} already", job_id)
            if not self._claim(message, obj, job_id):
                return skip(Outcome.DUPLICATE, f"duplicate delivery of {event_id(obj)}: job {job_id} was started "
                                               "by another delivery", job_id)
            if not self.backend.objects.exists(obj.bucket, obj.key):
                steps.fail(self.backend, job_id, f"the uploaded source {obj.key} was deleted before the job "
                                                 "could finish; upload the video again")
                if self.metrics is not None:
                    self.metrics.jobs_failed.labels("source_deleted").inc()
                return skip(Outcome.FAILED, f"job {job_id}: source {obj.key} no longer exists", job_id)
            steps.job_for_upload(self.backend, obj.bucket, obj.key)  # an upload without a record gets one
        except StoreError as exc:
            return skip(Outcome.RETRY, f"stores unavailable, the message comes back later: {one_line(exc)}", job_id)
        return self._run(message, job_id)

    def _claim(self, message: QueueMessage, obj: ObjectCreated, job_id: str) -> bool:
        """True when this delivery may run the job: the first delivery of the upload, or the same message
        delivered again (it was released, or its worker died)."""
        dedup = self.backend.dedup
        if dedup is None:
            return True
        event = event_id(obj)
        # The message's own claim first: should the worker die between the two writes, the message comes back
        # and resumes (at worst a duplicate run of idempotent steps), rather than being dropped as a duplicate
        # with its job stuck.
        new_message = dedup.claim(f"{event}|message={message.message_id}", job_id)
        first_delivery = dedup.claim(event, job_id)
        return first_delivery or not new_message

    def _progress(self, state: Any) -> None:
        if self.metrics is not None:
            self.metrics.progress(state)
        if self.progress is not None:
            self.progress(state)
        if self.abort_event.is_set():
            raise _Aborted()
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise _TimedOut()

    def _run(self, message: QueueMessage, job_id: str) -> HandledMessage:
        with log_context(job_id=job_id):
            return self._run_measured(message, job_id)

    def _run_measured(self, message: QueueMessage, job_id: str) -> HandledMessage:
        if self.metrics is None or self.abort_event.is_set():
            return self._run_job(message, job_id)
        started = self.metrics.job_started(job_id)
        result: HandledMessage | None = None
        try:
            result = self._run_job(message, job_id)
        finally:
            completed = result is not None and result.outcome == Outcome.COMPLETED \
                and result.reason != COMPLETED_ELSEWHERE
            reason = None
            if result is not None and result.outcome == Outcome.FAILED:
                reason = "user_error" if result.user_error else "internal"
            self.metrics.job_ended(started, completed=completed, reason=reason)
        return result

    def _run_job(self, message: QueueMessage, job_id: str) -> HandledMessage:
        from stereo_spot.runner import run_job

        mid = message.message_id
        if self.abort_event.is_set():
            self._release(message)
            return HandledMessage(mid, Outcome.RELEASED, "shutting down before the job started", job_id)
        log.info("message %s: running job %s", mid, job_id)
        started = time.monotonic()
        limit = self.max_runtime_seconds
        if limit is None:
            from stereo_spot.config import get_settings

            limit = get_settings().max_job_runtime_seconds
        self._deadline = started + limit
        # The heartbeat stops before the message is released, so a late beat cannot hide it again.
        failure: Exception | None = None
        aborted = False
        with _Heartbeat(self.receiver, message, self.visibility_timeout, deadline=self._deadline):
            try:
                job = run_job(self.backend, job_id, workers=self.workers, device=self.device,
                              progress=self._progress)
            except _TimedOut:
                reason = f"the job ran longer than {limit} s (MAX_JOB_RUNTIME_SECONDS) and was stopped"
                steps.fail(self.backend, job_id, reason)
                # FAILED: the message is deleted, not retried (another run would take as long)
                return HandledMessage(mid, Outcome.FAILED, reason, job_id)
            except _Aborted:
                aborted = True
            except Exception as exc:  # noqa: BLE001 - the runner recorded the reason on the job
                failure = exc
        if aborted:
            self._release(message)
            return HandledMessage(mid, Outcome.RELEASED, "shutting down: the job resumes on another worker", job_id)
        if failure is not None:
            return self._after_failure(message, job_id, failure)
        elapsed = time.monotonic() - started
        log.info("message %s: job %s %s in %.1f s (%s segments)", mid, job_id, job.status.value, elapsed,
                 job.total_segments)
        return HandledMessage(mid, Outcome.COMPLETED, f"completed in {elapsed:.1f} s", job_id)

    def _after_failure(self, message: QueueMessage, job_id: str, exc: Exception) -> HandledMessage:
        reason = failure_reason(exc)
        try:
            job = self.backend.jobs.get(job_id)
        except StoreError:
            job = None
        if job is not None and job.status == JobStatus.FAILED:
            log.warning("message %s: job %s failed: %s", message.message_id, job_id, job.failure_reason or reason)
            return HandledMessage(message.message_id, Outcome.FAILED, job.failure_reason or reason, job_id,
                                  user_error=isinstance(exc, UserError))
        if job is not None and job.status == JobStatus.COMPLETED:  # another run finished it meanwhile
            return HandledMessage(message.message_id, Outcome.COMPLETED, COMPLETED_ELSEWHERE, job_id)
        # Not recorded as failed: the stores were unreachable. Give the message back for another try.
        log.warning("message %s: job %s interrupted (%s); the message is released for a retry",
                    message.message_id, job_id, reason)
        self._release(message)
        return HandledMessage(message.message_id, Outcome.RETRY, reason, job_id)

    def _release(self, message: QueueMessage) -> None:
        try:
            self.receiver.release(message)
            log.info("message %s released for another worker", message.message_id)
        except StoreError as exc:  # it becomes visible by itself when its visibility timeout ends
            log.warning("could not release message %s: %s", message.message_id, one_line(exc))


def run_worker(backend: Backend, receiver: QueueReceiver, *, stop_event: threading.Event,
               abort_event: threading.Event | None = None, max_messages: int | None = None,
               workers: int | None = None, device: str | None = None,
               visibility_timeout: int = DEFAULT_VISIBILITY_SECONDS, wait_seconds: int = 20,
               progress: Callable[[Any], None] | None = None, metrics: Any = None) -> WorkerStats:
    """Long-poll ``receiver`` and handle messages one at a time until ``stop_event`` (or ``abort_event``) is
    set, or ``max_messages`` messages were handled. A message received while stopping is released at once."""
    abort_event = abort_event or threading.Event()
    worker = Worker(backend, receiver, abort_event=abort_event, workers=workers, device=device,
                    visibility_timeout=visibility_timeout, progress=progress, metrics=metrics)
    stats = WorkerStats()
    backoff = 1.0
    log.info("worker started: backend %s, input bucket %s", backend.name, backend.input_bucket)
    while not (stop_event.is_set() or abort_event.is_set()):
        if max_messages is not None and len(stats.handled) >= max_messages:
            break
        try:
            messages = receiver.receive(max_messages=1, wait_seconds=wait_seconds,
                                        visibility_timeout=visibility_timeout)
        except StoreError as exc:
            log.warning("cannot receive messages (retrying in %.0f s): %s", backoff, one_line(exc))
            stop_event.wait(backoff)
            backoff = min(60.0, backoff * 2)
            continue
        backoff = 1.0
        for message in messages:
            if stop_event.is_set() or abort_event.is_set():
                worker._release(message)
                stats.handled.append(HandledMessage(message.message_id, Outcome.RELEASED, "shutting down"))
                continue
            try:
                handled = worker.handle(message)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop the worker
                log.exception("message %s: unexpected error; it comes back after its visibility timeout",
                              message.message_id)
                handled = HandledMessage(message.message_id, Outcome.RETRY, f"internal error: {one_line(exc)}")
            stats.handled.append(handled)
            if metrics is not None:
                metrics.message(handled.outcome.value)
    log.info("worker stopped after %d message(s)", len(stats.handled))
    return stats
