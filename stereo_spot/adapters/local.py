"""The embedded default: SQLite for records, a folder for objects, both under ``STEREO_SPOT_HOME``.

SQLite runs in WAL mode with a busy timeout and every write in ``BEGIN IMMEDIATE``, so the runner's worker
processes, the CLI and the UI can use one database at once. A connection is opened per operation: cheap next to
the work a step does, and safe across threads (Streamlit) and forked processes (the runner's pool).

A "presigned URL" on local storage is a ``file://`` URL of the object's path: there is no server to sign for, and
the folder's own permissions are the access control. The UI streams local objects itself instead of linking them.
"""

from __future__ import annotations

import base64
import errno
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
    LockHolder,
    NotFound,
    ObjectInfo,
    ObjectStorage,
    QueueMessage,
    QueueReceiver,
    QueueSender,
    QuotaExceeded,
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


#: How long an operation waits for another process's write to the job database. The project's own writes last
#: milliseconds; a lock held this long is something else (a stopped process, a `sqlite3` shell in a transaction),
#: and the command says so instead of waiting on.
BUSY_TIMEOUT_SECONDS = 30.0


def _locked(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def database_holders(path: Path) -> list[str]:
    """Other processes on this machine with the database (or its WAL) open, as ``pid N (command)``: read from
    ``/proc``, so empty elsewhere, or where they belong to another user."""
    path = Path(path).resolve()
    names = {str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"}
    found = []
    for fd_dir in sorted(Path("/proc").glob("[0-9]*/fd")):
        pid = int(fd_dir.parent.name)
        if pid == os.getpid():
            continue
        try:
            if not any(os.readlink(fd_dir / fd) in names for fd in os.listdir(fd_dir)):
                continue
            command = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"pid {pid} ({' '.join(command.split())[:80]})")
    return found


class SQLiteDatabase:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot open the job database") from exc
        finally:
            conn.close()

    def _error(self, exc: sqlite3.Error, what: str) -> StoreError:
        if "malformed" in str(exc) or "not a database" in str(exc):
            return StoreError(f"{what} {self.path}: {exc}: the job records are damaged; move the file aside and "
                              "`stereo-spot gc --orphans --dry-run` lists the job folders they leave behind")
        if not _locked(exc):
            return StoreError(f"{what} {self.path}: {exc}")
        holders = database_holders(self.path)
        held = f"held by {', '.join(holders)}" if holders else "held by another process"
        return StoreError(f"the job database {self.path} is locked, {held}, and stayed locked for "
                          f"{BUSY_TIMEOUT_SECONDS:g} s: let that finish or stop it, then run the command again")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot open the job database") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc, "job database") from exc
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

    def create(self, job: Job, *, max_in_progress: int | None = None) -> None:
        try:
            # BEGIN IMMEDIATE: one writer at a time, so the count and the insert are one step.
            with self.db.transaction() as db:
                if max_in_progress and job.owner is not None:
                    marks = ",".join("?" for _ in IN_PROGRESS_STATUSES)
                    (count,) = db.execute(
                        f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks}) AND json_extract(data, '$.owner') = ?",
                        [s.value for s in IN_PROGRESS_STATUSES] + [job.owner]).fetchone()
                    if count >= max_in_progress:
                        raise QuotaExceeded(job.owner, max_in_progress)
                db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)", self._row(job))
        except QuotaExceeded:
            raise
        except StoreError as exc:
            if "UNIQUE" in str(exc):
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

    def delete(self, job_id: str, segment_index: int) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM segment_completions WHERE job_id = ? AND segment_index = ?",
                       (job_id, segment_index))

    def delete_job(self, job_id: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM segment_completions WHERE job_id = ?", (job_id,))


class SQLiteReassemblyLock(ReassemblyLock):
    def __init__(self, db: SQLiteDatabase):
        self.db = db

    def try_acquire(self, name: str, owner: str, ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS, *,
                    replacing: str | None = None) -> bool:
        now = time.time()
        with self.db.transaction() as db:  # BEGIN IMMEDIATE: the read and the write are one conditional write
            row = db.execute("SELECT owner, expires_at FROM reassembly_triggered WHERE job_id = ?",
                             (name,)).fetchone()
            if row and row[0] not in (owner, replacing) and row[1] > now:
                return False
            db.execute("INSERT OR REPLACE INTO reassembly_triggered VALUES (?, ?, ?)",
                       (name, owner, now + ttl_seconds))
        return True

    def release(self, name: str, owner: str) -> None:
        with self.db.transaction() as db:
            db.execute("DELETE FROM reassembly_triggered WHERE job_id = ? AND owner = ?", (name, owner))

    def holder(self, name: str) -> LockHolder | None:
        with self.db.transaction() as db:
            row = db.execute("SELECT owner, expires_at FROM reassembly_triggered WHERE job_id = ?",
                             (name,)).fetchone()
        return LockHolder(row[0], row[1]) if row and row[1] > time.time() else None


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
    sees half an object and a re-run replaces an object atomically.

    An object can also be a reference to a file elsewhere on this machine (``reference_file``): the user's own
    source, which the command line does not copy. It is kept beside the key as a small hidden record
    (``.{name}.ref``) and read through ``stereo_spot.source_refs``, which checks the file is still the one
    recorded. ``head`` and ``list_objects`` give what the store itself holds on disk: for a reference, the
    record's few bytes, not the film's."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ValueError(f"invalid bucket name {bucket!r}")
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(bucket, *parts)

    @staticmethod
    def _ref_path(target: Path) -> Path:
        return target.with_name(f".{target.name}.ref")

    def _stored(self, bucket: str, key: str) -> Path | None:
        """The file that holds the object in the store: its content, or its reference record."""
        target = self._path(bucket, key)
        if target.is_file():
            return target
        ref = self._ref_path(target)
        return ref if ref.is_file() else None

    def _write(self, bucket: str, key: str, copy) -> int:
        target = self._path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            with open(tmp, "wb") as out:
                copy(out)
                size = out.tell()
            os.replace(tmp, target)
            self._ref_path(target).unlink(missing_ok=True)  # content replaces an earlier reference
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def upload_file(self, bucket: str, key: str, path: Path | str, content_type: str | None = None) -> None:
        with open(path, "rb") as src:
            self._write(bucket, key, lambda out: shutil.copyfileobj(src, out, 8 * 1024 * 1024))

    def upload_fileobj(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str | None = None) -> int:
        return self._write(bucket, key, lambda out: shutil.copyfileobj(fileobj, out, 8 * 1024 * 1024))

    def reference_file(self, bucket: str, key: str, path: Path | str) -> int:
        """Make the object ``path`` itself, by reference (no copy); returns the file's size."""
        from stereo_spot import source_refs

        target = self._path(bucket, key)
        ref = source_refs.reference(path)
        source_refs.write(self._ref_path(target), ref)
        target.unlink(missing_ok=True)  # a reference replaces earlier content
        return ref.size

    def is_reference(self, bucket: str, key: str) -> bool:
        target = self._path(bucket, key)
        return not target.is_file() and self._ref_path(target).is_file()

    def download_file(self, bucket: str, key: str, path: Path | str) -> None:
        source = self.local_path(bucket, key)
        if not source.is_file():
            raise NotFound(f"object {bucket}/{key} does not exist")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)

    def local_path(self, bucket: str, key: str) -> Path:
        """Where the object's content lives, for readers on this machine that can skip a copy: the user's own
        file for a reference (checked first: ``SourceChanged`` naming it when it is gone or changed)."""
        from stereo_spot import source_refs

        target = self._path(bucket, key)
        ref = self._ref_path(target)
        if not target.is_file() and ref.is_file():
            return source_refs.verified_path(source_refs.read(ref))
        return target

    def exists(self, bucket: str, key: str) -> bool:
        return self._stored(bucket, key) is not None

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        path = self._stored(bucket, key)
        if path is None:
            return None
        stat = path.stat()
        return ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime).astimezone())

    def delete(self, bucket: str, key: str) -> None:
        target = self._path(bucket, key)
        target.unlink(missing_ok=True)
        self._ref_path(target).unlink(missing_ok=True)

    def move_out(self, bucket: str, key: str, path: Path | str) -> bool:
        """Move the object's content to ``path`` (a rename: the store keeps no copy). False where ``path`` is
        on another filesystem; the object is then left as it is."""
        source = self._path(bucket, key)
        if not source.is_file():
            raise NotFound(f"object {bucket}/{key} does not exist")
        try:
            os.replace(source, path)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        return True

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        base = self.root / bucket
        if not base.is_dir():
            return []
        found = set()
        for path in base.rglob("*"):
            name = path.name
            if name.startswith(".") and name.endswith(".ref") and len(name) > 5:
                path = path.with_name(name[1:-4])  # a reference stands for its key
            elif name.startswith("."):
                continue  # a write in progress (or one a killed process left: ``gc`` removes those)
            found.add(path.relative_to(base).as_posix())
        return sorted(k for k in found if k.startswith(prefix) and self._stored(bucket, k) is not None)

    def scraps(self, bucket: str) -> list[Path]:
        """Partial writes (``.{name}.{id}.part``) a killed process left behind."""
        base = self.root / bucket
        return sorted(p for p in base.rglob(".*.part") if p.is_file()) if base.is_dir() else []

    def presign_upload(self, bucket: str, key: str, expires_seconds: int = 3600) -> str:
        return self._path(bucket, key).resolve().as_uri()

    def presign_download(self, bucket: str, key: str, expires_seconds: int = 3600,
                         download_name: str | None = None) -> str:
        return self.local_path(bucket, key).resolve().as_uri()


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
