"""The embedded default: SQLite for records, a folder for objects, both under ``STEREO_SPOT_HOME``.

SQLite runs in WAL mode with a busy timeout and every write in ``BEGIN IMMEDIATE``, so the runner's worker
processes, the CLI and the UI can use one database at once. A connection is opened per operation: cheap next to
the work a step does, and safe across threads (Streamlit) and forked processes (the runner's pool).

A "presigned URL" on local storage is a ``file://`` URL of the object's path: there is no server to sign for, and
the folder's own permissions are the access control. The UI streams local objects itself instead of linking them.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from stereo_spot.models import IN_PROGRESS_STATUSES, Job, JobStatus, Page, SegmentCompletion, utcnow
from stereo_spot.ports import (
    REASSEMBLY_LOCK_TTL_SECONDS,
    Backend,
    ConflictError,
    EventDedup,
    JobStore,
    NotFound,
    ObjectInfo,
    ObjectStorage,
    QueueMessage,
    QueueReceiver,
    QueueSender,
    ReassemblyLock,
    SegmentCompletionStore,
    StoreError,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    completed_at TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status_completed ON jobs (status, completed_at DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at DESC);
CREATE TABLE IF NOT EXISTS segment_completions (
    job_id TEXT NOT NULL,
    segment_index INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, segment_index)
);
CREATE TABLE IF NOT EXISTS reassembly_triggered (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS event_dedup (
    event_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queue (
    message_id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at REAL NOT NULL,
    receipt TEXT
);
"""


class SQLiteDatabase:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job database {self.path}: {exc}") from exc
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job database {self.path}: {exc}") from exc
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"job database {self.path}: {exc}") from exc
        finally:
            conn.close()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def _decode_cursor(cursor: str) -> list[str]:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid page cursor {cursor!r}") from exc


class SQLiteJobStore(JobStore):
    def __init__(self, db: SQLiteDatabase):
        self.db = db

    @staticmethod
    def _row(job: Job) -> tuple:
        return (job.job_id, job.status.value, _iso(job.created_at), _iso(job.completed_at),
                job.model_dump_json())

    def get(self, job_id: str) -> Job | None:
        with self.db.transaction() as db:
            row = db.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return Job.model_validate_json(row[0]) if row else None

    def put(self, job: Job, *, if_absent: bool = False) -> None:
        verb = "INSERT" if if_absent else "INSERT OR REPLACE"
        try:
            with self.db.transaction() as db:
                db.execute(f"{verb} INTO jobs VALUES (?, ?, ?, ?, ?)", self._row(job))
        except StoreError as exc:
            if if_absent and "UNIQUE" in str(exc):
                raise ConflictError(f"job {job.job_id} exists already") from exc
            raise

    def update(self, job_id: str, *, expected_status=None, **fields: Any) -> Job:
        with self.db.transaction() as db:
            row = db.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} does not exist")
            job = Job.model_validate_json(row[0])
            if expected_status is not None:
                allowed = expected_status if isinstance(expected_status, tuple) else (expected_status,)
                if job.status not in allowed:
                    raise ConflictError(
                        f"job {job_id} is {job.status.value}, expected {'/'.join(s.value for s in allowed)}")
            job = job.model_copy(update={**fields, "updated_at": utcnow()})
            job = Job.model_validate(job.model_dump())  # re-validate the merged record
            db.execute("UPDATE jobs SET status = ?, created_at = ?, completed_at = ?, data = ? WHERE job_id = ?",
                       (*self._row(job)[1:], job_id))
        return job

    def list_completed(self, limit: int = 20, cursor: str | None = None, *, owner: str | None = None) -> Page:
        return self.list_by_status(JobStatus.COMPLETED, limit, cursor, owner=owner)

    def list_by_status(self, status: JobStatus, limit: int = 20, cursor: str | None = None, *,
                       owner: str | None = None) -> Page:
        order = "completed_at" if status == JobStatus.COMPLETED else "created_at"
        sql = f"SELECT data, {order}, job_id FROM jobs WHERE status = ?"
        args: list[Any] = [status.value]
        if owner is not None:
            sql += " AND json_extract(data, '$.owner') = ?"
            args.append(owner)
        if cursor:
            after_time, after_id = _decode_cursor(cursor)
            sql += f" AND ({order} < ? OR ({order} = ? AND job_id < ?))"
            args += [after_time, after_time, after_id]
        sql += f" ORDER BY {order} DESC, job_id DESC LIMIT ?"
        args.append(limit + 1)
        with self.db.transaction() as db:
            rows = db.execute(sql, args).fetchall()
        items = [Job.model_validate_json(r[0]) for r in rows[:limit]]
        next_cursor = _encode_cursor(rows[limit - 1][1], rows[limit - 1][2]) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    def list_in_progress(self, limit: int = 100, *, owner: str | None = None) -> list[Job]:
        marks = ",".join("?" for _ in IN_PROGRESS_STATUSES)
        mine = " AND json_extract(data, '$.owner') = ?" if owner is not None else ""
        with self.db.transaction() as db:
            rows = db.execute(
                f"SELECT data FROM jobs WHERE status IN ({marks}){mine} ORDER BY created_at DESC LIMIT ?",
                [s.value for s in IN_PROGRESS_STATUSES] + ([owner] if owner is not None else []) + [limit]
            ).fetchall()
        return [Job.model_validate_json(r[0]) for r in rows]


    def ids_starting_with(self, prefix: str, limit: int = 10) -> list[str]:
        # the job id is the primary key: a range on it is an index search, and no LIKE wildcard can sneak in
        with self.db.transaction() as db:
            rows = db.execute("SELECT job_id FROM jobs WHERE job_id >= ? AND job_id < ? ORDER BY job_id LIMIT ?",
                              (prefix, prefix + "\uffff", limit)).fetchall()
        return [r[0] for r in rows]


class SQLiteSegmentCompletionStore(SegmentCompletionStore):
    def __init__(self, db: SQLiteDatabase):
        self.db = db

    def put(self, completion: SegmentCompletion) -> None:
        with self.db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO segment_completions VALUES (?, ?, ?)",
                       (completion.job_id, completion.segment_index, completion.model_dump_json()))

    def get(self, job_id: str, segment_index: int) -> SegmentCompletion | None:
        with self.db.transaction() as db:
            row = db.execute("SELECT data FROM segment_completions WHERE job_id = ? AND segment_index = ?",
                             (job_id, segment_index)).fetchone()
        return SegmentCompletion.model_validate_json(row[0]) if row else None

    def query_by_job(self, job_id: str) -> list[SegmentCompletion]:
        with self.db.transaction() as db:
            rows = db.execute("SELECT data FROM segment_completions WHERE job_id = ? ORDER BY segment_index",
                              (job_id,)).fetchall()
        return [SegmentCompletion.model_validate_json(r[0]) for r in rows]

    def delete_job(self, job_id: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM segment_completions WHERE job_id = ?", (job_id,))


class SQLiteReassemblyLock(ReassemblyLock):
    def __init__(self, db: SQLiteDatabase):
        self.db = db

    def try_acquire(self, job_id: str, owner: str, ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS) -> bool:
        now = time.time()
        with self.db.transaction() as db:
            row = db.execute("SELECT owner, expires_at FROM reassembly_triggered WHERE job_id = ?",
                             (job_id,)).fetchone()
            if row and row[0] != owner and row[1] > now:
                return False
            db.execute("INSERT OR REPLACE INTO reassembly_triggered VALUES (?, ?, ?)",
                       (job_id, owner, now + ttl_seconds))
        return True

    def release(self, job_id: str, owner: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM reassembly_triggered WHERE job_id = ? AND owner = ?", (job_id, owner))


class SQLiteEventDedup(EventDedup):
    def __init__(self, db: SQLiteDatabase):
        self.db = db

    def claim(self, event_id: str, job_id: str, ttl_seconds: int = 7 * 24 * 3600) -> bool:
        now = time.time()
        with self.db.transaction() as db:
            db.execute("DELETE FROM event_dedup WHERE expires_at < ?", (now,))
            cur = db.execute("INSERT OR IGNORE INTO event_dedup VALUES (?, ?, ?)",
                             (event_id, job_id, now + ttl_seconds))
            return cur.rowcount == 1


class SQLiteQueue(QueueSender, QueueReceiver):
    """A small durable queue in the same database, with SQS's visibility-timeout semantics."""

    def __init__(self, db: SQLiteDatabase, name: str = "events", visibility_timeout: int = 300):
        self.db, self.name, self.visibility_timeout = db, name, visibility_timeout

    def send(self, body: str) -> str:
        message_id = str(uuid.uuid4())
        with self.db.transaction() as db:
            db.execute("INSERT INTO queue VALUES (?, ?, ?, ?, NULL)", (message_id, self.name, body, time.time()))
        return message_id

    def receive(self, max_messages: int = 1, wait_seconds: int = 20,
                visibility_timeout: int | None = None) -> list[QueueMessage]:
        deadline = time.monotonic() + wait_seconds
        hide = self.visibility_timeout if visibility_timeout is None else visibility_timeout
        while True:
            now = time.time()
            with self.db.transaction() as db:
                rows = db.execute("SELECT message_id, body FROM queue WHERE queue = ? AND visible_at <= ? "
                                  "ORDER BY visible_at LIMIT ?", (self.name, now, max_messages)).fetchall()
                messages = []
                for message_id, body in rows:
                    receipt = str(uuid.uuid4())
                    db.execute("UPDATE queue SET visible_at = ?, receipt = ? WHERE message_id = ?",
                               (now + hide, receipt, message_id))
                    messages.append(QueueMessage(message_id, body, receipt))
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def delete(self, message: QueueMessage) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM queue WHERE message_id = ? AND receipt = ?",
                       (message.message_id, message.receipt_handle))

    def extend_visibility(self, message: QueueMessage, seconds: int) -> None:
        with self.db.transaction() as db:
            db.execute("UPDATE queue SET visible_at = ? WHERE message_id = ? AND receipt = ?",
                       (time.time() + seconds, message.message_id, message.receipt_handle))


class FolderObjectStorage(ObjectStorage):
    """``{root}/{bucket}/{key}``. Writes go to a temporary name and are renamed into place, so a reader never
    sees half an object and a re-run replaces an object atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ValueError(f"invalid bucket name {bucket!r}")
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(bucket, *parts)

    def _write(self, bucket: str, key: str, copy) -> int:
        target = self._path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            with open(tmp, "wb") as out:
                copy(out)
                size = out.tell()
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def upload_file(self, bucket: str, key: str, path: Path | str, content_type: str | None = None) -> None:
        with open(path, "rb") as src:
            self._write(bucket, key, lambda out: shutil.copyfileobj(src, out, 8 * 1024 * 1024))

    def upload_fileobj(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str | None = None) -> int:
        return self._write(bucket, key, lambda out: shutil.copyfileobj(fileobj, out, 8 * 1024 * 1024))

    def download_file(self, bucket: str, key: str, path: Path | str) -> None:
        source = self._path(bucket, key)
        if not source.is_file():
            raise NotFound(f"object {bucket}/{key} does not exist")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)

    def local_path(self, bucket: str, key: str) -> Path:
        """Where the object lives, for readers on this machine that can skip a copy."""
        return self._path(bucket, key)

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        path = self._path(bucket, key)
        if not path.is_file():
            return None
        stat = path.stat()
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime).astimezone())

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        base = self.root / bucket
        if not base.is_dir():
            return []
        keys = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.rsplit("/", 1)[-1].startswith("."))

    def presign_upload(self, bucket: str, key: str, expires_seconds: int = 3600) -> str:
        return self._path(bucket, key).resolve().as_uri()

    def presign_download(self, bucket: str, key: str, expires_seconds: int = 3600,
                         download_name: str | None = None) -> str:
        return self._path(bucket, key).resolve().as_uri()


def local_backend(home: Path, input_bucket: str = "stereo-spot-input",
                  output_bucket: str = "stereo-spot-output") -> Backend:
    home = Path(home)
    db = SQLiteDatabase(home / "stereo-spot.db")
    return Backend(
        jobs=SQLiteJobStore(db),
        completions=SQLiteSegmentCompletionStore(db),
        reassembly=SQLiteReassemblyLock(db),
        objects=FolderObjectStorage(home / "objects"),
        input_bucket=input_bucket,
        output_bucket=output_bucket,
        dedup=SQLiteEventDedup(db),
        name="local",
        factory=functools.partial(local_backend, home, input_bucket, output_bucket),
    )
