"""AWS adapters (``STORAGE_ADAPTER=aws``): DynamoDB for records, S3 for objects, SQS for upload events.

Names come from the environment contract (``config.Settings``); ``AWS_ENDPOINT_URL`` points every client at a
local endpoint (moto, LocalStack) instead of AWS. ``stereo-spot aws bootstrap`` creates the resources.
"""

from __future__ import annotations

import functools

from stereo_spot.adapters.aws.clients import AwsClients, AwsConfig, aws_errors
from stereo_spot.adapters.aws.dynamodb import (
    COMPLETED_INDEX,
    CREATED_INDEX,
    TTL_ATTRIBUTE,
    DynamoEventDedup,
    DynamoJobStore,
    DynamoReassemblyLock,
    DynamoSegmentCompletionStore,
)
from stereo_spot.adapters.aws.s3 import DEFAULT_PART_SIZE, S3ObjectStorage, content_disposition
from stereo_spot.adapters.aws.sqs import SqsQueue
from stereo_spot.adapters.operator_links import links_from_settings
from stereo_spot.config import Settings
from stereo_spot.errors import UserError
from stereo_spot.ports import Backend

__all__ = [
    "COMPLETED_INDEX",
    "CREATED_INDEX",
    "DEFAULT_PART_SIZE",
    "TTL_ATTRIBUTE",
    "AwsClients",
    "AwsConfig",
    "DynamoEventDedup",
    "DynamoJobStore",
    "DynamoReassemblyLock",
    "DynamoSegmentCompletionStore",
    "S3ObjectStorage",
    "SqsQueue",
    "aws_backend",
    "aws_errors",
    "content_disposition",
    "events_queue",
]


def aws_backend(settings: Settings, *, part_size: int = DEFAULT_PART_SIZE) -> Backend:
    clients = AwsClients(AwsConfig.from_settings(settings))
    return Backend(
        jobs=DynamoJobStore(clients, settings.jobs_table_name),
        completions=DynamoSegmentCompletionStore(clients, settings.segment_completions_table_name),
        reassembly=DynamoReassemblyLock(clients, settings.reassembly_triggered_table_name),
        objects=S3ObjectStorage(clients, part_size=part_size),
        input_bucket=settings.input_bucket_name,
        output_bucket=settings.output_bucket_name,
        dedup=DynamoEventDedup(clients, settings.event_dedup_table_name),
        links=links_from_settings(settings),
        name="aws",
        # Worker processes build their own clients from the same settings.
        factory=functools.partial(aws_backend, settings, part_size=part_size),
    )


def events_queue(settings: Settings) -> SqsQueue:
    """The queue S3 sends upload events to (``CHUNKING_QUEUE_URL``)."""
    if not settings.chunking_queue_url:
        raise UserError("CHUNKING_QUEUE_URL is not set: `stereo-spot aws bootstrap` prints it")
    return SqsQueue(AwsClients(AwsConfig.from_settings(settings)), settings.chunking_queue_url)
