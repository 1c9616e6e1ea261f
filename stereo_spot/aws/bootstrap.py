"""Create (idempotently) or destroy the AWS resources stereo-spot runs on.

    buckets   input (uploads, segments) and output (converted segments, final videos): Block Public Access on,
              default encryption (SSE-S3), a bucket policy refusing requests without TLS, lifecycle rules
              (abort unfinished multipart uploads; expire intermediates concat did not remove, as a backstop)
    tables    jobs (GSIs status-completed_at and status-created_at), segment completions,
              reassembly-triggered (TTL expires_at), event dedup (TTL expires_at); point-in-time recovery and
              deletion protection on every table (``destroy`` turns the protection off before it deletes)
    queues    the events queue (S3 upload events) with a dead-letter queue and redrive policy
    events    S3 -> SQS notification on the input bucket for input/*.mp4, and the queue policy allowing it

Every resource is looked up before it is created or changed, and only a difference is written, so a second run
reports "exists" for everything and changes nothing.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stereo_spot.adapters.aws.clients import AwsClients, AwsConfig, aws_errors
from stereo_spot.adapters.aws.dynamodb import COMPLETED_INDEX, CREATED_INDEX, TTL_ATTRIBUTE
from stereo_spot.config import Settings
from stereo_spot.errors import UserError
from stereo_spot.ports import StoreError

NOTIFICATION_ID = "stereo-spot-input-mp4"
INPUT_PREFIX, INPUT_SUFFIX = "input/", ".mp4"
MAX_RECEIVE_COUNT = 5  # deliveries before a message moves to the dead-letter queue
QUEUE_VISIBILITY_SECONDS = 900  # the worker extends it while a job runs; this covers a worker that died
DLQ_RETENTION_SECONDS = 14 * 24 * 3600  # the SQS maximum: time to inspect and replay
ABORT_MULTIPART_DAYS = 7
_PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$")

CREATED, EXISTS, UPDATED, DELETED, ABSENT = "created", "exists", "updated", "deleted", "absent"
SKIPPED = "skipped"  # a setting that does not apply here (e.g. the TLS-only policy on a plain-http emulator)
_NO_BUCKET = ("404", "NoSuchBucket", "NotFound")
_NO_TABLE = ("ResourceNotFoundException",)
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def _error_code(exc: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    cause = exc if isinstance(exc, ClientError) else exc.__cause__
    return str(cause.response.get("Error", {}).get("Code")) if isinstance(cause, ClientError) else None


def aws_call(clients: AwsClients, service: str, what: str, call: Callable[[], Any], *missing: str) -> Any:
    """Run one AWS call with readable errors; None instead of an error when its code says "missing"."""
    try:
        with aws_errors(clients, service, what):
            return call()
    except StoreError as exc:
        if missing and _error_code(exc) in missing:
            return None
        raise


@dataclass(frozen=True)
class ResourceNames:
    input_bucket: str
    output_bucket: str
    jobs_table: str
    completions_table: str
    reassembly_table: str
    dedup_table: str
    queue: str
    dead_letter_queue: str

    @classmethod
    def from_settings(cls, settings: Settings, prefix: str | None = None) -> ResourceNames:
        """With a prefix every name is derived from it (``{prefix}-input``, ``{prefix}-jobs``...), which keeps
        several deployments apart in one account and makes bucket names unique; without one the names come
        from the environment."""
        if prefix:
            if not _PREFIX.match(prefix):
                raise UserError(f"invalid prefix {prefix!r}: use 3-42 lowercase letters, digits and '-' (it "
                                "becomes part of bucket names)")
            return cls(f"{prefix}-input", f"{prefix}-output", f"{prefix}-jobs", f"{prefix}-segment-completions",
                       f"{prefix}-reassembly-triggered", f"{prefix}-event-dedup", f"{prefix}-events",
                       f"{prefix}-events-dlq")
        queue = settings.chunking_queue_url.rstrip("/").rsplit("/", 1)[-1] if settings.chunking_queue_url \
            else "stereo-spot-events"
        return cls(settings.input_bucket_name, settings.output_bucket_name, settings.jobs_table_name,
                   settings.segment_completions_table_name, settings.reassembly_triggered_table_name,
                   settings.event_dedup_table_name, queue, f"{queue}-dlq")


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str  # created | exists | updated | deleted | absent
    detail: str = ""


@dataclass
class BootstrapResult:
    names: ResourceNames
    changes: list[Change] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    dead_letter_queue_url: str = ""

    @property
    def changed(self) -> bool:
        return any(c.action not in (EXISTS, SKIPPED) for c in self.changes)

    def env_block(self) -> str:
        """KEY=value lines, ready for ``kubectl create configmap --from-env-file`` or a systemd unit."""
        return "\n".join(f"{key}={value}" for key, value in self.env.items())


# --- desired state ----------------------------------------------------------------------------------------


def _attr(name: str, kind: str = "S") -> dict[str, str]:
    return {"AttributeName": name, "AttributeType": kind}


def _gsi(name: str, hash_key: str, range_key: str) -> dict[str, Any]:
    return {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"},
                          {"AttributeName": range_key, "KeyType": "RANGE"}]}


def table_specs(names: ResourceNames) -> list[dict[str, Any]]:
    """CreateTable requests (on-demand billing) plus the TTL attribute where the table has one."""
    return [
        {"TableName": names.jobs_table,
         "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
         "AttributeDefinitions": [_attr("job_id"), _attr("status"), _attr("completed_at"), _attr("created_at")],
         "GlobalSecondaryIndexes": [_gsi(COMPLETED_INDEX, "status", "completed_at"),
                                    _gsi(CREATED_INDEX, "status", "created_at")]},
        {"TableName": names.completions_table,
         "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"},
                       {"AttributeName": "segment_index", "KeyType": "RANGE"}],
         "AttributeDefinitions": [_attr("job_id"), _attr("segment_index", "N")]},
        {"TableName": names.reassembly_table, "ttl": TTL_ATTRIBUTE,
         "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
         "AttributeDefinitions": [_attr("job_id")]},
        {"TableName": names.dedup_table, "ttl": TTL_ATTRIBUTE,
         "KeySchema": [{"AttributeName": "event_id", "KeyType": "HASH"}],
         "AttributeDefinitions": [_attr("event_id")]},
    ]


def queue_policy(queue_arn: str, bucket: str, account: str | None) -> dict[str, Any]:
    """Only our input bucket (in our account, where known) may send to the events queue."""
    partition = queue_arn.split(":")[1]
    condition: dict[str, Any] = {"ArnLike": {"aws:SourceArn": f"arn:{partition}:s3:::{bucket}"}}
    if account:
        condition["StringEquals"] = {"aws:SourceAccount": account}
    return {"Version": "2012-10-17", "Id": f"{queue_arn}/s3-events", "Statement": [{
        "Sid": "AllowInputBucketEvents", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": queue_arn, "Condition": condition}]}


def notification(queue_arn: str) -> dict[str, Any]:
    return {"Id": NOTIFICATION_ID, "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": INPUT_PREFIX},
                                               {"Name": "suffix", "Value": INPUT_SUFFIX}]}}}


def _normal_notification(config: dict[str, Any]) -> tuple:
    rules = config.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return (config.get("QueueArn"), tuple(sorted(config.get("Events", []))),
            tuple(sorted((r["Name"].lower(), r["Value"]) for r in rules)))


LIFECYCLE_RULE = {"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
                  "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_MULTIPART_DAYS}}
# Source segments are removed by concat once the final video exists; a job that never finishes (failed and not
# resumed, a lost workflow) would keep them for ever. The longest a job may reasonably wait for a resume.
INTERMEDIATE_DAYS = 14
SEGMENTS_RULE = {"ID": "expire-leftover-segments", "Status": "Enabled", "Filter": {"Prefix": "segments/"},
                 "Expiration": {"Days": INTERMEDIATE_DAYS}}
BLOCK_PUBLIC_ACCESS = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}
DEFAULT_ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"},
                                 "BucketKeyEnabled": True}]}
TLS_ONLY_SID = "DenyInsecureTransport"


def lifecycle_rules(bucket: str, names: ResourceNames) -> list[dict[str, Any]]:
    return [LIFECYCLE_RULE] + ([SEGMENTS_RULE] if bucket == names.input_bucket else [])


def tls_only_statement(bucket: str) -> dict[str, Any]:
    """Refuse every request to the bucket that does not come over TLS."""
    return {"Sid": TLS_ONLY_SID, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def _same_rule(current: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """A lifecycle rule as read back equals ours (S3 may add empty fields, and old rules carry ``Prefix``)."""
    if current is None:
        return False
    return all(current.get(key) == value for key, value in desired.items() if key != "Filter") and \
        (current.get("Filter") or {"Prefix": current.get("Prefix", "")}) == desired["Filter"]


# --- bootstrap --------------------------------------------------------------------------------------------


class _Bootstrapper:
    def __init__(self, settings: Settings, names: ResourceNames, clients: AwsClients,
                 on_change: Callable[[Change], None] | None, tls_only: bool | None = None):
        self.settings, self.names, self.clients = settings, names, clients
        self.force_tls_only = tls_only
        self.on_change = on_change or (lambda change: None)
        self.changes: list[Change] = []

    def note(self, kind: str, name: str, action: str, detail: str = "") -> None:
        change = Change(kind, name, action, detail)
        self.changes.append(change)
        self.on_change(change)

    def errors(self, service: str, what: str):
        return aws_errors(self.clients, service, what)

    # buckets ---------------------------------------------------------------------------------------------

    def bucket(self, name: str) -> None:
        s3 = self.clients.client("s3")
        try:
            exists = aws_call(self.clients, "s3", f"looking up bucket {name}",
                              lambda: s3.head_bucket(Bucket=name), *_NO_BUCKET) is not None
        except StoreError as exc:  # head_bucket answers a bare 403 for a bucket of another account
            if _error_code(exc) in ("403", "AccessDenied", "Forbidden"):
                raise UserError(f"bucket {name} exists but belongs to another account (bucket names are global): "
                                "choose another name with --prefix") from exc
            raise
        if not exists:
            request: dict[str, Any] = {"Bucket": name}
            if self.clients.config.region != "us-east-1":  # us-east-1 refuses an explicit location
                request["CreateBucketConfiguration"] = {"LocationConstraint": self.clients.config.region}
            with self.errors("s3", f"creating bucket {name}"):
                s3.create_bucket(**request)
        self.note("bucket", name, EXISTS if exists else CREATED)
        self.public_access_block(name)
        self.encryption(name)
        self.tls_only(name)
        self.lifecycle(name)

    def public_access_block(self, bucket: str) -> None:
        s3 = self.clients.client("s3")
        found = aws_call(self.clients, "s3", f"reading the public access block of bucket {bucket}",
                         lambda: s3.get_public_access_block(Bucket=bucket), "NoSuchPublicAccessBlockConfiguration")
        if found and found.get("PublicAccessBlockConfiguration") == BLOCK_PUBLIC_ACCESS:
            self.note("public access", f"{bucket}: blocked", EXISTS)
            return
        with self.errors("s3", f"blocking public access to bucket {bucket}"):
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=BLOCK_PUBLIC_ACCESS)
        self.note("public access", f"{bucket}: blocked", UPDATED if found else CREATED)

    def encryption(self, bucket: str) -> None:
        s3 = self.clients.client("s3")
        found = aws_call(self.clients, "s3", f"reading the default encryption of bucket {bucket}",
                         lambda: s3.get_bucket_encryption(Bucket=bucket),
                         "ServerSideEncryptionConfigurationNotFoundError")
        rules = (found or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        if any(r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") in ("AES256", "aws:kms",
                                                                                     "aws:kms:dsse")
               for r in rules):  # SSE-S3 or a KMS key the operator chose: both encrypt at rest
            self.note("encryption", f"{bucket}: default encryption", EXISTS)
            return
        with self.errors("s3", f"setting the default encryption of bucket {bucket}"):
            s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=DEFAULT_ENCRYPTION)
        self.note("encryption", f"{bucket}: default encryption", CREATED)

    def tls_only(self, bucket: str) -> None:
        """A bucket policy refusing plain-HTTP requests, merged into any policy the bucket has. Skipped for a
        plain-http endpoint (a local emulator such as moto), which would then refuse every request."""
        endpoint = self.clients.config.endpoint_url or ""
        if not self.settings_tls_only(endpoint):
            self.note("bucket policy", f"{bucket}: TLS only", SKIPPED, "plain-http endpoint")
            return
        s3 = self.clients.client("s3")
        found = aws_call(self.clients, "s3", f"reading the policy of bucket {bucket}",
                         lambda: s3.get_bucket_policy(Bucket=bucket), "NoSuchBucketPolicy")
        policy = json.loads(found["Policy"]) if found else {"Version": "2012-10-17", "Statement": []}
        statements = policy.get("Statement", [])
        desired = tls_only_statement(bucket)
        if desired in statements:
            self.note("bucket policy", f"{bucket}: TLS only", EXISTS)
            return
        policy["Statement"] = [st for st in statements if st.get("Sid") != TLS_ONLY_SID] + [desired]
        with self.errors("s3", f"setting the policy of bucket {bucket}"):
            s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        self.note("bucket policy", f"{bucket}: TLS only", UPDATED if found else CREATED)

    def settings_tls_only(self, endpoint: str) -> bool:
        return self.force_tls_only if self.force_tls_only is not None else not endpoint.startswith("http://")

    def lifecycle(self, bucket: str) -> None:
        s3 = self.clients.client("s3")
        found = aws_call(self.clients, "s3", f"reading the lifecycle rules of bucket {bucket}",
                         lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket), "NoSuchLifecycleConfiguration")
        rules = found.get("Rules", []) if found else []
        desired = lifecycle_rules(bucket, self.names)
        ids = {rule["ID"] for rule in desired}
        current = {r.get("ID"): r for r in rules if r.get("ID") in ids}
        label = f"{bucket}: abort incomplete uploads after {ABORT_MULTIPART_DAYS} d" + (
            f", expire leftover segments after {INTERMEDIATE_DAYS} d" if len(desired) > 1 else "")
        if all(_same_rule(current.get(rule["ID"]), rule) for rule in desired):
            self.note("lifecycle", label, EXISTS)
            return
        rules = [r for r in rules if r.get("ID") not in ids] + desired
        with self.errors("s3", f"setting the lifecycle rules of bucket {bucket}"):
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
        self.note("lifecycle", label, UPDATED if current else CREATED)

    # tables ----------------------------------------------------------------------------------------------

    def table(self, spec: dict[str, Any]) -> None:
        db = self.clients.client("dynamodb")
        spec = dict(spec)
        ttl = spec.pop("ttl", None)
        name = spec["TableName"]
        described = self._describe_table(name)
        if described is None:
            with self.errors("dynamodb", f"creating table {name}"):
                db.create_table(BillingMode="PAY_PER_REQUEST", DeletionProtectionEnabled=True, **spec)
            self._wait_table(name)
            self.note("table", name, CREATED)
            for index in spec.get("GlobalSecondaryIndexes", []):
                self.note("index", f"{name}/{index['IndexName']}", CREATED)
        else:
            self.note("table", name, EXISTS)
            present = {index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])}
            for index in spec.get("GlobalSecondaryIndexes", []):
                if index["IndexName"] in present:
                    self.note("index", f"{name}/{index['IndexName']}", EXISTS)
                    continue
                # An older table without the index: add it (one index per update is what DynamoDB allows).
                with self.errors("dynamodb", f"adding index {index['IndexName']} to table {name}"):
                    db.update_table(TableName=name, AttributeDefinitions=spec["AttributeDefinitions"],
                                    GlobalSecondaryIndexUpdates=[{"Create": index}])
                self._wait_table(name, index=index["IndexName"])
                self.note("index", f"{name}/{index['IndexName']}", CREATED)
        if ttl:
            self.time_to_live(name, ttl)
        self.protection(name, described)
        self.point_in_time_recovery(name)

    def protection(self, table: str, described: dict[str, Any] | None) -> None:
        """Deletion protection: only ``destroy`` (which turns it off first) deletes a table."""
        if described is None or described.get("DeletionProtectionEnabled"):
            self.note("deletion protection", table, CREATED if described is None else EXISTS)
            return
        with self.errors("dynamodb", f"turning on deletion protection of table {table}"):
            self.clients.client("dynamodb").update_table(TableName=table, DeletionProtectionEnabled=True)
        self.note("deletion protection", table, UPDATED)

    def point_in_time_recovery(self, table: str) -> None:
        db = self.clients.client("dynamodb")
        with self.errors("dynamodb", f"reading the backups of table {table}"):
            current = db.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        if current.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") == "ENABLED":
            self.note("point-in-time recovery", table, EXISTS)
            return
        with self.errors("dynamodb", f"turning on point-in-time recovery of table {table}"):
            db.update_continuous_backups(TableName=table,
                                         PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        self.note("point-in-time recovery", table, CREATED)

    def _describe_table(self, name: str) -> dict[str, Any] | None:
        db = self.clients.client("dynamodb")
        found = aws_call(self.clients, "dynamodb", f"looking up table {name}",
                         lambda: db.describe_table(TableName=name), *_NO_TABLE)
        return found["Table"] if found else None

    def _wait_table(self, name: str, index: str | None = None, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            table = self._describe_table(name) or {}
            ready = table.get("TableStatus") == "ACTIVE"
            if index:
                ready = ready and any(i["IndexName"] == index and i.get("IndexStatus") == "ACTIVE"
                                      for i in table.get("GlobalSecondaryIndexes", []))
            if ready:
                return
            if time.monotonic() > deadline:
                raise UserError(f"table {name} did not become active within {timeout:.0f} s")
            time.sleep(2)

    def time_to_live(self, table: str, attribute: str) -> None:
        db = self.clients.client("dynamodb")
        with self.errors("dynamodb", f"reading the TTL setting of table {table}"):
            current = db.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") in ("ENABLED", "ENABLING") and current.get("AttributeName") == attribute:
            self.note("ttl", f"{table}.{attribute}", EXISTS)
            return
        with self.errors("dynamodb", f"enabling TTL on table {table}"):
            db.update_time_to_live(TableName=table,
                                   TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute})
        self.note("ttl", f"{table}.{attribute}", CREATED)

    # queues ----------------------------------------------------------------------------------------------

    def queue(self, name: str, attributes: dict[str, str], compare: dict[str, Callable[[str], Any]],
              policy: Callable[[str], dict[str, Any]] | None = None) -> str:
        """Create the queue, or bring the attributes we own to the desired values; return its URL. ``policy``
        builds the access policy from the queue's ARN, known once the queue exists."""
        sqs = self.clients.client("sqs")
        found = aws_call(self.clients, "sqs", f"looking up queue {name}", lambda: sqs.get_queue_url(QueueName=name),
                         *_NO_QUEUE)
        created = found is None
        if created:
            with self.errors("sqs", f"creating queue {name}"):
                url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        else:
            url = found["QueueUrl"]
        desired = dict(attributes)
        if policy is not None:
            desired["Policy"] = json.dumps(policy(self.queue_arn(url)))
            compare = {**compare, "Policy": json.loads}
        with self.errors("sqs", f"reading the attributes of queue {name}"):
            current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
        stale = {key: value for key, value in desired.items()
                 if key not in current or compare.get(key, str)(current[key]) != compare.get(key, str)(value)}
        if stale:
            with self.errors("sqs", f"updating queue {name}"):
                sqs.set_queue_attributes(QueueUrl=url, Attributes=stale)
        action = CREATED if created else UPDATED if stale else EXISTS
        self.note("queue", name, action, "" if created or not stale else ", ".join(sorted(stale)))
        return url

    def queue_arn(self, url: str) -> str:
        with self.errors("sqs", f"reading the ARN of queue {url}"):
            return self.clients.client("sqs").get_queue_attributes(
                QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def account(self) -> str | None:
        try:
            return self.clients.client("sts").get_caller_identity()["Account"]
        except Exception:  # noqa: BLE001 - only narrows the queue policy; a local endpoint may lack STS
            return None

    # notification ----------------------------------------------------------------------------------------

    def notification(self, bucket: str, queue_arn: str) -> None:
        s3 = self.clients.client("s3")
        with self.errors("s3", f"reading the event notifications of bucket {bucket}"):
            current = s3.get_bucket_notification_configuration(Bucket=bucket)
        current.pop("ResponseMetadata", None)
        desired = notification(queue_arn)
        queues = current.get("QueueConfigurations", [])
        ours = [q for q in queues if q.get("Id") == NOTIFICATION_ID]
        label = f"{bucket}: {INPUT_PREFIX}*{INPUT_SUFFIX} -> {queue_arn.rsplit(':', 1)[-1]}"
        if ours and _normal_notification(ours[0]) == _normal_notification(desired):
            self.note("notification", label, EXISTS)
            return
        current["QueueConfigurations"] = [q for q in queues if q.get("Id") != NOTIFICATION_ID] + [desired]
        with self.errors("s3", f"setting the event notification of bucket {bucket}"):
            s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
        self.note("notification", label, UPDATED if ours else CREATED)


def bootstrap(settings: Settings, prefix: str | None = None, *,
              on_change: Callable[[Change], None] | None = None, tls_only: bool | None = None) -> BootstrapResult:
    """``tls_only``: install the TLS-only bucket policy (default: unless the endpoint is plain http)."""
    names = ResourceNames.from_settings(settings, prefix)
    clients = AwsClients(AwsConfig.from_settings(settings))
    run = _Bootstrapper(settings, names, clients, on_change, tls_only)
    for bucket in (names.input_bucket, names.output_bucket):
        run.bucket(bucket)
    for spec in table_specs(names):
        run.table(spec)

    dlq_url = run.queue(names.dead_letter_queue, {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}, {})
    redrive = {"deadLetterTargetArn": run.queue_arn(dlq_url), "maxReceiveCount": MAX_RECEIVE_COUNT}
    account = run.account()
    queue_url = run.queue(
        names.queue,
        {"VisibilityTimeout": str(QUEUE_VISIBILITY_SECONDS), "ReceiveMessageWaitTimeSeconds": "20",
         "RedrivePolicy": json.dumps(redrive)},
        {"RedrivePolicy": lambda raw: {k: str(v) for k, v in json.loads(raw).items()}},
        policy=lambda arn: queue_policy(arn, names.input_bucket, account))
    queue_arn = run.queue_arn(queue_url)
    run.notification(names.input_bucket, queue_arn)

    env = {"STORAGE_ADAPTER": "aws", "AWS_REGION": clients.config.region}
    if clients.config.endpoint_url:
        env["AWS_ENDPOINT_URL"] = clients.config.endpoint_url
    env.update({
        "INPUT_BUCKET_NAME": names.input_bucket, "OUTPUT_BUCKET_NAME": names.output_bucket,
        "JOBS_TABLE_NAME": names.jobs_table, "SEGMENT_COMPLETIONS_TABLE_NAME": names.completions_table,
        "REASSEMBLY_TRIGGERED_TABLE_NAME": names.reassembly_table, "EVENT_DEDUP_TABLE_NAME": names.dedup_table,
        "CHUNKING_QUEUE_URL": queue_url})
    return BootstrapResult(names=names, changes=run.changes, env=env, dead_letter_queue_url=dlq_url)


# --- destroy ----------------------------------------------------------------------------------------------


def destroy(settings: Settings, prefix: str | None = None, *,
            on_change: Callable[[Change], None] | None = None) -> list[Change]:
    """Delete everything bootstrap creates, the objects in the buckets included."""
    names = ResourceNames.from_settings(settings, prefix)
    clients = AwsClients(AwsConfig.from_settings(settings))
    changes: list[Change] = []

    def note(kind: str, name: str, gone: Any) -> None:
        changes.append(Change(kind, name, ABSENT if gone is None else DELETED))
        if on_change:
            on_change(changes[-1])

    s3, db, sqs = clients.client("s3"), clients.client("dynamodb"), clients.client("sqs")
    for bucket in (names.input_bucket, names.output_bucket):
        note("bucket", bucket, aws_call(clients, "s3", f"deleting bucket {bucket}",
                                        lambda b=bucket: (_empty_bucket(s3, b), s3.delete_bucket(Bucket=b)),
                                        *_NO_BUCKET))
    def delete_table(name: str) -> Any:
        # Deletion protection guards against deleting by accident; this command is the deliberate way.
        if db.describe_table(TableName=name)["Table"].get("DeletionProtectionEnabled"):
            db.update_table(TableName=name, DeletionProtectionEnabled=False)
        return db.delete_table(TableName=name)

    for table in (names.jobs_table, names.completions_table, names.reassembly_table, names.dedup_table):
        note("table", table, aws_call(clients, "dynamodb", f"deleting table {table}",
                                      lambda t=table: delete_table(t), *_NO_TABLE))

    def delete_queue(name: str) -> Any:
        return sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])

    for queue in (names.queue, names.dead_letter_queue):
        note("queue", queue, aws_call(clients, "sqs", f"deleting queue {queue}", lambda q=queue: delete_queue(q),
                                      *_NO_QUEUE))
    return changes


def _empty_bucket(s3: Any, bucket: str) -> None:
    """Objects, old versions and delete markers, and unfinished multipart uploads, 1,000 per request."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                  for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(doomed), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start:start + 1000], "Quiet": True})
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
