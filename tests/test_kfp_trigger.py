"""The Kubeflow trigger against a fake KFP API server that enforces the multi-user rules (bearer token with the
audience pipelines.kubeflow.org, namespace, experiment required) and counts runs: one run per upload, however
often the event is delivered or the trigger retried; standalone KFP without any token or Secret."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from stereo_spot.adapters.local import local_backend
from stereo_spot.cluster.kfp_trigger import (
    KfpApi,
    KfpSettings,
    KfpUnavailable,
    Outcome,
    TriggerConfigError,
    trigger,
)
from stereo_spot.models import Job, JobStatus
from tests.fake_kfp import FakeKfp, make_token, serve

SA = "system:serviceaccount:stereo-spot:stereo-spot-kfp-trigger"
PROFILE = "team-video"
PIPELINE = "5d1f4a7e-0000-4000-8000-000000000001"


def _event(bucket: str, key: str, etag: str = "etag-1", sequencer: str = "0061A") -> str:
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                                    "s3": {"bucket": {"name": bucket},
                                           "object": {"key": key, "size": 10, "eTag": etag,
                                                      "sequencer": sequencer}}}]})


@pytest.fixture
def backend(tmp_path):
    return local_backend(tmp_path / "home")


@pytest.fixture
def job(backend) -> Job:
    job = Job(job_id=str(uuid.uuid4()))
    backend.jobs.put(job)
    return job


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(make_token(SA))
    return path


@pytest.fixture
def multi_user():
    with serve(FakeKfp(multi_user=True, allowed={PROFILE: {SA}}, pipelines={PIPELINE})) as fake:
        yield fake


def _api(fake: FakeKfp, token_file, **overrides) -> KfpApi:
    values = dict(host=fake.url, pipeline_id=PIPELINE, namespace=PROFILE, token_path=str(token_file))
    values.update(overrides)
    return KfpApi(KfpSettings(**values))


def test_multi_user_run_is_created_in_the_experiment_of_the_namespace(backend, job, multi_user, token_file):
    key = f"input/{job.job_id}/source.mp4"
    (result,) = trigger(backend, _api(multi_user, token_file), _event(backend.input_bucket, key), "delivery-1")
    assert result.outcome == Outcome.STARTED and result.job_id == job.job_id
    (run,) = multi_user.runs
    (experiment,) = multi_user.experiments
    assert experiment == {"experiment_id": run["experiment_id"], "display_name": "stereo-spot",
                          "namespace": PROFILE}
    assert run["display_name"] == f"stereo-spot-{job.job_id}" and run["run_id"] == result.run_id
    assert run["pipeline_version_reference"] == {"pipeline_id": PIPELINE}
    assert run["runtime_config"]["parameters"] == {"bucket": backend.input_bucket, "key": key}
    assert all(token for token in multi_user.tokens()[1:])  # every call after healthz carried the token


def test_a_duplicate_delivery_makes_one_run(backend, job, multi_user, token_file):
    body = _event(backend.input_bucket, f"input/{job.job_id}/source.mp4")
    api = _api(multi_user, token_file)
    first = trigger(backend, api, body, "delivery-1")[0]
    second = trigger(backend, api, body, "delivery-2")[0]  # S3 -> SQS delivered it twice
    assert (first.outcome, second.outcome) == (Outcome.STARTED, Outcome.DUPLICATE)
    assert len(multi_user.runs) == 1
    # the experiment is reused, not created per run
    trigger(backend, api, _event(backend.input_bucket, f"input/{job.job_id}/source.mp4", sequencer="0099"), "d-3")
    assert len(multi_user.experiments) == 1


def test_a_retried_delivery_finds_its_run_instead_of_starting_another(backend, job, multi_user, token_file):
    """The pod created the run and died before exiting 0: the Job's next pod must not create a second one."""
    body = _event(backend.input_bucket, f"input/{job.job_id}/source.mp4")
    api = _api(multi_user, token_file)
    assert trigger(backend, api, body, "delivery-1")[0].outcome == Outcome.STARTED
    again = trigger(backend, api, body, "delivery-1")[0]
    assert again.outcome == Outcome.EXISTS and again.run_id == multi_user.runs[0]["run_id"]
    assert len(multi_user.runs) == 1


def test_kfp_down_is_retryable_and_the_retry_creates_the_run(backend, job, multi_user, token_file):
    multi_user.fail_next_run_creations = 1
    body = _event(backend.input_bucket, f"input/{job.job_id}/source.mp4")
    api = _api(multi_user, token_file)
    with pytest.raises(KfpUnavailable):
        trigger(backend, api, body, "delivery-1")
    assert multi_user.runs == []
    assert trigger(backend, api, body, "delivery-1")[0].outcome == Outcome.STARTED  # the claim is this delivery's
    assert len(multi_user.runs) == 1


def test_the_token_is_read_on_every_request(backend, job, multi_user, token_file):
    """The kubelet rotates the projected token: a token cached at start would expire."""
    api = _api(multi_user, token_file)
    assert api.experiment_id()
    rotated = make_token(SA)
    token_file.write_text(rotated + "\n")
    trigger(backend, api, _event(backend.input_bucket, f"input/{job.job_id}/source.mp4"), "delivery-1")
    assert multi_user.tokens()[-1] == rotated


@pytest.mark.parametrize("token,status", [
    (None, "HTTP 401"),  # no token mounted
    (make_token(SA, audience="https://kubernetes.default.svc"), "HTTP 401"),  # the default audience
    (make_token("system:serviceaccount:other:default"), "HTTP 403"),  # not allowed in the profile
])
def test_multi_user_refusals_are_explained(backend, job, multi_user, tmp_path, token, status):
    path = tmp_path / "token"
    if token:
        path.write_text(token)
    with pytest.raises(TriggerConfigError, match=status):
        trigger(backend, _api(multi_user, path), _event(backend.input_bucket, f"input/{job.job_id}/source.mp4"), "d")
    assert multi_user.runs == []


def test_multi_user_needs_a_namespace(backend, job, multi_user, token_file):
    with pytest.raises(TriggerConfigError, match="KFP_NAMESPACE"):
        trigger(backend, _api(multi_user, token_file, namespace=None),
                _event(backend.input_bucket, f"input/{job.job_id}/source.mp4"), "d")


def test_standalone_kfp_needs_no_token_and_no_namespace(backend, job, tmp_path):
    with serve(FakeKfp(multi_user=False, pipelines={PIPELINE})) as fake:
        api = KfpApi(KfpSettings(host=fake.url, pipeline_id=PIPELINE, namespace=PROFILE,
                                 token_path=str(tmp_path / "absent")))
        (result,) = trigger(backend, api, _event(backend.input_bucket, f"input/{job.job_id}/source.mp4"), "d")
    assert result.outcome == Outcome.STARTED
    assert [e["display_name"] for e in fake.experiments] == ["stereo-spot"] and len(fake.runs) == 1
    assert set(fake.tokens()) == {None}


def test_events_that_start_nothing(backend, job, multi_user, token_file):
    api = _api(multi_user, token_file)
    assert trigger(backend, api, "not json", "d")[0].outcome == Outcome.IGNORED
    assert trigger(backend, api, json.dumps({"Event": "s3:TestEvent"}), "d")[0].outcome == Outcome.IGNORED
    assert trigger(backend, api, _event("another-bucket", f"input/{job.job_id}/source.mp4"), "d")[0].outcome \
        == Outcome.IGNORED
    assert trigger(backend, api, _event(backend.input_bucket, "input/holiday.mp4"), "d")[0].outcome == Outcome.IGNORED
    backend.jobs.update(job.job_id, status=JobStatus.COMPLETED)
    assert trigger(backend, api, _event(backend.input_bucket, f"input/{job.job_id}/source.mp4"), "d")[0].outcome \
        == Outcome.IGNORED
    assert multi_user.runs == []


def test_the_claim_uses_dynamodb(aws_settings, multi_user, token_file, monkeypatch):  # noqa: F811
    """The same claim against the real adapter (moto over HTTP): two deliveries, one run."""
    from stereo_spot.adapters.aws import aws_backend

    backend = aws_backend(aws_settings)
    job = Job(job_id=str(uuid.uuid4()))
    backend.jobs.put(job)
    body = _event(backend.input_bucket, f"input/{job.job_id}/source.mp4")
    api = _api(multi_user, token_file)
    outcomes = [trigger(backend, api, body, delivery)[0].outcome for delivery in ("m-1", "m-2", "m-1")]
    assert outcomes == [Outcome.STARTED, Outcome.DUPLICATE, Outcome.EXISTS]
    assert len(multi_user.runs) == 1


def test_the_command_exit_codes(tmp_path, multi_user, token_file, monkeypatch):
    from stereo_spot.cli.main import app

    home = tmp_path / "home"
    backend = local_backend(home)
    job = Job(job_id=str(uuid.uuid4()))
    backend.jobs.put(job)
    monkeypatch.setenv("STEREO_SPOT_HOME", str(home))
    monkeypatch.setenv("STORAGE_ADAPTER", "local")
    monkeypatch.setenv("KFP_HOST", multi_user.url)
    monkeypatch.setenv("KFP_PIPELINE_ID", PIPELINE)
    monkeypatch.setenv("KFP_NAMESPACE", PROFILE)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    monkeypatch.setenv("STEREO_SPOT_EVENT", _event(backend.input_bucket, f"input/{job.job_id}/source.mp4"))
    monkeypatch.setenv("STEREO_SPOT_DELIVERY_ID", "delivery-1")
    runner = CliRunner()
    result = runner.invoke(app, ["kfp-trigger"])
    assert result.exit_code == 0 and "started" in result.output, result.output
    assert len(multi_user.runs) == 1
    monkeypatch.setenv("KFP_PIPELINE_ID", "")  # a config error: retrying cannot help
    monkeypatch.setenv("STEREO_SPOT_DELIVERY_ID", "delivery-9")
    monkeypatch.setenv("STEREO_SPOT_EVENT", _event(backend.input_bucket, f"input/{uuid.uuid4()}/source.mp4"))
    result = runner.invoke(app, ["kfp-trigger"])
    assert result.exit_code == 2 and "KFP_PIPELINE_ID" in result.output, result.output
    multi_user.fail_next_run_creations = 1
    monkeypatch.setenv("KFP_PIPELINE_ID", PIPELINE)
    result = runner.invoke(app, ["kfp-trigger"])
    assert result.exit_code == 1 and "retried" in result.output, result.output


from tests.moto_server import aws_settings, moto_endpoint  # noqa: E402, F401

# --- restart after failure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ended", ["FAILED", "CANCELED", "CANCELING", "SKIPPED", "deleted"])
def test_a_reupload_after_the_run_ended_badly_starts_a_new_run(backend, job, multi_user, token_file, ended):
    """The job failed (its run failed, was cancelled, skipped or deleted) and the video is uploaded again: a new
    run starts and resumes the job (the steps skip what is done). Red on the old trigger twice over: it
    ignored failed jobs, and it took the ended run for the job's run."""
    key = f"input/{job.job_id}/source.mp4"
    api = _api(multi_user, token_file)
    [first] = trigger(backend, api, _event(backend.input_bucket, key, sequencer="0055A1"), "delivery-1")
    assert first.outcome == Outcome.STARTED
    if ended == "deleted":
        multi_user.runs.clear()  # a deleted run is gone from the API's listing
    else:
        multi_user.runs[0]["state"] = ended
    backend.jobs.update(job.job_id, status=JobStatus.FAILED, failure_reason="convert: the node went away")
    [again] = trigger(backend, api, _event(backend.input_bucket, key, sequencer="0055B2"), "delivery-2")
    assert again.outcome == Outcome.STARTED and again.run_id != first.run_id
    assert [r["state"] for r in multi_user.runs][-1] == "PENDING"


def test_a_reconcile_redrive_of_a_job_whose_run_failed_starts_a_new_run(backend, job, multi_user, token_file):
    """The run failed without its exit handler recording it (the job still looks in progress): reconcile's
    re-drive event must start a new run, not find the failed one."""
    from datetime import UTC, datetime

    from stereo_spot.cluster.reconcile import redrive_event

    key = f"input/{job.job_id}/source.mp4"
    api = _api(multi_user, token_file)
    assert trigger(backend, api, _event(backend.input_bucket, key), "delivery-1")[0].outcome == Outcome.STARTED
    multi_user.runs[0]["state"] = "FAILED"
    backend.jobs.update(job.job_id, status=JobStatus.CHUNKING_COMPLETE, total_segments=4)
    body = redrive_event(backend.input_bucket, key, None, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "stuck")
    [redriven] = trigger(backend, api, body, "delivery-2")
    assert redriven.outcome == Outcome.STARTED and len(multi_user.runs) == 2


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "PAUSED", "SUCCEEDED", "RUNTIME_STATE_UNSPECIFIED"])
def test_a_run_that_is_not_over_badly_still_counts(backend, job, multi_user, token_file, state):
    """A retried delivery whose run is pending, running (or finished well) finds it and starts nothing."""
    body = _event(backend.input_bucket, f"input/{job.job_id}/source.mp4")
    api = _api(multi_user, token_file)
    assert trigger(backend, api, body, "delivery-1")[0].outcome == Outcome.STARTED
    multi_user.runs[0]["state"] = state
    assert trigger(backend, api, body, "delivery-1")[0].outcome == Outcome.EXISTS
    assert len(multi_user.runs) == 1


def test_a_duplicate_event_for_a_running_job_starts_nothing(backend, job, multi_user, token_file):
    body = _event(backend.input_bucket, f"input/{job.job_id}/source.mp4")
    api = _api(multi_user, token_file)
    assert trigger(backend, api, body, "delivery-1")[0].outcome == Outcome.STARTED
    backend.jobs.update(job.job_id, status=JobStatus.CHUNKING_IN_PROGRESS)
    multi_user.runs[0]["state"] = "RUNNING"
    assert trigger(backend, api, body, "delivery-2")[0].outcome == Outcome.DUPLICATE
    assert len(multi_user.runs) == 1
