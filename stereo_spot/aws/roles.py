"""The IAM roles of the Kubernetes identities (``stereo-spot aws bootstrap --oidc-issuer``), created or brought
back to the generated trust and permission policies, and the overlays' IRSA patches that name them.

A sibling of ``bootstrap`` (and called by the same command) because the roles need what the data resources do
not: the cluster's OIDC issuer, and IAM rights an operator may hold only for this step. Like the rest of bootstrap,
each role and policy is read first and only a difference is written: "exists", "created" or "updated".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from stereo_spot.adapters.aws.clients import AwsClients
from stereo_spot.aws.bootstrap import CREATED, EXISTS, UPDATED, Change, ResourceNames, aws_call
from stereo_spot.aws.iam import (
    KUBERNETES_IDENTITIES,
    NAMESPACE,
    POLICY_NAME,
    ROLE_ANNOTATION,
    Identity,
    oidc_provider,
    policies,
    role_arn,
    trust_policy,
)
from stereo_spot.errors import UserError

_NO_ENTITY = ("NoSuchEntity",)
OVERLAY_PATCH_HEADER = {
    "aws": "# IRSA: each service account assumes its own IAM role; no access keys anywhere. Written by\n"
           "# `stereo-spot aws bootstrap --oidc-issuer URL --irsa-patch PATH` with the real role ARNs\n"
           "# (stereo_spot/aws/iam.py lists the roles and their policies).\n",
    "aws-kubeflow": "# IRSA for the Kubeflow trigger Job's service account. Written by\n"
                    "# `stereo-spot aws bootstrap --oidc-issuer URL --kubeflow-irsa-patch PATH`.\n",
}


def partition_of(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def _document(value: Any) -> Any:
    """IAM returns policy documents URL-encoded (boto3 decodes most of them, not all)."""
    return json.loads(unquote(value)) if isinstance(value, str) else value


def ensure_roles(clients: AwsClients, names: ResourceNames, issuer: str, prefix: str | None = None, *,
                 kubeflow_runners: Sequence[str] = (),
                 on_change: Callable[[Change], None] | None = None) -> tuple[list[Change], dict[str, str]]:
    """Create or update the role of every Kubernetes identity; return the changes and service account → ARN."""
    iam, region = clients.client("iam"), clients.config.region
    account = aws_call(clients, "sts", "reading the account id",
                       lambda: clients.client("sts").get_caller_identity())["Account"]
    partition = partition_of(region)
    provider = f"arn:{partition}:iam::{account}:oidc-provider/{oidc_provider(issuer)}"
    if aws_call(clients, "iam", f"looking up the OIDC provider {provider}",
                lambda: iam.get_open_id_connect_provider(OpenIDConnectProviderArn=provider), *_NO_ENTITY) is None:
        raise UserError(f"the cluster's OIDC issuer {issuer} has no IAM OIDC provider in account {account}: "
                        "create it (eksctl utils associate-iam-oidc-provider --cluster <name> --approve), then "
                        "run this again")
    documents = policies(names, account, region, partition)
    changes: list[Change] = []

    def note(kind: str, name: str, action: str) -> None:
        changes.append(Change(kind, name, action))
        if on_change:
            on_change(changes[-1])

    arns = {}
    for identity in KUBERNETES_IDENTITIES:
        role = identity.role_name(prefix)
        trust = trust_policy(identity, account, issuer, partition, kubeflow_runners)
        found = aws_call(clients, "iam", f"looking up role {role}", lambda r=role: iam.get_role(RoleName=r),
                         *_NO_ENTITY)
        if found is None:
            aws_call(clients, "iam", f"creating role {role}", lambda r=role, t=trust, i=identity: iam.create_role(
                RoleName=r, AssumeRolePolicyDocument=json.dumps(t),
                Description=f"stereo-spot: {i.runs_as} (service account {NAMESPACE}/{i.service_account})"))
            note("role", role, CREATED)
        elif _document(found["Role"]["AssumeRolePolicyDocument"]) != trust:
            aws_call(clients, "iam", f"updating the trust policy of role {role}",
                     lambda r=role, t=trust: iam.update_assume_role_policy(RoleName=r, PolicyDocument=json.dumps(t)))
            note("role", role, UPDATED)
        else:
            note("role", role, EXISTS)
        _ensure_policy(clients, role, documents[identity.name], note)
        arns[identity.service_account] = role_arn(identity, account, prefix, partition)
    return changes, arns


def _ensure_policy(clients: AwsClients, role: str, document: dict[str, Any],
                   note: Callable[[str, str, str], None]) -> None:
    iam = clients.client("iam")
    found = aws_call(clients, "iam", f"reading the policy of role {role}",
                     lambda: iam.get_role_policy(RoleName=role, PolicyName=POLICY_NAME), *_NO_ENTITY)
    if found is not None and _document(found["PolicyDocument"]) == document:
        note("role policy", f"{role}/{POLICY_NAME}", EXISTS)
        return
    aws_call(clients, "iam", f"setting the policy of role {role}", lambda: iam.put_role_policy(
        RoleName=role, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(document)))
    note("role policy", f"{role}/{POLICY_NAME}", UPDATED if found else CREATED)


def irsa_patch(overlay: str, arns: dict[str, str]) -> str:
    """The overlay's IRSA patch (strategic-merge ServiceAccounts), in the identities' order."""
    import yaml

    identities: list[Identity] = [i for i in KUBERNETES_IDENTITIES if i.overlay == overlay]
    docs = [{"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": i.service_account, "namespace": NAMESPACE,
                          "annotations": {ROLE_ANNOTATION: arns[i.service_account]}}} for i in identities]
    return OVERLAY_PATCH_HEADER[overlay] + yaml.safe_dump_all(docs, sort_keys=False)


def write_irsa_patch(path: Path, overlay: str, arns: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(irsa_patch(overlay, arns))
