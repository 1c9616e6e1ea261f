"""Logs are one JSON object per line with the job id and segment; the SQS worker's /metrics counts jobs,
segments and frames (an end-to-end run against a moto server, scraped over HTTP)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.request
import uuid

import pytest

from stereo_spot.logs import JsonFormatter, configure_logging, log_context


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_json_line_carries_the_context_and_extra_fields(capsys, monkeypatch):
    monkeypatch.setenv("STEREO_SPOT_LOG_FORMAT", "json")
    configure_logging()
    log = logging.getLogger("stereo_spot.test")
    with log_context(job_id="j-1", step="convert"):
        with log_context(segment=7):
            log.info("converted %d frames", 24, extra={"frames": 24})
        log.warning("after the segment")
    log.info("outside")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    first, second, third, fourth = _lines(capsys.readouterr().err)
    assert first["message"] == "converted 24 frames" and first["level"] == "info"
    assert (first["job_id"], first["segment"], first["step"], first["frames"]) == ("j-1", 7, "convert", 24)
    assert second["job_id"] == "j-1" and "segment" not in second
    assert "job_id" not in third and third["logger"] == "stereo_spot.test"
    assert "ValueError: boom" in fourth["exc_info"]  # the traceback stays inside the one line
    assert first["time"].endswith("Z")


def test_text_at_a_terminal_and_the_format_switch(monkeypatch):
    class Terminal:
        def isatty(self) -> bool:
            return True

    from stereo_spot.logs import wants_json

    monkeypatch.delenv("STEREO_SPOT_LOG_FORMAT", raising=False)
    assert wants_json(Terminal()) is False
    monkeypatch.setenv("STEREO_SPOT_LOG_FORMAT", "json")
    assert wants_json(Terminal()) is True
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(JsonFormatter().format(record))["message"] == "hello"


def test_a_failing_step_logs_its_job_step_and_segment(capsys, monkeypatch, tmp_path):
    """What Argo and Kubeflow keep of a failed convert pod: JSON lines a log query can select by job."""
    from stereo_spot.components._common import StepFailed, run_step
    from stereo_spot.errors import UserError

    monkeypatch.setenv("STEREO_SPOT_LOG_FORMAT", "json")
    monkeypatch.setenv("STORAGE_ADAPTER", "local")
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path))
    job_id = str(uuid.uuid4())

    def action(backend, job):
        logging.getLogger("stereo_spot.steps").info("converting")
        raise UserError("the segment is not a video")

    with pytest.raises(StepFailed):
        run_step("convert", f"input/{job_id}/source.mp4", action, segment=3)
    lines = _lines(capsys.readouterr().err)
    assert [line["message"] for line in lines] == ["converting", "convert: the segment is not a video"]
    assert all((line["job_id"], line["step"], line["segment"]) == (job_id, "convert", 3) for line in lines)


# --- the worker's metrics -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from stereo_spot.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)


def test_the_worker_serves_metrics_of_a_real_run(aws_settings, clip, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("prometheus_client")
    from stereo_spot import steps
    from stereo_spot.adapters.aws import aws_backend, events_queue
    from stereo_spot.cluster.metrics import WorkerMetrics, serve
    from stereo_spot.cluster.worker import run_worker
    from stereo_spot.models import ConversionSettings

    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    backend, queue = aws_backend(aws_settings), events_queue(aws_settings)
    for message in queue.receive(max_messages=10, wait_seconds=1):  # bootstrap's test event
        queue.delete(message)
    good = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, good.job_id, clip)
    bad = steps.create_job(backend, ConversionSettings(), "not a video")
    source = tmp_path / "bad.mp4"
    source.write_bytes(b"this is text, not video" * 100)
    steps.store_source(backend, bad.job_id, source)

    metrics = WorkerMetrics()
    port = _free_port()
    server = serve(metrics, port, address="127.0.0.1")
    try:
        before = _scrape(port)
        assert before["stereo_spot_jobs_in_flight"] == 0
        assert before['stereo_spot_jobs_failed_total{reason="user_error"}'] == 0  # present before any failure
        in_flight = []
        stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=2, workers=1,
                           wait_seconds=5, metrics=metrics,
                           progress=lambda state: in_flight.append(_scrape(port)["stereo_spot_jobs_in_flight"]))
        after = _scrape(port)
    finally:
        server.shutdown()
    assert sorted(h.outcome.value for h in stats.handled) == ["completed", "failed"]
    assert after["stereo_spot_jobs_started_total"] == 2
    assert after["stereo_spot_jobs_completed_total"] == 1
    assert after['stereo_spot_jobs_failed_total{reason="user_error"}'] == 1
    assert after['stereo_spot_messages_total{outcome="completed"}'] == 1
    job = backend.jobs.get(good.job_id)
    assert after["stereo_spot_segments_converted_total"] == job.total_segments == 2
    assert after["stereo_spot_frames_converted_total"] == 12  # every frame of the one-second clip, once
    assert after["stereo_spot_job_duration_seconds_count"] == 1
    assert after["stereo_spot_jobs_in_flight"] == 0 and set(in_flight) == {1.0}


from tests.moto_server import aws_settings, moto_endpoint  # noqa: E402, F401
