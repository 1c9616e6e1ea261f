"""DynamoDB stores: jobs, segment completions, the reassembly lock and the event dedup table.

Records are stored as native attributes (strings, numbers, a map for the settings), not as one JSON blob, so an
operator can read and fix them with the AWS console or CLI (see the runbooks) and an update touches only the
fields it names. Timestamps are stored as fixed-width UTC strings (``2024-05-01T12:00:00.000000Z``) so that their
string order is their time order: they are the sort keys of the indexes.

Jobs table (``JOBS_TABLE_NAME``), partition key ``job_id``, two global secondary indexes:

* ``status-completed_at`` (status, completed_at): completed jobs newest first. Sparse: a job without
  ``completed_at`` is not in it.
* ``status-created_at`` (status, created_at): any one status newest first; ``list_in_progress`` queries it once
  per in-progress status (four queries, never a Scan) and merges.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Any

from pydantic import TypeAdapter

from stereo_spot.adapters.aws.clients import AwsClients, aws_errors
from stereo_spot.models import IN_PROGRESS_STATUSES, Job, JobStatus, Page, SegmentCompletion, utcnow
from stereo_spot.ports import (
    REASSEMBLY_LOCK_TTL_SECONDS,
    ConflictError,
    EventDedup,
    JobStore,
    LockHolder,
    NotFound,
    QuotaExceeded,
    ReassemblyLock,
    SegmentCompletionStore,
)

COMPLETED_INDEX = "status-completed_at"
CREATED_INDEX = "status-created_at"
TTL_ATTRIBUTE = "expires_at"


# --- attribute conversion -------------------------------------------------------------------------------


def timestamp(value: datetime) -> str:
    """Fixed-width UTC: lexicographic order equals time order (ISO strings with optional fractions do not)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_dynamo(value: Any) -> Any:
    """Python values as DynamoDB accepts them: Decimal for numbers, strings for times and enums."""
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot store the number {value} in DynamoDB")
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {str(k): to_dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dynamo(v) for v in value]
    return value


def from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_dynamo(v) for v in value]
    return value


@cache
def _serializers() -> tuple[Any, Any]:
    from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

    return TypeSerializer(), TypeDeserializer()


def serialize_item(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a low-level item. None at the top level is left out: index keys must be absent, not NULL."""
    serializer, _ = _serializers()
    return {k: serializer.serialize(to_dynamo(v)) for k, v in record.items() if v is not None}


def serialize_value(value: Any) -> dict[str, Any]:
    return _serializers()[0].serialize(to_dynamo(value))


def deserialize_item(item: dict[str, Any]) -> dict[str, Any]:
    _, deserializer = _serializers()
    return {k: from_dynamo(deserializer.deserialize(v)) for k, v in item.items()}


def encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def decode_cursor(cursor: str, expected: set[str]) -> dict[str, Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid page cursor {cursor!r}") from exc
    if not isinstance(key, dict) or set(key) != expected or not all(
            isinstance(v, dict) and len(v) == 1 for v in key.values()):
        raise ValueError(f"invalid page cursor {cursor!r}: it belongs to another listing")
    return key


# --- jobs -----------------------------------------------------------------------------------------------


@cache
def _field_adapter(name: str) -> TypeAdapter:
    return TypeAdapter(Job.model_fields[name].annotation)


def _job_field(name: str, value: Any) -> Any:
    """Validate one field the way the Job model would and return it ready for DynamoDB."""
    if name not in Job.model_fields or name == "job_id":
        raise ValueError(f"cannot update job field {name!r}")
    adapter = _field_adapter(name)
    return to_dynamo(adapter.dump_python(adapter.validate_python(value), mode="python"))


class DynamoJobStore(JobStore):
    def __init__(self, clients: AwsClients, table: str):
        self.clients, self.table = clients, table

    @property
    def _db(self) -> Any:
        return self.clients.client("dynamodb")

    def _errors(self, what: str):
        return aws_errors(self.clients, "dynamodb", f"{what} (table {self.table})")

    def get(self, job_id: str) -> Job | None:
        with self._errors(f"reading job {job_id}"):
            found = self._db.get_item(TableName=self.table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        item = found.get("Item")
        return Job.model_validate(deserialize_item(item)) if item else None

    def put(self, job: Job, *, if_absent: bool = False) -> None:
        request: dict[str, Any] = {"TableName": self.table,
                                   "Item": serialize_item(job.model_dump(mode="python"))}
        if if_absent:
            request["ConditionExpression"] = "attribute_not_exists(job_id)"
        try:
            with self._errors(f"writing job {job.job_id}"):
                self._db.put_item(**request)
        except ConflictError as exc:
            raise ConflictError(f"job {job.job_id} exists already") from exc

    def create(self, job: Job, *, max_in_progress: int | None = None) -> None:
        """Without a limit (or an owner): a conditional put. With one, the owner has ``max_in_progress`` slot items
        in this table (``quota#{owner}#{i}``: no status, so no listing index sees them), each naming the job that
        holds it. A new job takes a slot whose holder is gone or no longer in progress, in one transaction with
        the job's own put, conditioned on the slot still naming that holder: two requests that saw the same free
        slot cannot both take it (the loser looks again). Slots free themselves: nothing needs to release one
        when a job ends."""
        if not max_in_progress or job.owner is None:
            self.put(job, if_absent=True)
            return
        for _ in range(4 * max_in_progress):  # a lost race only means another slot was just taken
            slot = self._free_slot(job.owner, max_in_progress)
            if slot is None:
                raise QuotaExceeded(job.owner, max_in_progress)
            key, holder = slot
            slot_put: dict[str, Any] = {
                "TableName": self.table, "Item": {"job_id": {"S": key}, "holder": {"S": job.job_id}},
                "ConditionExpression": "attribute_not_exists(job_id)"}
            if holder is not None:
                slot_put["ConditionExpression"] = "holder = :holder"
                slot_put["ExpressionAttributeValues"] = {":holder": {"S": holder}}
            job_put = {"TableName": self.table, "Item": serialize_item(job.model_dump(mode="python")),
                       "ConditionExpression": "attribute_not_exists(job_id)"}
            with self._errors(f"writing job {job.job_id}"):
                reasons = self._transact_or_reasons([{"Put": slot_put}, {"Put": job_put}])
            if reasons is None:
                return
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise ConflictError(f"job {job.job_id} exists already")
        raise QuotaExceeded(job.owner, max_in_progress)

    def _transact_or_reasons(self, items: list[dict[str, Any]]) -> list[str] | None:
        """Run one TransactWriteItems; None when it was written, else each item's cancellation reason code."""
        from botocore.exceptions import ClientError

        try:
            self._db.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            return [str(r.get("Code", "")) for r in exc.response.get("CancellationReasons", [])] or [""]
        return None

    def _free_slot(self, owner: str, limit: int) -> tuple[str, str | None] | None:
        """(slot key, its holder or None) of the first slot not held by a job in progress; None when all are.
        Consistent reads: the job just created by another tab counts at once (the status index would lag)."""
        for index in range(limit):
            key = f"quota#{owner}#{index}"
            with self._errors(f"reading the job slots of {owner}"):
                found = self._db.get_item(TableName=self.table, Key={"job_id": {"S": key}}, ConsistentRead=True)
            holder = found.get("Item", {}).get("holder", {}).get("S")
            if holder is None:
                return key, None
            held = self.get(holder)
            if held is None or held.status not in IN_PROGRESS_STATUSES:
                return key, holder
        return None

    def update(self, job_id: str, *, expected_status: JobStatus | tuple[JobStatus, ...] | None = None,
               **fields: Any) -> Job:
        fields.setdefault("updated_at", utcnow())
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets: list[str] = []
        removes: list[str] = []
        for i, (name, raw) in enumerate(fields.items()):
            value = _job_field(name, raw)
            names[f"#f{i}"] = name
            if value is None:
                removes.append(f"#f{i}")  # absent, not NULL: completed_at is an index key
            else:
                values[f":v{i}"] = serialize_value(value)
                sets.append(f"#f{i} = :v{i}")
        expression = " ".join(part for part in (
            "SET " + ", ".join(sets) if sets else "", "REMOVE " + ", ".join(removes) if removes else "") if part)
        condition = "attribute_exists(job_id)"
        allowed: tuple[JobStatus, ...] = ()
        if expected_status is not None:
            allowed = expected_status if isinstance(expected_status, tuple) else (expected_status,)
            names["#status"] = "status"
            marks = []
            for i, status in enumerate(allowed):
                values[f":s{i}"] = {"S": JobStatus(status).value}
                marks.append(f":s{i}")
            condition += f" AND #status IN ({', '.join(marks)})"
        request: dict[str, Any] = {
            "TableName": self.table, "Key": {"job_id": {"S": job_id}}, "UpdateExpression": expression,
            "ConditionExpression": condition, "ExpressionAttributeNames": names, "ReturnValues": "ALL_NEW"}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            with self._errors(f"updating job {job_id}"):
                answer = self._db.update_item(**request)
        except ConflictError:
            current = self.get(job_id)
            if current is None:
                raise NotFound(f"job {job_id} does not exist") from None
            raise ConflictError(f"job {job_id} is {current.status.value}, expected "
                                f"{'/'.join(JobStatus(s).value for s in allowed)}") from None
        return Job.model_validate(deserialize_item(answer["Attributes"]))

    # listings -------------------------------------------------------------------------------------------

    def _query_status(self, index: str, sort_key: str, status: JobStatus, limit: int,
                      start: dict[str, Any] | None, owner: str | None = None
                      ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` raw items of one status, newest first, and whether more remain. ``owner`` is a filter
        on the status index (DynamoDB applies it after reading, so the loop reads on until the page is full)."""
        items: list[dict[str, Any]] = []
        while len(items) < limit:
            request: dict[str, Any] = {
                "TableName": self.table, "IndexName": index, "KeyConditionExpression": "#status = :status",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":status": {"S": status.value}},
                "ScanIndexForward": False, "Limit": limit - len(items)}
            if owner is not None:
                request["FilterExpression"] = "#owner = :owner"
                request["ExpressionAttributeNames"]["#owner"] = "owner"
                request["ExpressionAttributeValues"][":owner"] = {"S": owner}
            if start:
                request["ExclusiveStartKey"] = start
            with self._errors(f"listing {status.value} jobs (index {index})"):
                answer = self._db.query(**request)
            items.extend(answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if not start:
                return items, False
        return items, True

    def list_by_status(self, status: JobStatus, limit: int = 20, cursor: str | None = None, *,
                       owner: str | None = None) -> Page:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        status = JobStatus(status)
        index, sort_key = ((COMPLETED_INDEX, "completed_at") if status == JobStatus.COMPLETED
                           else (CREATED_INDEX, "created_at"))
        key_names = {"job_id", "status", sort_key}
        start = decode_cursor(cursor, key_names) if cursor else None
        # One item more than the page tells whether there is a next page without an empty last page.
        items, _ = self._query_status(index, sort_key, status, limit + 1, start, owner)
        page = items[:limit]
        next_cursor = None
        if len(items) > limit:
            last = page[-1]
            next_cursor = encode_cursor({name: last[name] for name in key_names})
        return Page(items=[Job.model_validate(deserialize_item(item)) for item in page], next_cursor=next_cursor)

    def list_completed(self, limit: int = 20, cursor: str | None = None, *, owner: str | None = None) -> Page:
        return self.list_by_status(JobStatus.COMPLETED, limit, cursor, owner=owner)

    def list_in_progress(self, limit: int = 100, *, owner: str | None = None) -> list[Job]:
        per_status = [self._query_status(CREATED_INDEX, "created_at", status, limit, None, owner)[0]
                      for status in IN_PROGRESS_STATUSES]
        # Each list is newest first already: a k-way merge keeps that order.
        merged = heapq.merge(*per_status, key=lambda item: item["created_at"]["S"], reverse=True)
        return [Job.model_validate(deserialize_item(item)) for _, item in zip(range(limit), merged, strict=False)]


    def ids_starting_with(self, prefix: str, limit: int = 10) -> list[str]:
        """A scan (the table is keyed by job id alone, with no sort key to range over): fine for a person
        typing a short id now and then, never on a request path."""
        found: list[str] = []
        request: dict[str, Any] = {"TableName": self.table, "ProjectionExpression": "job_id",
                                   "FilterExpression": "begins_with(job_id, :prefix)",
                                   "ExpressionAttributeValues": {":prefix": {"S": prefix}}}
        with self._errors(f"looking up job ids starting with {prefix}"):
            for page in self.clients.client("dynamodb").get_paginator("scan").paginate(**request):
                found += [item["job_id"]["S"] for item in page.get("Items", [])]
        return sorted(found)[:limit]


# --- segment completions ----------------------------------------------------------------------------------


class DynamoSegmentCompletionStore(SegmentCompletionStore):
    """Partition key ``job_id``, sort key ``segment_index`` (number): a query returns them in index order."""

    def __init__(self, clients: AwsClients, table: str):
        self.clients, self.table = clients, table

    def _errors(self, what: str):
        return aws_errors(self.clients, "dynamodb", f"{what} (table {self.table})")

    def put(self, completion: SegmentCompletion) -> None:
        with self._errors(f"recording segment {completion.segment_index} of job {completion.job_id}"):
            self.clients.client("dynamodb").put_item(
                TableName=self.table, Item=serialize_item(completion.model_dump(mode="python")))

    def _query(self, job_id: str, **extra: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": "job_id = :job",
                                   "ExpressionAttributeValues": {":job": {"S": job_id}},
                                   "ConsistentRead": True, **extra}
        while True:
            with self._errors(f"reading the segment completions of job {job_id}"):
                answer = self.clients.client("dynamodb").query(**request)
            items.extend(answer.get("Items", []))
            if not answer.get("LastEvaluatedKey"):
                return items
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def get(self, job_id: str, segment_index: int) -> SegmentCompletion | None:
        with self._errors(f"reading segment {segment_index} of job {job_id}"):
            answer = self.clients.client("dynamodb").get_item(
                TableName=self.table, ConsistentRead=True,
                Key={"job_id": {"S": job_id}, "segment_index": {"N": str(segment_index)}})
        item = answer.get("Item")
        return SegmentCompletion.model_validate(deserialize_item(item)) if item else None

    def query_by_job(self, job_id: str) -> list[SegmentCompletion]:
        return [SegmentCompletion.model_validate(deserialize_item(item)) for item in self._query(job_id)]

    def delete(self, job_id: str, segment_index: int) -> None:
        with self._errors(f"forgetting segment {segment_index} of job {job_id}"):
            self.clients.client("dynamodb").delete_item(
                TableName=self.table, Key={"job_id": {"S": job_id}, "segment_index": {"N": str(segment_index)}})

    def delete_job(self, job_id: str) -> None:
        keys = self._query(job_id, ProjectionExpression="job_id, segment_index")
        db = self.clients.client("dynamodb")
        for start in range(0, len(keys), 25):  # BatchWriteItem takes 25 requests at most
            pending = {self.table: [{"DeleteRequest": {"Key": key}} for key in keys[start:start + 25]]}
            for attempt in range(8):
                with self._errors(f"deleting the segment completions of job {job_id}"):
                    answer = db.batch_write_item(RequestItems=pending)
                pending = answer.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))  # throttled: back off, then retry the rest
            else:
                raise ConflictError(f"job {job_id}: DynamoDB kept throttling the deletion of its completions")


# --- reassembly lock and event dedup ------------------------------------------------------------------------


class DynamoReassemblyLock(ReassemblyLock):
    """One item per job; the conditional put is the lock. ``expires_at`` is the table's TTL attribute, but
    DynamoDB deletes expired items lazily (up to days later), so the condition checks the time itself."""

    def __init__(self, clients: AwsClients, table: str):
        self.clients, self.table = clients, table

    def try_acquire(self, name: str, owner: str, ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS, *,
                    replacing: str | None = None) -> bool:
        now = int(time.time())
        condition = "attribute_not_exists(job_id) OR #owner = :owner OR #exp < :now"
        values = {":owner": {"S": owner}, ":now": {"N": str(now)}}
        if replacing is not None:
            condition += " OR #owner = :dead"
            values[":dead"] = {"S": replacing}
        try:
            with aws_errors(self.clients, "dynamodb", f"taking the lock {name} (table {self.table})"):
                self.clients.client("dynamodb").put_item(
                    TableName=self.table,
                    Item=serialize_item({"job_id": name, "owner": owner, "acquired_at": utcnow(),
                                         TTL_ATTRIBUTE: now + ttl_seconds}),
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#owner": "owner", "#exp": TTL_ATTRIBUTE},
                    ExpressionAttributeValues=values)
        except ConflictError:
            return False
        return True

    def release(self, name: str, owner: str) -> None:
        try:
            with aws_errors(self.clients, "dynamodb", f"releasing the lock {name}"):
                self.clients.client("dynamodb").delete_item(
                    TableName=self.table, Key={"job_id": {"S": name}}, ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":owner": {"S": owner}})
        except ConflictError:
            pass  # someone else's lock (ours expired and was taken): not ours to release

    def holder(self, name: str) -> LockHolder | None:
        with aws_errors(self.clients, "dynamodb", f"reading the lock {name} (table {self.table})"):
            answer = self.clients.client("dynamodb").get_item(TableName=self.table, Key={"job_id": {"S": name}},
                                                              ConsistentRead=True)
        item = deserialize_item(answer.get("Item") or {})
        if not item or float(item.get(TTL_ATTRIBUTE, 0)) < time.time():
            return None
        return LockHolder(str(item["owner"]), float(item[TTL_ATTRIBUTE]))


class DynamoEventDedup(EventDedup):
    """Partition key ``event_id``; ``expires_at`` is the TTL attribute (and checked in the condition)."""

    def __init__(self, clients: AwsClients, table: str):
        self.clients, self.table = clients, table

    def claim(self, event_id: str, job_id: str, ttl_seconds: int = 7 * 24 * 3600) -> bool:
        now = int(time.time())
        try:
            with aws_errors(self.clients, "dynamodb", f"recording event {event_id} (table {self.table})"):
                self.clients.client("dynamodb").put_item(
                    TableName=self.table,
                    Item=serialize_item({"event_id": event_id, "job_id": job_id, "claimed_at": utcnow(),
                                         TTL_ATTRIBUTE: now + ttl_seconds}),
                    ConditionExpression="attribute_not_exists(event_id) OR #exp < :now",
                    ExpressionAttributeNames={"#exp": TTL_ATTRIBUTE},
                    ExpressionAttributeValues={":now": {"N": str(now)}})
        except ConflictError:
            return False
        return True

    def forget(self, event_id: str) -> None:
        """Let the event start a run again (replaying the dead-letter queue)."""
        with aws_errors(self.clients, "dynamodb", f"forgetting event {event_id} (table {self.table})"):
            self.clients.client("dynamodb").delete_item(TableName=self.table, Key={"event_id": {"S": event_id}})
