"""``stereo-spot aws bootstrap`` / ``destroy`` against a moto server: what is created, that a second run
changes nothing, that S3 really delivers input/*.mp4 events to the queue, and the CLI around it."""

from __future__ import annotations

import json
import re

import boto3
import pytest
from typer.testing import CliRunner

from stereo_spot.aws.bootstrap import (
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
    from stereo_spot.cli.aws import app
    from stereo_spot.cli.main import app as main_app

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
    from stereo_spot.cli.aws import app

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


# --- IAM roles (IRSA) -----------------------------------------------------------------------------------

ISSUER = "https://oidc.eks.us-east-1.amazonaws.com/id/5C1B0D2E3F4A5B6C7D8E9F0A1B2C3D4E"


def _bootstrap_roles(endpoint: str, prefix: str, *extra: str):
    from stereo_spot.cli.main import app

    settings = settings_for(endpoint, prefix)
    env = {name.upper(): str(getattr(settings, name)) for name in ("storage_adapter", "aws_region",
                                                                    "aws_endpoint_url", "chunking_queue_url")}
    result = CliRunner().invoke(app, ["aws", "bootstrap", "--prefix", prefix, "--oidc-issuer", ISSUER, *extra],
                                env=env)
    result.flat = " ".join(result.output.split())  # the console wraps long lines
    return result


@pytest.mark.slow  # the validator loads the upstream schemas
def test_bootstrap_creates_the_irsa_roles_idempotently_and_writes_the_overlay_patches(moto_endpoint, tmp_path):  # noqa: F811
    """Roles, trust and inline policies read back from IAM; a second run changes nothing; a policy edited by hand
    is put back; the written patches render with kustomize and validate. (Catches: a role created without its
    policy, a trust policy naming the wrong service account, a second run that rewrites, a drift left alone.)"""
    import shutil
    import subprocess
    import sys

    from stereo_spot.aws.iam import KUBERNETES_IDENTITIES, policies, trust_policy
    from tests.test_manifests_validate import MANIFESTS, _kubectl, _validator

    iam = _client("iam", moto_endpoint)
    provider = ISSUER.removeprefix("https://")
    missing = _bootstrap_roles(moto_endpoint, new_prefix())
    assert missing.exit_code == 1 and "has no IAM OIDC provider" in missing.flat
    assert "Traceback" not in missing.output
    iam.create_open_id_connect_provider(Url=ISSUER, ClientIDList=["sts.amazonaws.com"],
                                        ThumbprintList=["9e99a48a9960b14926bb7f3b02e22da2b0ab7280"])
    prefix = new_prefix()
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    patches = ["--kubeflow-runner", "kubeflow/pipeline-runner", "--irsa-patch", str(copy / "overlays/aws/irsa.yaml"),
               "--kubeflow-irsa-patch", str(copy / "overlays/aws-kubeflow/irsa.yaml")]
    first = _bootstrap_roles(moto_endpoint, prefix, *patches)
    assert first.exit_code == 0, first.output
    account = _client("sts", moto_endpoint).get_caller_identity()["Account"]
    documents = policies(ResourceNames.from_settings(Settings(), prefix), account, REGION)
    for identity in KUBERNETES_IDENTITIES:
        role = iam.get_role(RoleName=f"{prefix}-{identity.name}")["Role"]
        trust = role["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert trust == trust_policy(identity, account, ISSUER, kubeflow_runners=["kubeflow/pipeline-runner"])
        (statement,) = trust["Statement"]
        assert statement["Principal"]["Federated"] == f"arn:aws:iam::{account}:oidc-provider/{provider}"
        own = f"system:serviceaccount:stereo-spot:{identity.service_account}"
        expected = [own, "system:serviceaccount:kubeflow:pipeline-runner"] if identity.name == "workflow" else own
        assert statement["Condition"]["StringEquals"][f"{provider}:sub"] == expected
        inline = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="stereo-spot")["PolicyDocument"]
        assert (json.loads(inline) if isinstance(inline, str) else inline) == documents[identity.name]
        assert f"created role {prefix}-{identity.name}" in first.flat
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"] == f"{prefix}-worker"]  # not IRSA

    second = _bootstrap_roles(moto_endpoint, prefix, "--kubeflow-runner", "kubeflow/pipeline-runner")
    assert second.exit_code == 0 and "no changes" in second.output, second.output
    assert not re.search(r"^\s*(created|updated) ", second.output, re.MULTILINE), second.output

    iam.put_role_policy(RoleName=f"{prefix}-ui", PolicyName="stereo-spot", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    third = _bootstrap_roles(moto_endpoint, prefix)  # without the Kubeflow runner: the workflow trust changes
    assert third.exit_code == 0 and f"updated role {prefix}-workflow" in third.flat, third.output
    assert third.exit_code == 0 and f"updated role policy {prefix}-ui/stereo-spot" in third.flat, third.output
    inline = iam.get_role_policy(RoleName=f"{prefix}-ui", PolicyName="stereo-spot")["PolicyDocument"]
    assert (json.loads(inline) if isinstance(inline, str) else inline) == documents["ui"]

    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for overlay in ("aws", "aws-kubeflow"):
        proc = subprocess.run([_kubectl(), "kustomize", str(copy / "overlays" / overlay)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        (rendered / f"{overlay}.yaml").write_text(proc.stdout)
        for identity in KUBERNETES_IDENTITIES:
            if identity.overlay == overlay or overlay == "aws-kubeflow":
                assert f"role/{prefix}-{identity.name}" in proc.stdout or identity.overlay != overlay
    assert f"arn:aws:iam::{account}:role/{prefix}-kfp-trigger" in (rendered / "aws-kubeflow.yaml").read_text()
    assert f"arn:aws:iam::{account}:role/{prefix}-reconcile" in (rendered / "aws.yaml").read_text()
    proc = subprocess.run([sys.executable, str(_validator()), str(rendered)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and " 0 invalid" in proc.stdout, proc.stdout + proc.stderr


def test_the_committed_irsa_patches_are_what_bootstrap_writes():
    """The overlays' example patches come from the same function, for the example account and the default
    role names (the manifests' role ARNs and the generated identities cannot drift apart)."""
    from pathlib import Path

    from stereo_spot.aws.iam import KUBERNETES_IDENTITIES, role_arn
    from stereo_spot.aws.roles import irsa_patch

    overlays = Path(__file__).resolve().parent.parent / "manifests" / "overlays"
    arns = {i.service_account: role_arn(i, "123456789012") for i in KUBERNETES_IDENTITIES}
    for overlay in ("aws", "aws-kubeflow"):
        assert (overlays / overlay / "irsa.yaml").read_text() == irsa_patch(overlay, arns)


def test_irsa_patches_without_an_issuer_are_a_one_line_error(moto_endpoint, tmp_path):  # noqa: F811
    from stereo_spot.cli.main import app

    result = CliRunner().invoke(app, ["aws", "bootstrap", "--prefix", new_prefix(), "--irsa-patch",
                                      str(tmp_path / "irsa.yaml")])
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "need --oidc-issuer" in flat and "Traceback" not in flat
    assert not (tmp_path / "irsa.yaml").exists()
