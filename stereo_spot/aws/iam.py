"""The IAM identities of a deployment, each with its least-privilege policy and its trust policy: the single source
for ``stereo-spot aws policies``, the roles ``stereo-spot aws bootstrap --oidc-issuer`` creates, the IRSA patch it
writes, the table in docs/kubernetes.md and the test of the manifests' ``eks.amazonaws.com/role-arn`` annotations.

    workflow     Argo workflow pods (chunk, convert, concat, the exit handler) and Kubeflow run pods: the buckets'
                 pipeline prefixes, the jobs, completions and reassembly tables; Argo's log and artifact archive
                 under ``argo-artifacts/`` of the output bucket. No queue, no dedup table (names deduplicate).
    events       the Argo EventSource: receive and delete on the events queue only
    ui           the web app: store a source (input/*), read and delete a job's objects, presign downloads; the
                 jobs table (and its indexes) and segment completions; no queue, no lock, no dedup table
    reconcile    the reconcile CronWorkflow: scan jobs and sources, claim a re-drive, send it to the events queue,
                 fail a job past its deadline; and, as an Argo workflow pod, its own log archive
    kfp-trigger  the Kubeflow trigger Job: read the job, claim the upload in the dedup table
    worker       the SQS worker (outside Kubernetes, e.g. an EC2 instance profile): the whole pipeline

Why Argo's archive needs PutObject, AbortMultipartUpload, GetObject and ListBucket on ``argo-artifacts/``: the wait
container saves each log with minio-go's ``FPutObject`` (argo-workflows workflow/artifacts/s3/s3.go, ``PutFile``;
one PUT, or a multipart upload for a large log, which it aborts on failure), at
``<keyFormat>/main.log`` (workflow/executor/executor.go, ``SaveLogs``); an input artifact is read back with
``FGetObject`` (a HEAD, then a GET) and, for a missing key, a listing of the prefix (``loadS3Artifact`` ->
``IsDirectory``). The argo-server reads the same objects for the UI with its own identity (``useSDKCreds``: the
``argo-server`` service account's role in the ``argo`` namespace): give that role ``s3:GetObject`` and
``s3:ListBucket`` on the same prefix.

Every statement names its resources (no ``*`` actions, no ``*`` resources beyond a prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stereo_spot import keys
from stereo_spot.aws.bootstrap import ResourceNames

NAMESPACE = "stereo-spot"  # the namespace of every service account (manifests/base/kustomization.yaml)
DEFAULT_ROLE_PREFIX = "stereo-spot"  # role names the manifests use: stereo-spot-<identity>
POLICY_NAME = "stereo-spot"  # the inline policy's name on each role
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"  # IRSA: the service account's annotation naming its role


@dataclass(frozen=True)
class Identity:
    name: str  # workflow, events, ... : the role is {prefix}-{name}
    service_account: str | None  # the Kubernetes service account that assumes it (IRSA); None: not in Kubernetes
    runs_as: str  # who uses it, for the docs table
    overlay: str  # the overlay whose manifests annotate the service account

    def role_name(self, prefix: str | None = None) -> str:
        return f"{prefix or DEFAULT_ROLE_PREFIX}-{self.name}"


IDENTITIES: tuple[Identity, ...] = (
    Identity("workflow", "stereo-spot-workflow", "Argo workflow pods (chunk, convert, concat, exit handler); "
             "Kubeflow run pods (`--kubeflow-runner`)",
             "aws"),
    Identity("events", "stereo-spot-events", "the Argo EventSource (SQS)", "aws"),
    Identity("ui", "stereo-spot-ui", "the web app", "aws"),
    Identity("reconcile", "stereo-spot-reconcile", "the reconcile CronWorkflow", "aws"),
    Identity("kfp-trigger", "stereo-spot-kfp-trigger", "the Kubeflow trigger Job", "aws-kubeflow"),
    Identity("worker", None, "the SQS worker (`stereo-spot worker`, outside Kubernetes)", ""),
)
ROLES = tuple(identity.name for identity in IDENTITIES)
KUBEFLOW_RUN_IDENTITY = "workflow"  # Kubeflow's run pods do the workflow pods' work, with the same role
KUBERNETES_IDENTITIES = tuple(identity for identity in IDENTITIES if identity.service_account)


def identity_for_service_account(service_account: str) -> Identity | None:
    return next((i for i in KUBERNETES_IDENTITIES if i.service_account == service_account), None)


_S3_READ = ["s3:GetObject"]
_S3_WRITE = ["s3:PutObject", "s3:AbortMultipartUpload"]
_S3_DELETE = ["s3:DeleteObject"]
_TABLE_RW = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
             "dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:DescribeTable"]
_QUEUE_CONSUME = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                  "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
_INPUT, _SEGMENTS, _JOBS, _ARGO = "input/", "segments/", "jobs/", keys.ARGO_ARTIFACTS_PREFIX


class _Arns:
    def __init__(self, names: ResourceNames, account: str, region: str, partition: str):
        self.names, self.account, self.region, self.partition = names, account, region, partition

    def bucket(self, bucket: str) -> str:
        return f"arn:{self.partition}:s3:::{bucket}"

    def objects(self, bucket: str, *prefixes: str) -> list[str]:
        return [f"{self.bucket(bucket)}/{prefix}*" for prefix in prefixes]

    def listing(self, sid: str, bucket: str, *prefixes: str) -> dict[str, Any]:
        return {"Sid": sid, "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [self.bucket(bucket)],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}}}

    def tables(self, *tables: str, indexes: bool = False) -> list[str]:
        arns = [f"arn:{self.partition}:dynamodb:{self.region}:{self.account}:table/{table}" for table in tables]
        return arns + ([f"{arn}/index/*" for arn in arns[:1]] if indexes else [])

    @property
    def queue(self) -> str:
        return f"arn:{self.partition}:sqs:{self.region}:{self.account}:{self.names.queue}"


def _statement(sid: str, actions: list[str], resources: list[str]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def policies(names: ResourceNames, account: str, region: str, partition: str = "aws") -> dict[str, dict[str, Any]]:
    """Identity name → IAM policy document. The jobs table is first in every table list (its indexes are
    queried)."""
    arn = _Arns(names, account, region, partition)
    inp, out = names.input_bucket, names.output_bucket

    def pipeline(*tables: str) -> list[dict[str, Any]]:
        return [
            _statement("PipelineObjects", _S3_READ + _S3_WRITE + _S3_DELETE,
                       arn.objects(inp, _INPUT, _SEGMENTS) + arn.objects(out, _JOBS)),
            arn.listing("ListInput", inp, _INPUT, _SEGMENTS),
            arn.listing("ListOutput", out, _JOBS),
            _statement("Tables", _TABLE_RW, arn.tables(*tables, indexes=True)),
        ]

    # Argo's wait container archives the pod's log (and saves output artifacts) with the pod's own identity.
    argo_archive = [_statement("ArgoArchive", _S3_READ + _S3_WRITE, arn.objects(out, _ARGO)),
                    arn.listing("ListArgoArchive", out, _ARGO)]
    ui = [
        _statement("StoreSources", _S3_WRITE, arn.objects(inp, _INPUT)),
        _statement("ReadResults", _S3_READ, arn.objects(out, _JOBS)),
        _statement("DeleteJobs", _S3_DELETE, arn.objects(inp, _INPUT, _SEGMENTS) + arn.objects(out, _JOBS)),
        arn.listing("ListInput", inp, _INPUT, _SEGMENTS),
        arn.listing("ListOutput", out, _JOBS),
        _statement("Jobs", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
                   arn.tables(names.jobs_table, indexes=True)),
        _statement("Completions", ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchWriteItem",
                                   "dynamodb:DeleteItem"], arn.tables(names.completions_table)),
    ]
    reconcile = [
        _statement("ReadSources", _S3_READ, arn.objects(inp, _INPUT)),
        arn.listing("ListSources", inp, _INPUT),
        _statement("Jobs", ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query"],
                   arn.tables(names.jobs_table, indexes=True)),
        _statement("Completions", ["dynamodb:Query"], arn.tables(names.completions_table)),
        _statement("ClaimRedrives", ["dynamodb:PutItem"], arn.tables(names.dedup_table)),
        _statement("Redrive", ["sqs:SendMessage"], [arn.queue]),
        _statement("ArgoArchive", _S3_WRITE, arn.objects(out, _ARGO)),
    ]
    kfp_trigger = [
        _statement("Jobs", ["dynamodb:GetItem"], arn.tables(names.jobs_table)),
        _statement("ClaimUploads", ["dynamodb:PutItem"], arn.tables(names.dedup_table)),
    ]
    statements = {
        "workflow": pipeline(names.jobs_table, names.completions_table, names.reassembly_table) + argo_archive,
        "events": [_statement("EventsQueue", _QUEUE_CONSUME, [arn.queue])],
        "ui": ui,
        "reconcile": reconcile,
        "kfp-trigger": kfp_trigger,
        "worker": pipeline(names.jobs_table, names.completions_table, names.reassembly_table, names.dedup_table)
        + [_statement("EventsQueue", _QUEUE_CONSUME, [arn.queue])],
    }
    assert tuple(statements) == ROLES  # one policy per identity, in the table's order
    return {role: {"Version": "2012-10-17", "Statement": body} for role, body in statements.items()}


def oidc_provider(issuer: str) -> str:
    """The IAM name of an OIDC issuer: its URL without the scheme (``oidc.eks.<region>.amazonaws.com/id/<id>``)."""
    provider = issuer.strip().removeprefix("https://").rstrip("/")
    if not provider or "://" in provider or " " in provider:
        from stereo_spot.errors import UserError

        raise UserError(f"invalid OIDC issuer {issuer!r}: give the cluster's issuer URL, e.g. "
                        "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE "
                        "(aws eks describe-cluster --query cluster.identity.oidc.issuer)")
    return provider


def service_account_subject(namespace_and_name: str) -> str:
    """``kubeflow/pipeline-runner`` → ``system:serviceaccount:kubeflow:pipeline-runner``."""
    namespace, _, name = namespace_and_name.strip().partition("/")
    if not namespace or not name or "/" in name or ":" in namespace_and_name:
        from stereo_spot.errors import UserError

        raise UserError(f"invalid service account {namespace_and_name!r}: write NAMESPACE/NAME, e.g. "
                        "kubeflow/pipeline-runner or team-video/default-editor")
    return f"system:serviceaccount:{namespace}:{name}"


def trust_policy(identity: Identity, account: str, issuer: str | None, partition: str = "aws",
                 kubeflow_runners: Sequence[str] = ()) -> dict[str, Any]:
    """IRSA: the cluster's OIDC provider may hand this role to its service account, for STS only. The workflow
    role is also the Kubeflow run pods' (``kubeflow_runners``: the run service accounts, NAMESPACE/NAME, that
    docs/kubernetes.md has annotated with it). The worker (no service account) is trusted by EC2, for an instance
    profile."""
    if identity.service_account is None:
        statement = {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    else:
        if issuer is None:
            raise ValueError(f"the trust policy of {identity.name} needs the cluster's OIDC issuer")
        provider = oidc_provider(issuer)
        subjects = [f"system:serviceaccount:{NAMESPACE}:{identity.service_account}"]
        if identity.name == KUBEFLOW_RUN_IDENTITY:
            subjects += [service_account_subject(runner) for runner in kubeflow_runners]
        statement = {
            "Effect": "Allow",
            "Principal": {"Federated": f"arn:{partition}:iam::{account}:oidc-provider/{provider}"},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{provider}:sub": subjects[0] if len(subjects) == 1 else subjects,
                                           f"{provider}:aud": "sts.amazonaws.com"}}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def role_arn(identity: Identity, account: str, prefix: str | None = None, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account}:role/{identity.role_name(prefix)}"


def _actions_text(document: dict[str, Any]) -> str:
    parts = []
    for statement in document["Statement"]:
        actions = "/".join(a.split(":", 1)[1] for a in statement["Action"])
        service = statement["Action"][0].split(":", 1)[0]
        where = ", ".join(r.rsplit(":", 1)[-1].removeprefix("::") for r in statement["Resource"])
        prefixes = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if prefixes:
            where += f" (prefixes {', '.join(p.rstrip('*') for p in prefixes)})"
        parts.append(f"`{service}:{actions}` on {where}")
    return "; ".join(parts)


def docs_table(names: ResourceNames | None = None) -> str:
    """The IAM table of docs/kubernetes.md, generated from :func:`policies` for the default resource names."""
    names = names or ResourceNames("stereo-spot-input", "stereo-spot-output", "stereo-spot-jobs",
                                   "stereo-spot-segment-completions", "stereo-spot-reassembly-triggered",
                                   "stereo-spot-event-dedup", "stereo-spot-events", "stereo-spot-events-dlq")
    documents = policies(names, "123456789012", "us-east-1")
    rows = ["| role | service account | used by | permissions |", "|---|---|---|---|"]
    for identity in IDENTITIES:
        account = f"`{identity.service_account}`" if identity.service_account else "none"
        if identity.overlay == "aws-kubeflow":
            account += " (aws-kubeflow overlay)"
        rows.append(f"| `{identity.role_name()}` | {account} | {identity.runs_as} | "
                    f"{_actions_text(documents[identity.name])} |")
    return "\n".join(rows)
