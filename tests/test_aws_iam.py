"""The IAM policy documents: valid JSON, one per identity, each naming only this deployment's resources with only
the actions its code calls."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stereo_spot.aws_bootstrap import ResourceNames
from stereo_spot.aws_iam import ROLES, policies
from stereo_spot.config import Settings

ACCOUNT, REGION = "123456789012", "eu-west-1"


@pytest.fixture
def documents(tmp_path):
    """Written by the command line and parsed back, as an operator would hand them to IAM."""
    from stereo_spot.cli import app

    result = CliRunner().invoke(app, ["aws", "policies", "--prefix", "demo", "--account", ACCOUNT,
                                      "--out", str(tmp_path)], env={"AWS_REGION": REGION})
    assert result.exit_code == 0, result.output
    return {role: json.loads((tmp_path / f"{role}.json").read_text()) for role in ROLES}


def _actions(document) -> set[str]:
    return {action for statement in document["Statement"] for action in statement["Action"]}


def _resources(document) -> list[str]:
    return [resource for statement in document["Statement"] for resource in statement["Resource"]]


def test_every_statement_names_its_resources(documents):
    names = ResourceNames.from_settings(Settings(), "demo")
    ours = (f"arn:aws:s3:::{names.input_bucket}", f"arn:aws:s3:::{names.output_bucket}",
            f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/demo-", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{names.queue}")
    for role, document in documents.items():
        assert document["Version"] == "2012-10-17"
        assert len(json.dumps(document)) < 6144, role  # IAM's size limit for a managed policy
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Sid"]
            assert all("*" not in action for action in statement["Action"]), (role, statement)
            for resource in statement["Resource"]:
                assert resource.startswith(ours), (role, resource)
                assert resource.rstrip("*").endswith(("/", "/index/")) or "*" not in resource, (role, resource)
            if "s3:ListBucket" in statement["Action"]:  # listing limited to the pipeline's prefixes
                assert set(statement["Condition"]["StringLike"]["s3:prefix"]) <= {"input/*", "segments/*", "jobs/*"}


def test_each_role_gets_only_what_it_uses(documents):
    app, worker, workflow, events = (documents[r] for r in ROLES)
    assert not any(a.startswith("sqs:") for a in _actions(app) | _actions(workflow))
    assert _actions(events) == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                                "sqs:GetQueueAttributes", "sqs:GetQueueUrl"}
    assert "sqs:ReceiveMessage" in _actions(worker)
    # the app touches neither the reassembly lock nor the dedup table, and cannot write results
    app_resources = _resources(app)
    assert not any("reassembly" in r or "dedup" in r for r in app_resources)
    writes = [s for s in app["Statement"] if "s3:PutObject" in s["Action"]]
    assert [r for s in writes for r in s["Resource"]] == ["arn:aws:s3:::demo-input/input/*"]
    # workflow pods do not need the dedup table (workflow names deduplicate); the worker does
    assert not any("dedup" in r for r in _resources(workflow))
    assert any(r.endswith("table/demo-event-dedup") for r in _resources(worker))
    assert documents == policies(ResourceNames.from_settings(Settings(), "demo"), ACCOUNT, REGION)
