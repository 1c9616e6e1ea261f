"""Least-privilege IAM policy documents, one per identity (the IRSA roles of ``manifests/base/serviceaccounts.yaml``
and the SQS worker), for the resources ``stereo-spot aws bootstrap`` creates.

    app        the web app: store a source (input/*), read and delete a job's objects, presign downloads;
               the jobs table (and its indexes) and segment completions; no queue, no lock, no dedup table
    worker     the SQS worker runs the whole pipeline: every prefix of both buckets, all four tables, and
               receive/delete/extend on the events queue
    workflow   Argo/Kubeflow step pods: the buckets' pipeline prefixes, the jobs, completions and reassembly
               tables; no queue (the EventSource reads it) and no dedup table (workflow names deduplicate)
    events     the Argo EventSource: receive and delete on the events queue only

Every statement names its resources (no ``*``), and object access is limited to the prefixes each role uses.
"""

from __future__ import annotations

from typing import Any

from stereo_spot.aws_bootstrap import ResourceNames

ROLES = ("app", "worker", "workflow", "events")

_S3_READ = ["s3:GetObject"]
_S3_WRITE = ["s3:PutObject", "s3:AbortMultipartUpload"]
_S3_DELETE = ["s3:DeleteObject"]
_TABLE_RW = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
             "dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:DescribeTable"]
_QUEUE_CONSUME = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                  "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]


def _bucket(partition: str, bucket: str) -> str:
    return f"arn:{partition}:s3:::{bucket}"


def _objects(partition: str, bucket: str, prefixes: list[str]) -> list[str]:
    return [f"{_bucket(partition, bucket)}/{prefix}*" for prefix in prefixes]


def _list(partition: str, bucket: str, prefixes: list[str], sid: str) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [_bucket(partition, bucket)],
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}}}


def _tables(partition: str, region: str, account: str, tables: list[str], *, indexes: bool = False) -> list[str]:
    arns = [f"arn:{partition}:dynamodb:{region}:{account}:table/{table}" for table in tables]
    return arns + ([f"{arn}/index/*" for arn in arns[:1]] if indexes else [])


def policies(names: ResourceNames, account: str, region: str, partition: str = "aws") -> dict[str, dict[str, Any]]:
    """Role name → IAM policy document. The jobs table is first in every table list (its indexes are queried)."""
    queue = f"arn:{partition}:sqs:{region}:{account}:{names.queue}"
    pipeline_in, pipeline_out = ["input/", "segments/"], ["jobs/"]

    def pipeline(tables: list[str]) -> list[dict[str, Any]]:
        return [
            {"Sid": "PipelineObjects", "Effect": "Allow", "Action": _S3_READ + _S3_WRITE + _S3_DELETE,
             "Resource": _objects(partition, names.input_bucket, pipeline_in)
             + _objects(partition, names.output_bucket, pipeline_out)},
            _list(partition, names.input_bucket, pipeline_in, "ListInput"),
            _list(partition, names.output_bucket, pipeline_out, "ListOutput"),
            {"Sid": "Tables", "Effect": "Allow", "Action": _TABLE_RW,
             "Resource": _tables(partition, region, account, tables, indexes=True)},
        ]

    app = [
        {"Sid": "StoreSources", "Effect": "Allow", "Action": _S3_WRITE,
         "Resource": _objects(partition, names.input_bucket, ["input/"])},
        {"Sid": "ReadResults", "Effect": "Allow", "Action": _S3_READ,
         "Resource": _objects(partition, names.output_bucket, ["jobs/"])},
        {"Sid": "DeleteJobs", "Effect": "Allow", "Action": _S3_DELETE,
         "Resource": _objects(partition, names.input_bucket, pipeline_in)
         + _objects(partition, names.output_bucket, pipeline_out)},
        _list(partition, names.input_bucket, pipeline_in, "ListInput"),
        _list(partition, names.output_bucket, pipeline_out, "ListOutput"),
        {"Sid": "Jobs", "Effect": "Allow",
         "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
         "Resource": _tables(partition, region, account, [names.jobs_table], indexes=True)},
        {"Sid": "Completions", "Effect": "Allow",
         "Action": ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchWriteItem", "dynamodb:DeleteItem"],
         "Resource": _tables(partition, region, account, [names.completions_table])},
    ]
    worker = pipeline([names.jobs_table, names.completions_table, names.reassembly_table, names.dedup_table]) + [
        {"Sid": "EventsQueue", "Effect": "Allow", "Action": _QUEUE_CONSUME, "Resource": [queue]}]
    workflow = pipeline([names.jobs_table, names.completions_table, names.reassembly_table])
    events = [{"Sid": "EventsQueue", "Effect": "Allow", "Action": _QUEUE_CONSUME, "Resource": [queue]}]
    return {role: {"Version": "2012-10-17", "Statement": statements}
            for role, statements in (("app", app), ("worker", worker), ("workflow", workflow), ("events", events))}
