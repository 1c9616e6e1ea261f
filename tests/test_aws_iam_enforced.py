"""Each identity's real work against a moto server that enforces IAM, with credentials that carry exactly the
policy ``stereo-spot aws policies`` generates for it; and for each one an action a neighbouring identity may do,
which must be refused. A policy that lost a statement turns this red: every statement of every policy is shown to
be the only one of its policy allowing some request the identity's work makes (the last test, from what the
server records), and dropping the workflow's ``ArgoArchive`` or the reconcile role's ``ClaimRedrives`` was also
tried by hand: AccessDenied. A policy that grants too much turns it red too: the denied checks, and a statement
that no request needs (an ``Extra`` statement added to the worker's policy was tried).

What moto cannot evaluate, and so what this test does not prove (the static checks in test_aws_iam.py and IAM do):
  - conditions other than ``StringEquals`` (moto/iam/policy_conditions.py, ``CONDITION_OPERATIONS``): the
    ``s3:prefix`` condition on ``s3:ListBucket`` is ignored, so listing is checked per bucket, not per prefix;
  - the IRSA trust policy's ``sub``/``aud`` conditions: the identities are IAM users here, not assumed roles;
  - presigned URLs: moto's IAM check reads the Authorization header and fails on query-string signatures
    (moto/iam/access_control.py, ``IAMRequestBase.__init__``), so "play" checks that the URL is signed by the
    app's key for the final video and makes the GetObject it stands for with the app's credentials — S3
    authorizes a presigned request as its signer;
  - resource-based policies (the bucket's TLS-only policy, the queue policy for S3): not evaluated by moto.
DynamoDB resources are enforced because tests/moto_iam_server.py names the table of each request, and S3 requests
are judged by the IAM action AWS uses for them (HEAD as s3:GetObject, multipart steps as s3:PutObject, a listing
as s3:ListBucket) because it maps moto's operation names to those actions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from stereo_spot import keys, steps
from stereo_spot.adapters.aws import aws_backend, events_queue
from stereo_spot.aws.bootstrap import ResourceNames, bootstrap
from stereo_spot.aws.iam import IDENTITIES, policies
from stereo_spot.models import ConversionSettings, JobStatus, utcnow
from tests.moto_server import REGION, new_prefix, settings_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"  # moto's account
# The admin identity is created by the first requests, before moto checks signatures: CreateUser,
# PutUserPolicy, CreateAccessKey. Every later request, setup included, is signed and authorized.
ADMIN_SETUP_REQUESTS = 3
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
SETTINGS_FIELDS = ("storage_adapter", "aws_region", "aws_endpoint_url", "input_bucket_name", "output_bucket_name",
                   "jobs_table_name", "segment_completions_table_name", "reassembly_triggered_table_name",
                   "event_dedup_table_name", "chunking_queue_url")
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="module")
def iam_record(tmp_path_factory) -> Path:
    """Where the server writes what allowed each allowed request (tests/moto_iam_server.py)."""
    return tmp_path_factory.mktemp("iam") / "allowed.jsonl"


@pytest.fixture(scope="module")
def iam_endpoint(iam_record) -> Iterator[str]:
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(ADMIN_SETUP_REQUESTS),
               STEREO_SPOT_IAM_RECORD=str(iam_record))
    proc = subprocess.Popen([sys.executable, "-m", "tests.moto_iam_server"], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"the IAM moto server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(endpoint: str, service: str, key: tuple[str, str]):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key[0],
                        aws_secret_access_key=key[1])


@pytest.fixture(scope="module")
def world(iam_endpoint, tmp_path_factory):
    """The admin, the resources (created by bootstrap with the admin's key) and one IAM user per identity whose
    only policy is the generated one."""
    iam = _client(iam_endpoint, "iam", ("unsigned", "unsigned"))
    iam.create_user(UserName="admin")
    iam.put_user_policy(UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(ADMIN_POLICY))
    created = iam.create_access_key(UserName="admin")["AccessKey"]
    admin = (created["AccessKeyId"], created["SecretAccessKey"])
    with pytest.raises(ClientError):  # from here on moto checks every request
        _client(iam_endpoint, "iam", ("unsigned", "unsigned")).list_users()

    prefix = new_prefix()
    with _credentials(admin):
        settings = settings_for(iam_endpoint, prefix)
        result = bootstrap(settings, prefix)
    settings = settings.model_copy(update={"chunking_queue_url": result.env["CHUNKING_QUEUE_URL"]})
    documents = policies(ResourceNames.from_settings(settings, prefix), ACCOUNT, REGION)
    iam = _client(iam_endpoint, "iam", admin)
    users = {}
    for identity in IDENTITIES:
        name = identity.role_name(prefix)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="stereo-spot",
                            PolicyDocument=json.dumps(documents[identity.name]))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        users[identity.name] = (key["AccessKeyId"], key["SecretAccessKey"])
    assert iam.list_user_policies(UserName=f"{prefix}-workflow")["PolicyNames"] == ["stereo-spot"]
    assert not iam.list_attached_user_policies(UserName=f"{prefix}-workflow")["AttachedPolicies"]

    from stereo_spot.sample import write_sample

    clip = write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=1.0, size=(96, 64), fps=12, gop=6)
    return {"endpoint": iam_endpoint, "settings": settings, "admin": admin, "users": users, "clip": clip,
            "state": {}, "prefix": prefix, "policies": documents}


@contextmanager
def _credentials(key: tuple[str, str]) -> Iterator[None]:
    """The process's AWS credentials for the block: every client the project builds inside reads them."""
    saved = {name: os.environ.get(name) for name in CREDENTIAL_VARIABLES}
    for name in CREDENTIAL_VARIABLES:
        os.environ.pop(name, None)
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def _as(world, identity: str) -> Iterator[tuple]:
    """The identity's backend and events queue, built fresh under its credentials."""
    with _credentials(world["users"][identity]):
        yield aws_backend(world["settings"]), events_queue(world["settings"])


def _denied(call) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403 or "AccessDenied" in str(error), error


def _raw(world, identity: str, service: str):
    return _client(world["endpoint"], service, world["users"][identity])


def _admin_s3(world):
    return _client(world["endpoint"], "s3", world["admin"])


def _event_source_drain(world) -> list[str]:
    """What the Argo Events SQS EventSource does with its identity (argo-events
    pkg/eventsources/sources/awssqs/start.go, ``StartListening``/``fetchMessages``): GetQueueUrl by the queue's
    name, ReceiveMessage (10 at a time, SentTimestamp and all message attributes, visibility 120 s), and a
    DeleteMessage for each message once it is on the EventBus."""
    sqs = _raw(world, "events", "sqs")
    name = world["settings"].chunking_queue_url.rstrip("/").rsplit("/", 1)[-1]
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    bodies = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, AttributeNames=["SentTimestamp"], MessageAttributeNames=["All"],
                                       MaxNumberOfMessages=10, VisibilityTimeout=120, WaitTimeSeconds=1)
        if not messages.get("Messages"):
            return bodies
        for message in messages["Messages"]:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _upload(world, title: str) -> str:
    with _as(world, "ui") as (backend, _):
        job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), title)
        steps.store_source(backend, job.job_id, world["clip"])
    return job.job_id


def _argo_key_format() -> str:
    """The keyFormat of the aws overlay's default artifact repository, as kubectl kustomize renders it."""
    from tests.test_manifests_validate import render

    docs = render(ROOT / "manifests" / "overlays" / "aws")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "artifact-repositories")
    import yaml

    name = config["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]
    return yaml.safe_load(config["data"][name])["s3"]["keyFormat"]


def _argo_archive(world, identity: str, workflow: str, pod: str, *, read_back: bool) -> str:
    """The S3 calls Argo's wait container makes for ``archiveLogs`` (argo-workflows workflow/executor/executor.go,
    ``SaveLogs``: ``<keyFormat>/main.log``; workflow/artifacts/s3/s3.go, ``PutFile`` -> minio-go ``FPutObject``,
    a single PUT or, for a large log, a multipart upload, aborted on failure), and what loading an artifact
    back makes (``GetFile`` -> ``FGetObject``: HEAD then GET; ``IsDirectory``: a listing of the prefix)."""
    key_format = _argo_key_format()
    prefix = key_format.replace("{{workflow.name}}", workflow).replace("{{pod.name}}", pod)
    assert "{{" not in prefix and prefix.startswith(keys.ARGO_ARTIFACTS_PREFIX), key_format
    s3, bucket = _raw(world, identity, "s3"), world["settings"].output_bucket_name
    s3.put_object(Bucket=bucket, Key=f"{prefix}/main.log", Body=b"step log\n")
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/report.tgz")
    part = s3.upload_part(Bucket=bucket, Key=f"{prefix}/report.tgz", UploadId=upload["UploadId"], PartNumber=1,
                          Body=b"artifact")
    s3.complete_multipart_upload(Bucket=bucket, Key=f"{prefix}/report.tgz", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    aborted = s3.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/big.log")
    s3.abort_multipart_upload(Bucket=bucket, Key=f"{prefix}/big.log", UploadId=aborted["UploadId"])
    if read_back:
        assert s3.head_object(Bucket=bucket, Key=f"{prefix}/main.log")["ContentLength"] == 9
        assert s3.get_object(Bucket=bucket, Key=f"{prefix}/main.log")["Body"].read() == b"step log\n"
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
        assert {o["Key"] for o in listed["Contents"]} == {f"{prefix}/main.log", f"{prefix}/report.tgz"}
    return prefix


# The tests run in file order: each identity works on what the previous ones left, as in a deployment.


def test_ui_uploads_and_events_receives_and_deletes(world):
    job_id = _upload(world, "film")
    world["state"]["job"] = job_id
    bodies = _event_source_drain(world)
    assert any(job_id in body and "ObjectCreated" in body for body in bodies), bodies
    assert _event_source_drain(world) == []
    # events must not send to the queue (reconcile may)
    _denied(lambda: _raw(world, "events", "sqs").send_message(QueueUrl=world["settings"].chunking_queue_url,
                                                               MessageBody="{}"))


def test_workflow_runs_chunk_convert_concat_fail_and_argo_archives_its_logs(world, tmp_path, monkeypatch):
    """The engines' step functions themselves (components/), which build their backend from the environment as
    in a workflow pod: chunk, one convert per shard, concat, and the exit handler's fail."""
    from stereo_spot.components.chunk import chunk
    from stereo_spot.components.concat import concat
    from stereo_spot.components.convert import convert
    from stereo_spot.components.fail import fail

    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("STEREO_SPOT_DEVICE", "cpu")
    for name in SETTINGS_FIELDS:
        monkeypatch.setenv(name.upper(), str(getattr(world["settings"], name)))
    job_id = world["state"]["job"]
    key = keys.input_key(job_id)
    with _as(world, "ui") as (backend, _):
        doomed = steps.create_job(backend, ConversionSettings(), "doomed").job_id
    with _credentials(world["users"]["workflow"]):
        shards = chunk(world["settings"].input_bucket_name, key, gpu_workers="2")
        assert shards == [0, 1]
        converted = sum(convert(key, shard, 2) for shard in shards)
        assert concat(key, converted) == keys.final_key(job_id)
        failures = json.dumps([{"displayName": "chunk", "message": "the source is not a video",
                                "finishedAt": "2026-01-01T00:00:00Z"}])
        fail(keys.input_key(doomed), "Failed", failures, f"stereo-spot-{doomed}")
    with _as(world, "ui") as (backend, _):
        assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
        assert backend.jobs.get(doomed).status == JobStatus.FAILED
        assert "the source is not a video" in backend.jobs.get(doomed).failure_reason
    workflow = f"stereo-spot-{job_id}"
    _argo_archive(world, "workflow", workflow, f"{workflow}-convert-1234567890", read_back=True)
    admin = _admin_s3(world)
    out = world["settings"].output_bucket_name
    assert admin.head_object(Bucket=out, Key=keys.final_key(job_id))["ContentLength"] > 0
    assert admin.head_object(Bucket=out, Key=f"jobs/{job_id}/report.json")  # written, not skipped as denied
    # the workflow must not take events off the queue (the EventSource does)
    _denied(lambda: _raw(world, "workflow", "sqs").receive_message(QueueUrl=world["settings"].chunking_queue_url))


def test_ui_lists_presigns_plays_and_deletes(world):
    job_id = world["state"]["job"]
    with _as(world, "ui") as (backend, _):
        from stereo_spot.ui.services import job_progress

        listed = backend.jobs.list_completed(limit=20).items
        assert job_id in [job.job_id for job in listed]
        progress = job_progress(backend.jobs.get(job_id), backend.completions.query_by_job(job_id))
        assert progress.segments_done == progress.segments_total > 0
        url = backend.objects.presign_download(backend.output_bucket, keys.final_key(job_id), download_name="x.mp4")
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Credential"][0].startswith(world["users"]["ui"][0] + "/")
    assert urlsplit(url).path.endswith(keys.final_key(job_id))
    played = _raw(world, "ui", "s3").get_object(Bucket=world["settings"].output_bucket_name,
                                                Key=keys.final_key(job_id))
    assert played["Body"].read(4)
    # the app must not write results (the workflow does)
    _denied(lambda: _raw(world, "ui", "s3").put_object(Bucket=world["settings"].output_bucket_name,
                                                       Key=keys.final_key(job_id), Body=b"x"))
    with _as(world, "ui") as (backend, _):
        assert steps.delete_job(backend, job_id).status == JobStatus.DELETED
    listed = _admin_s3(world).list_objects_v2(Bucket=world["settings"].output_bucket_name, Prefix=f"jobs/{job_id}/")
    assert listed["KeyCount"] == 0


def test_ui_uploads_a_large_source_in_parts(world, tmp_path):
    """A film above the part size goes up as a multipart upload (CreateMultipartUpload, UploadPart,
    CompleteMultipartUpload: s3:PutObject in IAM's terms)."""
    from stereo_spot.adapters.aws.s3 import MIN_PART_SIZE

    source = tmp_path / "large.mp4"
    source.write_bytes(os.urandom(MIN_PART_SIZE + 1024))
    with _credentials(world["users"]["ui"]):
        backend = aws_backend(world["settings"], part_size=MIN_PART_SIZE)
        job = steps.create_job(backend, ConversionSettings(), "large")
        steps.store_source(backend, job.job_id, source)
        stored = _admin_s3(world).head_object(Bucket=backend.input_bucket, Key=keys.input_key(job.job_id))
        assert stored["ContentLength"] == source.stat().st_size and stored["ETag"].endswith('-2"')
        assert steps.delete_job(backend, job.job_id).status == JobStatus.DELETED


def test_reconcile_scans_redrives_fails_and_archives_its_log(world):
    from stereo_spot.cluster.reconcile import Action, Problem, Reconciler

    job_id = _upload(world, "lost")
    _event_source_drain(world)  # the EventSource took the event; its trigger failed: the upload is lost
    with _as(world, "reconcile") as (backend, queue):
        (redrive,) = Reconciler(backend, queue, now=utcnow() + timedelta(minutes=30)).run()
        assert (redrive.problem, redrive.action, redrive.job_id) == (Problem.NO_RUN, Action.REDRIVE, job_id)
        (failed,) = Reconciler(backend, queue, now=utcnow() + timedelta(hours=25)).run()
        assert (failed.action, failed.job_id) == (Action.FAIL, job_id)
        assert backend.jobs.get(job_id).status == JobStatus.FAILED
    assert any(job_id in body for body in _event_source_drain(world))
    _argo_archive(world, "reconcile", "stereo-spot-reconcile-1765000000", "stereo-spot-reconcile-1765000000",
                  read_back=False)
    # reconcile must not delete a source (the app may)
    _denied(lambda: _raw(world, "reconcile", "s3").delete_object(Bucket=world["settings"].input_bucket_name,
                                                                Key=keys.input_key(job_id)))


def test_reconcile_redrives_a_job_stuck_since_its_last_completion(world):
    """A job that chunked and converted a segment, then stopped moving: reconcile reads its completions for the
    last sign of progress (the Completions statement), and re-drives it."""
    from stereo_spot.cluster.reconcile import Action, Problem, Reconciler
    from stereo_spot.models import SegmentCompletion

    job_id = _upload(world, "stuck")
    _event_source_drain(world)
    with _credentials(world["admin"]):  # the run that got this far and then died
        backend = aws_backend(world["settings"])
        backend.jobs.update(job_id, status=JobStatus.CHUNKING_COMPLETE, total_segments=2,
                            chunking_started_at=utcnow())
        backend.completions.put(SegmentCompletion(job_id=job_id, segment_index=0, total_segments=2,
                                                  output_key=keys.output_segment_key(job_id, 0), frames=6))
    with _as(world, "reconcile") as (backend, queue):
        found = [f for f in Reconciler(backend, queue, now=utcnow() + timedelta(hours=3)).run()
                 if f.job_id == job_id]
        assert [(f.problem, f.action) for f in found] == [(Problem.STUCK, Action.REDRIVE)]
    assert any(job_id in body for body in _event_source_drain(world))


def test_kfp_trigger_claims_the_upload_and_starts_one_run(world):
    from stereo_spot.cluster.kfp_trigger import KfpApi, KfpSettings, Outcome, trigger
    from tests.fake_kfp import FakeKfp, serve

    job_id = _upload(world, "kubeflow")
    (body,) = [b for b in _event_source_drain(world) if job_id in b]
    with serve(FakeKfp(multi_user=False, pipelines={"p-1"})) as kfp, _as(world, "kfp-trigger") as (backend, _):
        api = KfpApi(KfpSettings(host=kfp.url, pipeline_id="p-1"))
        assert [r.outcome for r in trigger(backend, api, body, "delivery-1")] == [Outcome.STARTED]
        assert [r.outcome for r in trigger(backend, api, body, "delivery-2")] == [Outcome.DUPLICATE]
        assert len(kfp.runs) == 1
    # the trigger must not change a job (the workflow does)
    _denied(lambda: _raw(world, "kfp-trigger", "dynamodb").update_item(
        TableName=world["settings"].jobs_table_name, Key={"job_id": {"S": job_id}},
        UpdateExpression="SET title = :t", ExpressionAttributeValues={":t": {"S": "x"}}))


def test_the_sqs_worker_converts_an_upload(world, tmp_path, monkeypatch):
    from stereo_spot.cluster.worker import Outcome, run_worker

    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    job_id = _upload(world, "worker")
    with _as(world, "worker") as (backend, queue):
        stats = run_worker(backend, queue, stop_event=threading.Event(), max_messages=1, workers=1,
                           wait_seconds=5)
        assert [h.outcome for h in stats.handled] == [Outcome.COMPLETED]
        assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    # the worker must not write Argo's archive (workflow pods do)
    _denied(lambda: _raw(world, "worker", "s3").put_object(Bucket=world["settings"].output_bucket_name,
                                                           Key=f"{keys.ARGO_ARTIFACTS_PREFIX}x/y/main.log",
                                                           Body=b"x"))



def test_every_statement_of_every_policy_is_needed_by_its_identitys_work(world, iam_record):
    """Last in the file, after every identity's work: each statement of each generated policy was the only one
    of its policy to allow some request that work made, so a policy that loses any statement is refused that
    request and its identity's test above goes red. A statement no real call needs would be a grant too many.
    Breakage caught: a statement added that nothing uses, or one whose resources another statement also covers."""
    records = [json.loads(line) for line in iam_record.read_text().splitlines()]
    users = {identity.role_name(world["prefix"]) for identity in IDENTITIES}
    # what moto let through but IAM would refuse (a listing outside its statement's s3:prefix condition)
    refused_by_iam = [r for r in records if r["user"] in users and not r["allowed_by"]]
    assert refused_by_iam == []
    unneeded = []
    for identity in IDENTITIES:
        user = identity.role_name(world["prefix"])
        sids = [statement["Sid"] for statement in world["policies"][identity.name]["Statement"]]
        assert len(set(sids)) == len(sids), f"{identity.name}: statements must have distinct Sids"
        needed = {r["allowed_by"][0] for r in records if r["user"] == user and len(r["allowed_by"]) == 1}
        unneeded += [f"{identity.name}:{sid}" for sid in sids if sid not in needed]
    assert unneeded == [], f"statements no request of the identity's real work needed alone: {unneeded}"


def test_workflow_renders_from_a_depth_video_the_app_stored(world, tmp_path, monkeypatch):
    """The depth video the app stores beside the source (``input/{job}/depth.mkv``) is read back by the workflow's
    chunk (its fit check) and convert steps under the workflow identity's own policy: its grant on the input
    prefix covers that key. Catches a depth video stored where the workflow may not read it."""
    from fractions import Fraction

    import numpy as np

    from stereo_spot.components.chunk import chunk
    from stereo_spot.components.concat import concat
    from stereo_spot.components.convert import convert
    from stereo_spot.media.depth_video import DepthWriter, source_frame_times

    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("STEREO_SPOT_DEVICE", "cpu")
    for name in SETTINGS_FIELDS:
        monkeypatch.setenv(name.upper(), str(getattr(world["settings"], name)))
    times = source_frame_times(world["clip"])
    depth = tmp_path / "depth.mkv"
    writer = DepthWriter(depth, 96, 64, Fraction(1, 1000), Fraction(12))
    for moment in times:
        writer.write(np.full((64, 96), 30000, np.uint16), round((moment - times[0]) * 1000))
    writer.close()
    with _as(world, "ui") as (backend, _):
        job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "from depth")
        steps.store_depth_video(backend, job.job_id, depth)
        steps.store_source(backend, job.job_id, world["clip"])
    key = keys.input_key(job.job_id)
    with _credentials(world["users"]["workflow"]):
        shards = chunk(world["settings"].input_bucket_name, key, gpu_workers="1",
                       depth_video=keys.depth_video_key(job.job_id))
        converted = sum(convert(key, shard, 1) for shard in shards)
        assert concat(key, converted) == keys.final_key(job.job_id)
    with _as(world, "ui") as (backend, _):
        finished = backend.jobs.get(job.job_id)
    assert finished.status == JobStatus.COMPLETED and finished.settings.depth_video, finished.failure_reason
