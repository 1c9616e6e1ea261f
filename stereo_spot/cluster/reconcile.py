"""``stereo-spot reconcile``: the backstop for uploads that never got a run and jobs that stopped moving.

Why it is needed: the Argo Events SQS EventSource deletes each message as soon as it is on the EventBus. If the
Sensor's trigger then fails after its retries (the Kubernetes API or KFP away for a while, a trigger Job that
gave up), the upload is gone from the queue and the dead-letter queue never sees it. A run can also die in a way
no exit handler records (a deleted Workflow, a lost node under the exit handler).

What it looks at, all from the stores (never the engine):

* **no run** — a job still ``created`` whose source was uploaded more than ``grace`` ago (chunk would have moved
  it to ``chunking_in_progress`` within minutes of the event);
* **upload without a job** — a recent ``input/{job_id}/source.mp4`` (within ``lookback``) with no job record;
* **stuck** — a job in ``chunking_in_progress``, ``chunking_complete`` or ``reassembling`` whose last sign of
  progress (a status change, a segment completion) is older than ``stuck_after``.

What it does, idempotently, through the path the engines already use: it sends a fresh S3 ObjectCreated event
for the source to the events queue (``CHUNKING_QUEUE_URL``). The Argo Sensor, the Kubeflow trigger and the SQS
worker then treat it like a new upload. Each event carries a new ``sequencer``, so the event-dedup table sees a
new delivery rather than a duplicate, and the Argo Sensor names the Workflow after it
(``stereo_spot.adapters.argo_runs.run_name``): the re-drive starts a new run even while the run that failed or stopped
without recording it is still kept on the cluster (7 days), or after it was deleted, and the new run resumes
the job (the steps skip the segments already done). A run still going meanwhile only delays the new one (the
per-job mutex), which then finds the work done. The Kubeflow trigger does the same: a run that failed, was
cancelled or was deleted does not count as the job's run (``kfp_trigger.ENDED_BADLY``).

A re-drive is itself claimed in the dedup table (``reconcile|…``), so one stuck state is re-driven at most once
per ``redrive_every`` window, an upload without a job once. A job with no progress for ``fail_after`` is marked
failed with a reason the user can read (``stereo-spot resume JOB`` or a new upload of the video continues it,
on either engine), so nothing stays "in progress" forever.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from stereo_spot import keys, steps
from stereo_spot.models import IN_PROGRESS_STATUSES, Job, JobStatus, utcnow
from stereo_spot.ports import Backend, ObjectInfo, QueueSender

log = logging.getLogger(__name__)


class Problem(StrEnum):
    NO_RUN = "no-run"
    NO_JOB = "upload-without-job"
    STUCK = "stuck"


class Action(StrEnum):
    REDRIVE = "redrive"  # a fresh upload event was (or would be) sent to the events queue
    FAIL = "fail"  # the job was (or would be) marked failed
    WAIT = "wait"  # re-driven recently; the next pass looks again


@dataclass(frozen=True)
class ReconcileSettings:
    grace: timedelta = timedelta(minutes=15)
    stuck_after: timedelta = timedelta(hours=2)
    fail_after: timedelta = timedelta(hours=24)
    redrive_every: timedelta = timedelta(hours=1)
    lookback: timedelta = timedelta(days=7)
    limit: int = 100  # re-drives and failures per pass: a backlog drains over a few passes


@dataclass(frozen=True)
class Finding:
    problem: Problem
    action: Action
    job_id: str
    key: str
    status: str  # the job's status, or "none" for an upload without a job
    since: datetime  # the last sign of progress
    reason: str

    def line(self, dry_run: bool) -> str:
        verb = {Action.REDRIVE: "would re-drive" if dry_run else "re-drove",
                Action.FAIL: "would fail" if dry_run else "failed",
                Action.WAIT: "waiting on"}[self.action]
        return (f"{verb} {self.job_id} ({self.problem.value}, {self.status} since "
                f"{self.since:%Y-%m-%d %H:%M:%S}Z): {self.reason}")


def _jobs_in_progress(backend: Backend, page_size: int = 200) -> list[Job]:
    found: list[Job] = []
    for status in IN_PROGRESS_STATUSES:
        cursor: str | None = None
        while True:
            page = backend.jobs.list_by_status(status, limit=page_size, cursor=cursor)
            found.extend(page.items)
            cursor = page.next_cursor
            if not cursor:
                break
    return found


def last_progress(backend: Backend, job: Job) -> datetime:
    """The latest moment the job visibly moved: its record's changes and, while converting, its segments."""
    times = [t for t in (job.updated_at, job.uploaded_at, job.chunking_started_at, job.reassembly_started_at)
             if t is not None]
    if job.status == JobStatus.CHUNKING_COMPLETE:
        times += [c.completed_at for c in backend.completions.query_by_job(job.job_id)]
    return max(times)


def redrive_event(bucket: str, key: str, info: ObjectInfo | None, now: datetime, reason: str) -> str:
    """An S3 event notification for the object, as S3 would send it (URL-encoded key), with a sequencer of its
    own so that the dedup table takes it for a new delivery."""
    obj = {"key": urllib.parse.quote_plus(key, safe="/"), "size": info.size if info else 0,
           "sequencer": f"reconcile-{now:%Y%m%dT%H%M%S%f}"}
    if info is not None and info.etag:
        obj["eTag"] = info.etag
    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
              "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
              "s3": {"bucket": {"name": bucket}, "object": obj},
              "stereoSpotRedrive": {"reason": reason}}
    return json.dumps({"Records": [record]})


class Reconciler:
    def __init__(self, backend: Backend, queue: QueueSender | None, settings: ReconcileSettings | None = None,
                 *, dry_run: bool = False, now: datetime | None = None):
        if queue is None and not dry_run:
            raise ValueError("reconcile needs the events queue to re-drive uploads")
        self.backend, self.queue, self.dry_run = backend, queue, dry_run
        self.settings = settings or ReconcileSettings()
        self.now = now or utcnow()
        self.acted = 0

    # --- finding ----------------------------------------------------------------------------------------

    def _source(self, job_id: str) -> tuple[str, ObjectInfo | None]:
        key = keys.input_key(job_id)
        return key, self.backend.objects.head(self.backend.input_bucket, key)

    def _check_job(self, job: Job) -> Finding | None:
        s = self.settings
        if job.status == JobStatus.CREATED:
            key, info = self._source(job.job_id)
            if info is None:
                return None  # nothing uploaded (yet): there is nothing to run
            uploaded = job.uploaded_at or info.last_modified or job.created_at
            if self.now - uploaded < s.grace:
                return None
            return self._decide(Problem.NO_RUN, job, key, uploaded, "uploaded, but no run ever started it")
        since = last_progress(self.backend, job)
        if self.now - since < s.stuck_after:
            return None
        return self._decide(Problem.STUCK, job, keys.input_key(job.job_id), since,
                            f"no progress for {_hours(self.now - since)}")

    def _decide(self, problem: Problem, job: Job, key: str, since: datetime, reason: str) -> Finding:
        if self.now - since >= self.settings.fail_after:
            return Finding(problem, Action.FAIL, job.job_id, key, job.status.value, since, reason)
        return Finding(problem, Action.REDRIVE, job.job_id, key, job.status.value, since, reason)

    def _uploads_without_job(self, known: set[str]) -> list[Finding]:
        found = []
        oldest, newest = self.now - self.settings.lookback, self.now - self.settings.grace
        for info in self.backend.objects.list_objects(self.backend.input_bucket, "input/"):
            if info.last_modified is None or not (oldest <= info.last_modified <= newest):
                continue
            try:
                job_id = keys.parse_input_key(info.key)
            except keys.InvalidKey:
                continue  # not a job's source: nothing any engine would run
            if job_id in known or self.backend.jobs.get(job_id) is not None:
                continue
            found.append(Finding(Problem.NO_JOB, Action.REDRIVE, job_id, info.key, "none", info.last_modified,
                                 "an upload without a job record"))
        return found

    def find(self) -> list[Finding]:
        jobs = _jobs_in_progress(self.backend)
        findings = [f for f in (self._check_job(job) for job in jobs) if f is not None]
        findings += self._uploads_without_job({job.job_id for job in jobs})
        return sorted(findings, key=lambda f: f.since)

    # --- acting -----------------------------------------------------------------------------------------

    def _claim_redrive(self, finding: Finding) -> bool:
        """At most one re-drive per stuck state per ``redrive_every`` (an upload without a job: once)."""
        dedup = self.backend.dedup
        if dedup is None:
            return True
        if finding.problem == Problem.NO_JOB:
            claim, ttl = f"reconcile|{finding.key}", self.settings.lookback
        else:
            # one claim per interval window: the window's number is part of the key, the TTL only cleans up
            every = self.settings.redrive_every.total_seconds()
            window = int(self.now.timestamp() // every)
            claim = f"reconcile|{finding.job_id}|{finding.status}|{finding.since.isoformat()}|{window}"
            ttl = 2 * self.settings.redrive_every
        return dedup.claim(claim, finding.job_id, ttl_seconds=int(ttl.total_seconds()))

    def _act(self, finding: Finding) -> Finding:
        if finding.action == Action.FAIL:
            if not self.dry_run:
                steps.fail(self.backend, finding.job_id,
                           f"no progress since {finding.since:%Y-%m-%d %H:%M} UTC ({finding.status}); "
                           f"run `stereo-spot resume {finding.job_id}` or upload the video again")
            return finding
        if self.dry_run:
            return finding
        if not self._claim_redrive(finding):
            return Finding(finding.problem, Action.WAIT, finding.job_id, finding.key, finding.status,
                           finding.since, finding.reason + "; re-driven recently")
        _, info = self._source(finding.job_id)
        self.queue.send(redrive_event(self.backend.input_bucket, finding.key, info, self.now, finding.reason))
        return finding

    def run(self) -> list[Finding]:
        done = []
        for finding in self.find():
            if self.acted >= self.settings.limit:
                log.warning("reached --limit %d; the rest waits for the next pass", self.settings.limit)
                break
            result = self._act(finding)
            if result.action != Action.WAIT:
                self.acted += 1
            log.info("%s", result.line(self.dry_run),
                     extra={"job_id": result.job_id, "problem": result.problem.value, "action": result.action.value})
            done.append(result)
        return done


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"
