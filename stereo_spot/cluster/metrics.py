"""Prometheus metrics of the SQS worker (``stereo-spot worker --metrics-port 9108``), served on ``/metrics``.

    stereo_spot_jobs_started_total                 jobs this worker began (or resumed)
    stereo_spot_jobs_completed_total               jobs it finished
    stereo_spot_jobs_failed_total{reason}          jobs that ended failed: user_error (bad input: the reason is on
                                                   the job), source_deleted, internal (a bug or a crash in a step)
    stereo_spot_messages_total{outcome}            queue messages by what happened (completed, failed, ignored,
                                                   duplicate, released, retry)
    stereo_spot_segments_converted_total           segments converted
    stereo_spot_frames_converted_total             frames converted: rate() of it is the frames per second
    stereo_spot_frames_per_second                  the current job's conversion speed
    stereo_spot_jobs_in_flight                     jobs running now (0 or 1: a worker takes one at a time)
    stereo_spot_job_duration_seconds               wall time of finished jobs (histogram)

Each Worker gets its own registry, so tests (and two workers in one process) do not share counters. The
``reason`` label is a closed set: a label per failure message would grow without bound.
"""

from __future__ import annotations

import time
from typing import Any

FAILURE_REASONS = ("user_error", "source_deleted", "internal")


class WorkerMetrics:
    def __init__(self, registry: Any = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs_started = Counter("stereo_spot_jobs_started", "Jobs the worker began or resumed.", registry=r)
        self.jobs_completed = Counter("stereo_spot_jobs_completed", "Jobs the worker finished.", registry=r)
        self.jobs_failed = Counter("stereo_spot_jobs_failed", "Jobs that ended failed, by reason.", ["reason"],
                                   registry=r)
        self.messages = Counter("stereo_spot_messages", "Queue messages handled, by outcome.", ["outcome"],
                                registry=r)
        self.segments = Counter("stereo_spot_segments_converted", "Segments converted.", registry=r)
        self.frames = Counter("stereo_spot_frames_converted", "Frames converted.", registry=r)
        self.fps = Gauge("stereo_spot_frames_per_second", "Conversion speed of the current job.", registry=r)
        self.in_flight = Gauge("stereo_spot_jobs_in_flight", "Jobs running now.", registry=r)
        self.duration = Histogram("stereo_spot_job_duration_seconds", "Wall time of finished jobs.", registry=r,
                                  buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400))
        for reason in FAILURE_REASONS:
            self.jobs_failed.labels(reason)  # present at 0, so rate() and alerts work before the first failure
        self._job: str | None = None
        self._frames_seen = self._segments_seen = 0
        self._frames_base: int | None = None
        self._convert_started = 0.0

    # --- a job's life ---------------------------------------------------------------------------------

    def job_started(self, job_id: str) -> float:
        self.jobs_started.inc()
        self.in_flight.inc()
        self._job, self._frames_base = job_id, None
        return time.monotonic()

    def job_ended(self, started: float, *, completed: bool, reason: str | None = None) -> None:
        """``reason``: one of FAILURE_REASONS when the job ended failed; None when it did not end (released)."""
        self.in_flight.dec()
        self.fps.set(0)
        self._job = None
        if completed:
            self.jobs_completed.inc()
            self.duration.observe(time.monotonic() - started)
        elif reason is not None:
            self.jobs_failed.labels(reason if reason in FAILURE_REASONS else "internal").inc()

    def message(self, outcome: str) -> None:
        self.messages.labels(outcome).inc()

    def progress(self, state: Any) -> None:
        """The runner's Progress. Counts what converted since the last report; the first report of a resumed
        job carries the frames converted before, which are not this worker's."""
        if state.job_id != self._job or state.stage == "chunk":
            return
        if self._frames_base is None:
            self._frames_base, self._frames_seen = state.frames_done, state.frames_done
            self._segments_seen, self._convert_started = state.segments_done, time.monotonic()
            return
        if state.frames_done > self._frames_seen:
            self.frames.inc(state.frames_done - self._frames_seen)
            self._frames_seen = state.frames_done
        if state.segments_done > self._segments_seen:
            self.segments.inc(state.segments_done - self._segments_seen)
            self._segments_seen = state.segments_done
        elapsed = time.monotonic() - self._convert_started
        if elapsed > 0 and state.stage == "convert":
            self.fps.set((self._frames_seen - self._frames_base) / elapsed)


def serve(metrics: WorkerMetrics, port: int, address: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on a background thread; returns the server (``.shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=metrics.registry)
    return server
