"""The interfaces the steps run against. Adapters: ``adapters/local.py`` (SQLite + a folder, the embedded
default) and ``adapters/aws.py`` (DynamoDB, S3, SQS). The steps, runner, UI and CLI only see these."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from stereo_spot.models import Job, JobStatus, Page, SegmentCompletion


class StoreError(RuntimeError):
    """A store could not be reached or answered with an error (the message says which and why)."""


class ConflictError(StoreError):
    """A conditional write lost: the record was not in the expected state."""


class NotFound(StoreError):
    """The job or object does not exist."""


class QuotaExceeded(ConflictError):
    """A new job was not written: its owner already has ``limit`` jobs in progress."""

    def __init__(self, owner: str, limit: int):
        super().__init__(f"{owner} already has {limit} jobs in progress, the most allowed at once")
        self.owner, self.limit = owner, limit


class JobStore(ABC):
    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def put(self, job: Job, *, if_absent: bool = False) -> None:
        """Write the whole record. ``if_absent`` raises ConflictError when the job exists already."""

    @abstractmethod
    def create(self, job: Job, *, max_in_progress: int | None = None) -> None:
        """Write a new job; ConflictError when the id exists. With ``max_in_progress`` and an owner, the owner's
        jobs in progress are counted in the same atomic write: QuotaExceeded (nothing written) when there are
        that many already, so concurrent requests (several tabs) cannot pass the limit together."""

    @abstractmethod
    def update(self, job_id: str, *, expected_status: JobStatus | tuple[JobStatus, ...] | None = None,
               **fields: Any) -> Job:
        """Set some fields in one write and return the new record. Raises NotFound for an unknown job and
        ConflictError when ``expected_status`` is given and the stored status is not (one of) it."""

    @abstractmethod
    def list_completed(self, limit: int = 20, cursor: str | None = None, *, owner: str | None = None) -> Page:
        """Completed jobs, newest ``completed_at`` first, one page at a time. With ``owner``: only that
        owner's jobs (every listing takes it, so the app never filters a page after the fact)."""

    @abstractmethod
    def list_in_progress(self, limit: int = 100, *, owner: str | None = None) -> list[Job]:
        """Jobs not yet completed, failed or deleted, newest first."""

    def list_by_status(self, status: JobStatus, limit: int = 20, cursor: str | None = None, *,
                       owner: str | None = None) -> Page:
        """Jobs in one status, newest first. Adapters override this with an indexed query."""
        raise NotImplementedError

    @abstractmethod
    def ids_starting_with(self, prefix: str, limit: int = 10) -> list[str]:
        """Up to ``limit`` job ids that start with ``prefix`` (a short id typed by a person), sorted."""


class SegmentCompletionStore(ABC):
    @abstractmethod
    def put(self, completion: SegmentCompletion) -> None:
        """Insert or overwrite (job_id, segment_index): re-running a segment writes the same record."""

    @abstractmethod
    def get(self, job_id: str, segment_index: int) -> SegmentCompletion | None:
        """One segment's completion (a point read: convert checks its own segment without reading the job's)."""

    @abstractmethod
    def query_by_job(self, job_id: str) -> list[SegmentCompletion]:
        """All completions of a job ordered by segment index."""

    @abstractmethod
    def delete(self, job_id: str, segment_index: int) -> None:
        """Forget one segment's completion (its stored file failed verification): the next run converts it."""

    @abstractmethod
    def delete_job(self, job_id: str) -> None: ...


# Short, and renewed by the holder while concat runs: a concat killed outright (SIGKILL, a reclaimed node) frees
# the lock within this time, so the next run can finish the job.
REASSEMBLY_LOCK_TTL_SECONDS = 30


@dataclass(frozen=True)
class LockHolder:
    owner: str
    expires_at: float  # seconds since the epoch


class ReassemblyLock(ABC):
    """Single-winner leases with an owner and an expiry (the ReassemblyTriggered table). ``name`` is the job id
    for concat's lock, and ``stereo_spot.leases`` names the job's other leases (chunking, each segment's
    conversion) after the job id, so one table holds them all."""

    @abstractmethod
    def try_acquire(self, name: str, owner: str, ttl_seconds: int = REASSEMBLY_LOCK_TTL_SECONDS, *,
                    replacing: str | None = None) -> bool:
        """True for exactly one caller per name until the entry expires or is released. The same owner
        acquiring again gets True and a new expiry (a retried concat pod keeps its claim; the holder renews).
        ``replacing``: also take it from that owner, known to be dead, before its entry expires."""

    @abstractmethod
    def release(self, name: str, owner: str) -> None: ...

    @abstractmethod
    def holder(self, name: str) -> LockHolder | None:
        """Who holds the lease now (None where nobody does or the entry expired)."""


class EventDedup(ABC):
    """Remembers which uploads already started a run (S3 → SQS delivers at least once)."""

    @abstractmethod
    def claim(self, event_id: str, job_id: str, ttl_seconds: int = 7 * 24 * 3600) -> bool:
        """True the first time an event id is claimed, False for every later delivery."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None


class ObjectStorage(ABC):
    """Buckets of files. Uploads and downloads stream: a multi-GB file is never held in memory."""

    @abstractmethod
    def upload_file(self, bucket: str, key: str, path: Path | str, content_type: str | None = None) -> None: ...

    @abstractmethod
    def upload_fileobj(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str | None = None) -> int:
        """Stream a readable file object to the key; return the number of bytes written."""

    @abstractmethod
    def download_file(self, bucket: str, key: str, path: Path | str) -> None:
        """Raises NotFound when the object does not exist."""

    @abstractmethod
    def exists(self, bucket: str, key: str) -> bool: ...

    @abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Deleting a missing object is not an error."""

    @abstractmethod
    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """For operators (runbooks, cleanup); the pipeline itself never lists a bucket."""

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        """Like ``list_keys`` with each object's size and time (``stereo-spot reconcile``). Adapters whose
        listing carries them override this; the default asks for each object."""
        found = (self.head(bucket, key) for key in self.list_keys(bucket, prefix))
        return [info for info in found if info is not None]

    @abstractmethod
    def presign_upload(self, bucket: str, key: str, expires_seconds: int = 3600) -> str: ...

    @abstractmethod
    def presign_download(self, bucket: str, key: str, expires_seconds: int = 3600,
                         download_name: str | None = None) -> str: ...

    def read_bytes(self, bucket: str, key: str) -> bytes:
        """Small objects only (reports, JSON)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object"
            self.download_file(bucket, key, path)
            return path.read_bytes()

    def write_bytes(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> None:
        import io

        self.upload_fileobj(bucket, key, io.BytesIO(data), content_type=content_type)


@dataclass
class QueueMessage:
    message_id: str
    body: str
    receipt_handle: str
    attributes: dict[str, str] = field(default_factory=dict)


class QueueSender(ABC):
    @abstractmethod
    def send(self, body: str) -> str:
        """Return the message id."""


class QueueReceiver(ABC):
    @abstractmethod
    def receive(self, max_messages: int = 1, wait_seconds: int = 20,
                visibility_timeout: int | None = None) -> list[QueueMessage]: ...

    @abstractmethod
    def delete(self, message: QueueMessage) -> None: ...

    @abstractmethod
    def extend_visibility(self, message: QueueMessage, seconds: int) -> None: ...

    def release(self, message: QueueMessage) -> None:
        """Make the message visible again at once, for another worker."""
        self.extend_visibility(message, 0)


class OperatorLinks(ABC):
    """Links for engineers: the run in the Argo/Kubeflow UI and its logs. None where not configured."""

    @abstractmethod
    def run_link(self, job_id: str) -> str | None: ...

    @abstractmethod
    def logs_link(self, job_id: str) -> str | None: ...


@dataclass
class Backend:
    """Everything a step needs from the outside world, bundled so it can be passed around as one thing."""

    jobs: JobStore
    completions: SegmentCompletionStore
    reassembly: ReassemblyLock
    objects: ObjectStorage
    input_bucket: str
    output_bucket: str
    dedup: EventDedup | None = None
    links: OperatorLinks | None = None
    name: str = "local"
    # Rebuilds an equivalent Backend in another process (the runner's pool): a picklable callable such as
    # functools.partial(local_backend, home, ...). Connections themselves never cross a process boundary.
    factory: Callable[[], Backend] | None = field(default=None, repr=False)
