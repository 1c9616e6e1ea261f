"""Runbook actions against a moto server: recover a job stuck in chunking, inspect and replay the dead-letter
queue (through the CLI), and the operator links."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.adapters.aws import aws_backend, events_queue
from stereo_spot.adapters.operator_links import EnvOperatorLinks, links_from_settings
from stereo_spot.aws.ops import recover_chunking
from stereo_spot.cluster.worker import Outcome, parse_event, run_worker
from stereo_spot.errors import StepError
from stereo_spot.models import ConversionSettings, Job, JobStatus
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401


@pytest.fixture
def backend(aws_settings):  # noqa: F811
    return aws_backend(aws_settings)


def _stuck_job(backend, total: int, present: list[int], mode: str = "sbs") -> str:
    job = Job(job_id=keys.new_job_id(), status=JobStatus.CHUNKING_IN_PROGRESS)
    backend.jobs.put(job)
    for index in present:
        backend.objects.write_bytes(backend.input_bucket, keys.segment_key(job.job_id, index, total, mode), b"s")
    return job.job_id


def test_recover_chunking_derives_total_segments_from_the_keys(backend):
    job_id = _stuck_job(backend, 3, [2, 0, 1])
    backend.objects.write_bytes(backend.input_bucket, f"{keys.segments_prefix(job_id)}notes.txt", b"stray")
    job = recover_chunking(backend, job_id)
    assert job.status == JobStatus.CHUNKING_COMPLETE and job.total_segments == 3
    assert backend.jobs.get(job_id) == job
    with pytest.raises(StepError, match="not chunking_in_progress"):
        recover_chunking(backend, job_id)


@pytest.mark.parametrize("present,message", [
    ([], "has no segments"),
    ([0, 2], "1 of 3 segments are missing"),
])
def test_recover_chunking_refuses_incomplete_segments(backend, present, message):
    job_id = _stuck_job(backend, 3, present)
    with pytest.raises(StepError, match=message):
        recover_chunking(backend, job_id)
    assert backend.jobs.get(job_id).status == JobStatus.CHUNKING_IN_PROGRESS


def test_recover_chunking_refuses_segments_of_two_runs(backend):
    job_id = _stuck_job(backend, 2, [0, 1])
    backend.objects.write_bytes(backend.input_bucket, keys.segment_key(job_id, 0, 3, "sbs"), b"s")
    with pytest.raises(StepError, match="disagree on the total"):
        recover_chunking(backend, job_id)


def _cli_env(settings) -> dict[str, str]:
    return {key.upper(): str(value) for key, value in settings.model_dump().items()
            if value is not None and key != "stereo_spot_home"}


def test_dead_letters_are_shown_and_replayed_then_the_job_completes(aws_settings, tmp_path, monkeypatch):  # noqa: F811
    from stereo_spot.cli.aws import app
    from stereo_spot.sample import write_sample

    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    backend = aws_backend(aws_settings)
    queue = events_queue(aws_settings)
    for message in queue.receive(max_messages=10, wait_seconds=1):  # bootstrap's s3:TestEvent
        queue.delete(message)
    clip = write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(160, 96), fps=24, gop=6)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)

    # A worker claims the upload and goes away mid-job; then the message keeps coming back unprocessed until
    # SQS moves it to the dead-letter queue (maxReceiveCount 5).
    abort = threading.Event()
    first = run_worker(backend, queue, stop_event=threading.Event(), abort_event=abort, workers=1, wait_seconds=5,
                       progress=lambda state: abort.set() if state.stage == "convert" else None)
    assert [h.outcome for h in first.handled] == [Outcome.RELEASED]
    for _ in range(4):
        (again,) = queue.receive(wait_seconds=1)
        queue.release(again)
    assert queue.receive(wait_seconds=1) == []

    env = _cli_env(aws_settings)
    runner = CliRunner()
    shown = runner.invoke(app, ["dlq", "show"], env=env)
    assert shown.exit_code == 0, shown.output
    assert first.handled[0].message_id in shown.stdout and "chunking_complete" in shown.stdout
    # Showing leaves them there (each look counts as a receive: SQS has no read-only peek).
    assert first.handled[0].message_id in runner.invoke(app, ["dlq", "show"], env=env).stdout

    refused = runner.invoke(app, ["dlq", "replay"], input="n\n", env=env)
    assert refused.exit_code == 1
    replayed = runner.invoke(app, ["dlq", "replay", "--yes"], env=env)
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1, dropped 0" in replayed.stdout
    assert "the dead-letter queue is empty" in runner.invoke(app, ["dlq", "show"], env=env).stdout

    # The replayed message is a new message for an upload already claimed: the replay removed the claims,
    # so it runs instead of being dropped as a duplicate, and the job resumes where it stopped.
    done = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1, wait_seconds=5)
    assert [h.outcome for h in done.handled] == [Outcome.COMPLETED]
    assert backend.jobs.get(job.job_id).status == JobStatus.COMPLETED

    depths = runner.invoke(app, ["queues"], env=env)
    assert depths.exit_code == 0 and "dead letters" in depths.stdout


def test_replay_drops_letters_that_cannot_start_a_run(aws_settings):  # noqa: F811
    from stereo_spot.aws.ops import dead_letter_queue, replay_dead_letters

    backend = aws_backend(aws_settings)
    dlq = dead_letter_queue(aws_settings)
    dlq.send("garbage")
    letters = replay_dead_letters(aws_settings, backend)
    assert len(letters) == 1 and letters[0].problem.startswith("malformed")
    queue = events_queue(aws_settings)
    assert all(parse_event(m.body) == [] for m in queue.receive(max_messages=10, wait_seconds=1))  # test event only


def test_recover_chunking_command(aws_settings):  # noqa: F811
    from stereo_spot.cli.aws import app

    backend = aws_backend(aws_settings)
    job_id = _stuck_job(backend, 2, [0, 1])
    result = CliRunner().invoke(app, ["recover-chunking", job_id], env=_cli_env(aws_settings))
    assert result.exit_code == 0, result.output
    assert "chunking_complete, 2 segments" in result.stdout
    again = CliRunner().invoke(app, ["recover-chunking", job_id], env=_cli_env(aws_settings))
    assert again.exit_code == 1 and "error: job" in again.stderr and "Traceback" not in again.output


# --- operator links (no server) ---------------------------------------------------------------------------


def test_operator_links_from_the_environment():
    job_id = keys.new_job_id()
    assert links_from_settings(_settings()) is None
    argo = EnvOperatorLinks(argo_ui_url="https://argo.example.com/", argo_namespace="media")
    # the job's runs, listed by their label (a job may have a failed run and the run that resumed it)
    assert argo.run_link(job_id) == f"https://argo.example.com/workflows/media?label=stereo-spot.io%2Fjob-id%3D{job_id}"
    assert argo.logs_link(job_id) is None
    kfp = EnvOperatorLinks(kfp_ui_url="https://kf.example.com/pipeline")
    assert kfp.run_link(job_id) == "https://kf.example.com/pipeline/#/runs"
    templated = EnvOperatorLinks(kfp_ui_url="https://kf.example.com/#/runs?q={job_id}",
                                 logs_url_template='https://grafana.example.com/explore?left={"expr":'
                                                   '"{app=\\"stereo-spot\\"} |= \\"{job_id}\\""}')
    assert templated.run_link(job_id) == f"https://kf.example.com/#/runs?q={job_id}"
    assert templated.logs_link(job_id).endswith(f'|= \\"{job_id}\\""}}')  # JSON braces left alone
    both = EnvOperatorLinks(argo_ui_url="https://argo", kfp_ui_url="https://kf")
    assert both.run_link(job_id).startswith("https://argo/")
    settings = _settings(argo_ui_url="https://argo.example.com", logs_url_template="https://logs/{workflow}")
    links = links_from_settings(settings)
    assert links.logs_link(job_id) == f"https://logs/stereo-spot-{job_id}"
    with pytest.raises(ValueError):
        links.run_link("../etc")


def _settings(**values):
    from stereo_spot.config import Settings

    return Settings(**values)
