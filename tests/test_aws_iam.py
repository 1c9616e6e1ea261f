"""The IAM policy documents: valid JSON, one per identity, each naming only this deployment's resources with only
the actions its code calls; an IRSA trust policy for each Kubernetes identity; the docs table and the manifests'
role annotations agree with the one list of identities. (That the policies suffice, and refuse a neighbour's
work, is tests/test_aws_iam_enforced.py.)"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stereo_spot.aws.bootstrap import ResourceNames
from stereo_spot.aws.iam import IDENTITIES, KUBERNETES_IDENTITIES, ROLES, docs_table, policies
from stereo_spot.config import Settings

ACCOUNT, REGION = "123456789012", "eu-west-1"
ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
PROVIDER = ISSUER.removeprefix("https://")


@pytest.fixture
def documents(tmp_path):
    """Written by the command line and parsed back, as an operator would hand them to IAM."""
    from stereo_spot.cli.main import app

    result = CliRunner().invoke(app, ["aws", "policies", "--prefix", "demo", "--account", ACCOUNT,
                                      "--oidc-issuer", ISSUER, "--out", str(tmp_path)], env={"AWS_REGION": REGION})
    assert result.exit_code == 0, result.output
    return {role: json.loads((tmp_path / f"demo-{role}.json").read_text()) for role in ROLES}


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
                assert set(statement["Condition"]["StringLike"]["s3:prefix"]) <= {
                    "input/*", "segments/*", "jobs/*", "argo-artifacts/*"}


def test_each_role_gets_only_what_it_uses(documents):
    app, worker, workflow, events = (documents[r] for r in ("ui", "worker", "workflow", "events"))
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


def test_pods_that_archive_argo_logs_may_write_the_archive(documents):
    """Argo's wait container archives every step's log under argo-artifacts/ of the output bucket with the pod's
    own identity: the workflow pods and the reconcile CronWorkflow (it inherits archiveLogs). Nobody else."""
    archive = "arn:aws:s3:::demo-output/argo-artifacts/*"
    writers = {role for role, document in documents.items() for s in document["Statement"]
               if "s3:PutObject" in s["Action"] and archive in s["Resource"]}
    assert writers == {"workflow", "reconcile"}


def test_every_kubernetes_identity_has_an_irsa_trust_policy(tmp_path, documents):
    for identity in IDENTITIES:
        trust = json.loads((tmp_path / f"demo-{identity.name}.trust.json").read_text())
        (statement,) = trust["Statement"]
        if identity.service_account is None:  # the worker: an EC2 instance profile
            assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}
            continue
        assert statement["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{PROVIDER}"}
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert statement["Condition"] == {"StringEquals": {
            f"{PROVIDER}:sub": f"system:serviceaccount:stereo-spot:{identity.service_account}",
            f"{PROVIDER}:aud": "sts.amazonaws.com"}}


def test_without_an_issuer_the_trust_policies_are_left_out_and_a_bad_issuer_is_one_line(tmp_path):
    from stereo_spot.cli.main import app

    result = CliRunner().invoke(app, ["aws", "policies", "--account", ACCOUNT, "--out", str(tmp_path)],
                                env={"AWS_REGION": REGION})
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.trust.json")) == ["stereo-spot-worker.trust.json"]
    assert (tmp_path / "stereo-spot-workflow.json").is_file()
    bad = CliRunner().invoke(app, ["aws", "policies", "--account", ACCOUNT, "--oidc-issuer", "https://"],
                             env={"AWS_REGION": REGION})
    assert bad.exit_code == 1 and "invalid OIDC issuer" in bad.output and "Traceback" not in bad.output


def test_the_docs_table_is_generated_from_the_policies():
    """docs/kubernetes.md carries the generated table between its markers; regenerate it with
    ``python -c 'from stereo_spot.aws.iam import docs_table; print(docs_table())'``."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md").read_text()
    import textwrap

    start, end = "<!-- iam-table: generated by stereo_spot.aws.iam.docs_table -->\n", "\n   <!-- /iam-table -->"
    assert start in text and end in text
    assert textwrap.dedent(text.split(start, 1)[1].split(end, 1)[0]) == docs_table()  # indented in its list item


def test_every_role_annotation_names_a_generated_identity_and_every_identity_is_annotated():
    """Every eks.amazonaws.com/role-arn in every rendered overlay names the role generated for that service
    account, and every Kubernetes identity is annotated in the overlay the list says."""
    from tests.test_manifests_validate import OVERLAYS, render

    annotated: dict[str, dict[str, str]] = {}
    for overlay in OVERLAYS:
        for doc in render(overlay):
            arn = (doc["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn")
            if arn is None:
                continue
            assert doc["kind"] == "ServiceAccount", (overlay.name, doc["kind"], doc["metadata"]["name"])
            account = doc["metadata"]["name"]
            identity = next((i for i in KUBERNETES_IDENTITIES if i.service_account == account), None)
            assert identity is not None, f"{overlay.name}: {account} has a role, but no policy is generated for it"
            assert arn.rsplit("/", 1)[-1] == identity.role_name(), (overlay.name, account, arn)
            annotated.setdefault(overlay.name, {})[account] = arn
    for identity in KUBERNETES_IDENTITIES:
        assert identity.service_account in annotated.get(identity.overlay, {}), (identity.overlay, identity.name)


def test_kubeflow_run_service_accounts_may_assume_the_workflow_role_and_nothing_else(tmp_path):
    """Kubeflow's run pods (pipeline-runner, or a profile's default-editor) do the workflow pods' work with the
    workflow role (docs/kubernetes.md): its trust lists them; no other role's does. A malformed name is one line."""
    from stereo_spot.cli.main import app

    result = CliRunner().invoke(app, ["aws", "policies", "--account", ACCOUNT, "--oidc-issuer", ISSUER,
                                      "--kubeflow-runner", "kubeflow/pipeline-runner", "--kubeflow-runner",
                                      "team-video/default-editor", "--out", str(tmp_path)], env={"AWS_REGION": REGION})
    assert result.exit_code == 0, result.output
    for identity in KUBERNETES_IDENTITIES:
        trust = json.loads((tmp_path / f"stereo-spot-{identity.name}.trust.json").read_text())
        subjects = trust["Statement"][0]["Condition"]["StringEquals"][f"{PROVIDER}:sub"]
        own = f"system:serviceaccount:stereo-spot:{identity.service_account}"
        if identity.name == "workflow":
            assert subjects == [own, "system:serviceaccount:kubeflow:pipeline-runner",
                                "system:serviceaccount:team-video:default-editor"]
        else:
            assert subjects == own
    bad = CliRunner().invoke(app, ["aws", "policies", "--account", ACCOUNT, "--oidc-issuer", ISSUER,
                                   "--kubeflow-runner", "pipeline-runner"], env={"AWS_REGION": REGION})
    assert bad.exit_code == 1 and "NAMESPACE/NAME" in bad.output and "Traceback" not in bad.output
