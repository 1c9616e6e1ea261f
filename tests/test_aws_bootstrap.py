"""``stereo-spot aws bootstrap`` / ``destroy`` against a moto server: what is created, that a second run
changes nothing, that S3 really delivers input/*.mp4 events to the queue, and the CLI around it."""

from __future__ import annotations

import json
import re

import boto3
import pytest
from typer.testing import CliRunner

from stereo_spot.aws_bootstrap import (
    ABSENT,
    CREATED,
    DELETED,
    EXISTS,
    SKIPPED,
    ResourceNames,
    bootstrap,
    destroy,
)
from stereo_spot.config import Settings
from stereo_spot.errors import UserError
from stereo_spot.keys import normalize_event_key
from tests.moto_server import REGION, moto_endpoint, new_prefix, settings_for  # noqa: F401


def _client(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def test_bootstrap_creates_everything_and_a_second_run_changes_nothing(moto_endpoint):  # noqa: F811
    prefix = new_prefix()
    settings = settings_for(moto_endpoint, prefix)
    first = bootstrap(settings, prefix)
    names = first.names
    assert {c.action for c in first.changes} == {CREATED, SKIPPED}  # skipped: TLS-only policy on plain http
    kinds = [c.kind for c in first.changes]
    assert kinds.count("bucket") == 2 and kinds.count("table") == 4 and kinds.count("queue") == 2
    assert kinds.count("ttl") == 2 and kinds.count("index") == 2 and kinds.count("notification") == 1

    second = bootstrap(settings, prefix)
    assert not second.changed
    assert [(c.kind, c.name) for c in second.changes if c.kind != "index"] == \
        [(c.kind, c.name) for c in first.changes if c.kind != "index"]
    assert {c.action for c in second.changes} == {EXISTS, SKIPPED}
    assert second.env == first.env

    env = first.env
    assert env["STORAGE_ADAPTER"] == "aws" and env["AWS_ENDPOINT_URL"] == moto_endpoint
    assert env["INPUT_BUCKET_NAME"] == f"{prefix}-input" and env["JOBS_TABLE_NAME"] == f"{prefix}-jobs"
    assert env["CHUNKING_QUEUE_URL"].endswith(f"/{prefix}-events")
    block = first.env_block().splitlines()
    assert all("=" in line and " " not in line.split("=")[0] for line in block)
    # The printed block is exactly what the application reads back.
    loaded = Settings(**{k.lower(): v for k, v in env.items()})
    assert loaded.jobs_table_name == names.jobs_table and loaded.chunking_queue_url == env["CHUNKING_QUEUE_URL"]

    dynamodb = _client("dynamodb", moto_endpoint)
    jobs = dynamodb.describe_table(TableName=names.jobs_table)["Table"]
    indexes = {i["IndexName"]: [k["AttributeName"] for k in i["KeySchema"]] for i in jobs["GlobalSecondaryIndexes"]}
    assert indexes == {"status-completed_at": ["status", "completed_at"], "status-created_at": ["status", "created_at"]}
    completions = dynamodb.describe_table(TableName=names.completions_table)["Table"]
    assert [k["AttributeName"] for k in completions["KeySchema"]] == ["job_id", "segment_index"]
    for table in (names.reassembly_table, names.dedup_table):
        ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"

    sqs = _client("sqs", moto_endpoint)
    attributes = sqs.get_queue_attributes(QueueUrl=env["CHUNKING_QUEUE_URL"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":{prefix}-events-dlq") and int(redrive["maxReceiveCount"]) == 5
    statement = json.loads(attributes["Policy"])["Statement"][0]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"] == f"arn:aws:s3:::{prefix}-input"

    s3 = _client("s3", moto_endpoint)
    (config,) = s3.get_bucket_notification_configuration(Bucket=names.input_bucket)["QueueConfigurations"]
    rules = {r["Name"].lower(): r["Value"] for r in config["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": "input/", "suffix": ".mp4"} and config["QueueArn"] == attributes["QueueArn"]


def test_s3_delivers_only_input_mp4_uploads_to_the_queue(moto_endpoint):  # noqa: F811
    prefix = new_prefix()
    result = bootstrap(settings_for(moto_endpoint, prefix), prefix)
    s3, sqs = _client("s3", moto_endpoint), _client("sqs", moto_endpoint)
    queue = result.env["CHUNKING_QUEUE_URL"]
    for key in ("segments/x/00000_00001_sbs.mp4", "input/x/notes.txt", "input/x y/source.mp4"):
        s3.put_object(Bucket=result.names.input_bucket, Key=key, Body=b"data")
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not got:
            break
        bodies += [json.loads(m["Body"]) for m in got]
        for m in got:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    test_events = [b for b in bodies if b.get("Event") == "s3:TestEvent"]
    uploads = [r["s3"]["object"]["key"] for b in bodies for r in b.get("Records", [])]
    assert len(test_events) == 1  # sent when the notification was set up
    assert len(uploads) == 1 and " " not in uploads[0]  # URL-encoded, as S3 sends keys
    assert normalize_event_key(uploads[0]) == "input/x y/source.mp4"


def test_prefix_is_validated_and_names_come_from_settings_without_one():
    with pytest.raises(UserError, match="invalid prefix"):
        ResourceNames.from_settings(Settings(), "Bad_Prefix")
    names = ResourceNames.from_settings(Settings(chunking_queue_url="https://sqs.eu-west-1.amazonaws.com/1/q"))
    assert names.queue == "q" and names.dead_letter_queue == "q-dlq"
    assert names.jobs_table == Settings().jobs_table_name


def test_bootstrap_repairs_drift(moto_endpoint):  # noqa: F811
    prefix = new_prefix()
    settings = settings_for(moto_endpoint, prefix)
    first = bootstrap(settings, prefix)
    sqs = _client("sqs", moto_endpoint)
    sqs.set_queue_attributes(QueueUrl=first.env["CHUNKING_QUEUE_URL"], Attributes={"VisibilityTimeout": "30"})
    _client("dynamodb", moto_endpoint).update_time_to_live(
        TableName=first.names.dedup_table, TimeToLiveSpecification={"Enabled": False, "AttributeName": "expires_at"})
    s3, dynamodb = _client("s3", moto_endpoint), _client("dynamodb", moto_endpoint)
    s3.delete_public_access_block(Bucket=first.names.output_bucket)
    dynamodb.update_table(TableName=first.names.jobs_table, DeletionProtectionEnabled=False)
    repaired = bootstrap(settings, prefix)
    changed = {(c.kind, c.name): c for c in repaired.changes if c.action not in (EXISTS, SKIPPED)}
    assert set(changed) == {("queue", f"{prefix}-events"), ("ttl", f"{prefix}-event-dedup.expires_at"),
                            ("public access", f"{prefix}-output: blocked"),
                            ("deletion protection", f"{prefix}-jobs")}
    assert "VisibilityTimeout" in changed[("queue", f"{prefix}-events")].detail
    assert not bootstrap(settings, prefix).changed


def test_destroy_removes_everything_including_objects(moto_endpoint):  # noqa: F811
    prefix = new_prefix()
    settings = settings_for(moto_endpoint, prefix)
    names = bootstrap(settings, prefix).names
    _client("s3", moto_endpoint).put_object(Bucket=names.output_bucket, Key="jobs/x/final.mp4", Body=b"v")
    changes = destroy(settings, prefix)
    assert {c.action for c in changes} == {DELETED} and len(changes) == 8
    assert {c.action for c in destroy(settings, prefix)} == {ABSENT}
    assert bootstrap(settings, prefix).changed  # and it can be created again


def _actions(report: str) -> set[str]:
    """The action column of the resource report (lines like '  created  bucket  name')."""
    return set(re.findall(r"^  (created|exists|updated|deleted|absent|skipped) ", report, flags=re.M))


def _cli_env(moto_endpoint: str) -> dict[str, str]:  # noqa: F811
    return {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_REGION": REGION}


def test_cli_bootstrap_prints_the_environment_block_and_destroy_asks_first(moto_endpoint):  # noqa: F811
    from stereo_spot.cli import app as main_app
    from stereo_spot.cli_aws import app

    prefix = new_prefix()
    runner = CliRunner()
    # through the project's own command line: `stereo-spot aws bootstrap`
    first = runner.invoke(main_app, ["aws", "bootstrap", "--prefix", prefix], env=_cli_env(moto_endpoint))
    assert first.exit_code == 0, first.output
    assert f"INPUT_BUCKET_NAME={prefix}-input" in first.stdout
    assert f"CHUNKING_QUEUE_URL={moto_endpoint}/" in first.stdout
    assert _actions(first.stderr) == {"created", "skipped"}  # skipped: the TLS-only policy on plain http
    second = runner.invoke(app, ["bootstrap", "--prefix", prefix], env=_cli_env(moto_endpoint))
    assert second.exit_code == 0 and "no changes" in second.stderr
    assert _actions(second.stderr) == {"exists", "skipped"}
    assert second.stdout == first.stdout

    refused = runner.invoke(app, ["destroy", "--prefix", prefix], input="n\n", env=_cli_env(moto_endpoint))
    assert refused.exit_code == 1 and "nothing deleted" in refused.stderr
    assert _client("s3", moto_endpoint).head_bucket(Bucket=f"{prefix}-input")
    confirmed = runner.invoke(app, ["destroy", "--prefix", prefix], input="y\n", env=_cli_env(moto_endpoint))
    assert confirmed.exit_code == 0 and _actions(confirmed.stderr) == {"deleted"}
    gone = runner.invoke(app, ["destroy", "--prefix", prefix, "--yes"], env=_cli_env(moto_endpoint))
    assert gone.exit_code == 0 and _actions(gone.stderr) == {"absent"}


def test_cli_reports_an_unreachable_endpoint_in_one_line():
    from stereo_spot.cli_aws import app

    result = CliRunner().invoke(app, ["bootstrap", "--prefix", "unreachable"],
                                env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": REGION})
    assert result.exit_code == 1
    assert "error: cannot reach S3 at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.output


def test_bootstrap_hardens_buckets_and_tables(moto_endpoint):  # noqa: F811
    prefix = new_prefix()
    settings = settings_for(moto_endpoint, prefix)
    names = bootstrap(settings, prefix).names
    s3, dynamodb = _client("s3", moto_endpoint), _client("dynamodb", moto_endpoint)
    for bucket in (names.input_bucket, names.output_bucket):
        assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True}
        (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=names.input_bucket)["Rules"]}
    assert rules["expire-leftover-segments"]["Filter"] == {"Prefix": "segments/"}
    assert rules["expire-leftover-segments"]["Expiration"]["Days"] >= 1
    for table in (names.jobs_table, names.completions_table, names.reassembly_table, names.dedup_table):
        assert dynamodb.describe_table(TableName=table)["Table"]["DeletionProtectionEnabled"] is True
        backups = dynamodb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
        with pytest.raises(dynamodb.exceptions.ClientError):  # protected: not deleted by accident
            dynamodb.delete_table(TableName=table)
    # the deliberate way still works
    assert {c.action for c in destroy(settings, prefix) if c.kind == "table"} == {DELETED}


def test_the_tls_only_policy_refuses_plain_http(moto_endpoint):  # noqa: F811
    prefix = new_prefix()
    settings = settings_for(moto_endpoint, prefix)
    result = bootstrap(settings, prefix, tls_only=True)  # as against AWS itself
    s3 = _client("s3", moto_endpoint)
    bucket = result.names.output_bucket
    (statement,) = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
    assert statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    with pytest.raises(s3.exceptions.ClientError, match="403|Forbidden|AccessDenied"):
        s3.put_object(Bucket=bucket, Key="x", Body=b"x")  # this endpoint is plain http: refused
    assert not bootstrap(settings, prefix, tls_only=True).changed
