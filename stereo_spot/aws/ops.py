"""Operator actions behind the runbooks: recover a job stuck in chunking, inspect and replay the dead-letter
queue. The CLI (``stereo-spot aws ...``) is a thin layer over these."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from stereo_spot import keys
from stereo_spot.adapters.aws import AwsClients, AwsConfig, DynamoEventDedup, SqsQueue, aws_errors
from stereo_spot.cluster.worker import MalformedEvent, event_id, parse_event
from stereo_spot.config import Settings
from stereo_spot.errors import StepError, UserError
from stereo_spot.models import Job, JobStatus
from stereo_spot.ports import Backend, QueueMessage

# --- a job stuck in chunking ----------------------------------------------------------------------------


def recover_chunking(backend: Backend, job_id: str) -> Job:
    """Finish the bookkeeping of a chunk step that stored every segment but died before its final update:
    derive ``total_segments`` from the segment keys and set it with ``chunking_complete`` in one conditional
    update. Refuses when the segments are incomplete (then re-run the chunk step: ``stereo-spot resume``)."""
    keys.validate_job_id(job_id)
    job = backend.jobs.get(job_id)
    if job is None:
        raise UserError(f"job {job_id} does not exist")
    if job.status != JobStatus.CHUNKING_IN_PROGRESS:
        raise StepError(f"job {job_id} is {job.status.value}, not chunking_in_progress: nothing to recover")
    parsed = []
    for key in backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job_id)):
        try:
            parsed.append(keys.parse_segment_key(key))
        except keys.InvalidKey:
            continue  # a stray object under the prefix: not a segment
    parsed = [p for p in parsed if p.mode == job.mode]
    if not parsed:
        raise StepError(f"job {job_id} has no segments under {keys.segments_prefix(job_id)}; re-run the chunk "
                        f"step with `stereo-spot resume {job_id}`")
    totals = {p.total_segments for p in parsed}
    if len(totals) != 1:
        raise StepError(f"job {job_id}: segment keys disagree on the total ({sorted(totals)}): segments of two "
                        f"chunk runs are mixed; re-run the chunk step with `stereo-spot resume {job_id}`")
    total = totals.pop()
    missing = sorted(set(range(total)) - {p.segment_index for p in parsed})
    if missing:
        raise StepError(f"job {job_id}: {len(missing)} of {total} segments are missing (first: {missing[0]}); "
                        f"re-run the chunk step with `stereo-spot resume {job_id}`")
    return backend.jobs.update(job_id, expected_status=JobStatus.CHUNKING_IN_PROGRESS,
                               status=JobStatus.CHUNKING_COMPLETE, total_segments=total)


# --- the dead-letter queue ------------------------------------------------------------------------------


@dataclass
class DeadLetter:
    message_id: str
    receive_count: int
    sent_at_ms: int | None
    key: str | None
    job_id: str | None
    job_status: str | None
    problem: str | None  # why the body cannot start a run, if it cannot


def _clients(settings: Settings) -> AwsClients:
    return AwsClients(AwsConfig.from_settings(settings))


def dead_letter_queue(settings: Settings) -> SqsQueue:
    """The events queue's dead-letter queue, found through its redrive policy."""
    if not settings.chunking_queue_url:
        raise UserError("CHUNKING_QUEUE_URL is not set: `stereo-spot aws bootstrap` prints it")
    clients = _clients(settings)
    sqs = clients.client("sqs")
    with aws_errors(clients, "sqs", f"reading the redrive policy of {settings.chunking_queue_url}"):
        attributes = sqs.get_queue_attributes(QueueUrl=settings.chunking_queue_url,
                                              AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    if "RedrivePolicy" not in attributes:
        raise UserError(f"queue {settings.chunking_queue_url} has no dead-letter queue (run "
                        "`stereo-spot aws bootstrap`)")
    arn = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
    account, name = arn.split(":")[4], arn.split(":")[5]
    with aws_errors(clients, "sqs", f"looking up the dead-letter queue {name}"):
        url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
    return SqsQueue(clients, url)


def _describe(message: QueueMessage, backend: Backend) -> DeadLetter:
    sent = message.attributes.get("SentTimestamp")
    letter = DeadLetter(message.message_id, int(message.attributes.get("ApproximateReceiveCount", 0) or 0),
                        int(sent) if sent else None, None, None, None, None)
    try:
        records = parse_event(message.body)
    except MalformedEvent as exc:
        letter.problem = f"malformed: {exc}"
        return letter
    if not records:
        letter.problem = "S3 test event"
        return letter
    letter.key = records[0].key
    try:
        letter.job_id = keys.parse_input_key(records[0].key)
    except keys.InvalidKey as exc:
        letter.problem = str(exc)
        return letter
    job = backend.jobs.get(letter.job_id)
    letter.job_status = job.status.value if job else None
    if job is None:
        letter.problem = "no such job"
    elif job.status.is_terminal:
        letter.problem = f"the job is {job.status.value}: nothing to run (`stereo-spot resume` re-runs a failed job)"
    return letter


def peek_dead_letters(settings: Settings, backend: Backend, limit: int = 10) -> list[DeadLetter]:
    """Read up to ``limit`` dead letters without removing them (they are made visible again at the end)."""
    dlq = dead_letter_queue(settings)
    seen: dict[str, QueueMessage] = {}
    while len(seen) < limit:
        batch = dlq.receive(max_messages=min(10, limit - len(seen)), wait_seconds=1, visibility_timeout=60)
        if not batch:
            break
        for message in batch:
            seen.setdefault(message.message_id, message)
    letters = [_describe(message, backend) for message in seen.values()]
    for message in seen.values():
        dlq.release(message)
    return letters


def replay_dead_letters(settings: Settings, backend: Backend, limit: int | None = None) -> list[DeadLetter]:
    """Send dead letters back to the events queue so a worker (or the Sensor) runs their jobs again.

    The worker would take a replayed message (a new message id) for a duplicate of an upload it has seen, so
    the upload's dedup claims are removed first. Messages that would not start a run (malformed, test events,
    keys outside input/, jobs that do not exist or have ended) are dropped instead of replayed."""
    dlq = dead_letter_queue(settings)
    events = SqsQueue(dlq.clients, settings.chunking_queue_url or "")
    dedup = DynamoEventDedup(dlq.clients, settings.event_dedup_table_name)
    replayed: list[DeadLetter] = []
    while limit is None or len(replayed) < limit:
        batch = dlq.receive(max_messages=1, wait_seconds=1, visibility_timeout=120)
        if not batch:
            break
        message = batch[0]
        letter = _describe(message, backend)
        if letter.problem is None:
            for obj in parse_event(message.body):
                dedup.forget(event_id(obj))
                dedup.forget(f"{event_id(obj)}|message={message.message_id}")
            events.send(message.body)
        dlq.delete(message)  # only after the send: a crash in between leaves a duplicate, not a loss
        replayed.append(letter)
    return replayed


def queue_depths(settings: Settings) -> dict[str, Any]:
    """Visible and in-flight message counts of the events queue and its dead-letter queue."""
    clients = _clients(settings)
    result: dict[str, Any] = {}
    for label, queue in (("events", SqsQueue(clients, settings.chunking_queue_url or "")),
                         ("dead letters", dead_letter_queue(settings))):
        attributes = queue.attributes()
        result[label] = {"url": queue.queue_url,
                         "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
                         "in flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))}
    return result
