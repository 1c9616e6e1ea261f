"""The staging area for browser uploads: files arrive here in chunks, are checked, then go to object storage.

Streamlit's own ``st.file_uploader`` keeps every uploaded file whole in the server's memory (its upload handler
reads the request body into one ``bytes``), which a multi-GB video must never be. So the app has its own upload
route (``ui/routes.py``) that writes the request body to disk as it arrives, and the page works from the file on
disk: probe it, then create the job and store the source. A rejected upload leaves no job behind because nothing
is created before the file has been checked.

Layout: ``{root}/{token}/upload`` (a fixed name: the browser's file name is only recorded, so no name can collide
with the record) plus ``{root}/{token}/status.json`` written last (atomically), so a reader sees either a finished
upload or none. A token is a random UUID the page hands to its upload widget, issued to the signed-in user; the
route accepts a token only from the user it was issued to, so nobody else can drop files into that slot.

Room: one user's staged uploads together stay under ``MAX_STAGING_BYTES_PER_USER`` and everyone's under
``MAX_STAGING_BYTES``, counted exactly (every chunk is reserved in one shared ledger under a lock before it is
written), so one user's concurrent uploads cannot fill the area and refuse another's: with
``MAX_STAGING_BYTES`` at least users × ``MAX_STAGING_BYTES_PER_USER``, an upload is only ever refused for its own
user's bytes. An upload is also refused (before and while it streams) when it would leave less than
``MIN_FREE_BYTES`` free on the disk. An upload nobody has touched for ``UPLOAD_IDLE_SECONDS`` (the page touches
its upload on every interaction) is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path

from stereo_spot.errors import UserError
from stereo_spot.units import format_bytes

STATUS_FILE = "status.json"
UPLOAD_FILE = "upload"
# Staged files nobody converted (page closed after uploading) are removed after this long without a touch
# (UPLOAD_IDLE_SECONDS sets it for the app).
STALE_SECONDS = 15 * 60
# Bytes gathered from the request before one disk write: bounded memory, few system calls.
WRITE_BUFFER_BYTES = 4 * 1024 * 1024
# How often (in bytes received) an upload re-checks the free disk space (the staging caps: every chunk).
ROOM_CHECK_BYTES = 64 * 1024 * 1024
_TOKEN = re.compile(r"^[0-9a-f]{32}$")


class UploadError(UserError):
    """An upload that cannot be used; the message says why in one line."""


class UploadTooLarge(UploadError):
    pass


class NoRoom(UploadTooLarge):
    """The staging area (or the disk under it) has no room for this upload now."""


class SlotTaken(UploadError):
    """The token already holds an upload (or one is arriving): a token takes one file, so the file that was
    checked is the file that becomes the job."""


SLOT_TAKEN_MESSAGE = ("this upload form already holds a file; choose \"Choose another file\" on the page to "
                      "upload a different one")


def too_large_message(name: str, size: int | None, limit: int) -> str:
    shown = f" is {format_bytes(size)}" if size is not None else " is too large"
    return (f"{name}{shown}; the upload limit is {format_bytes(limit)} "
            "(MAX_UPLOAD_BYTES). Trim the video or raise the limit.")


def safe_file_name(name: str) -> str:
    """The last path component of a browser-supplied name, reduced to characters safe on any file system."""
    base = re.split(r"[\\/]", name or "")[-1]
    cleaned = re.sub(r"[^\w.\- ]+", "_", base, flags=re.UNICODE).strip(" .")
    return cleaned[:150] or "upload"


@dataclass(frozen=True)
class StagedUpload:
    token: str
    name: str  # the file name as the user chose it (made safe)
    path: Path | None  # None when the upload was rejected
    size: int
    error: str | None = None
    too_large: bool = False  # rejected for its size (the route answers 413)

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None


class StagingArea:
    def __init__(self, root: Path | str, max_bytes: int, *, max_total_bytes: int | None = None,
                 max_user_bytes: int | None = None, min_free_bytes: int = 0, idle_seconds: float = STALE_SECONDS):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.max_total_bytes = max_total_bytes
        self.max_user_bytes = max_user_bytes
        self.min_free_bytes = int(min_free_bytes)
        self.idle_seconds = idle_seconds
        self.ledger = _ledger_for(self.root)

    # --- tokens -----------------------------------------------------------------------------------------

    def new_token(self, owner: str = "local") -> str:
        token = uuid.uuid4().hex
        _ISSUED.add(token, owner)
        return token

    @staticmethod
    def is_issued(token: str, owner: str = "local") -> bool:
        return _ISSUED.owner(token) == owner

    # --- room -------------------------------------------------------------------------------------------

    def staged_bytes(self, owner: str | None = None) -> int:
        """Bytes staged (finished and in flight), everyone's or one owner's."""
        return self.ledger.total(owner)

    def reserve(self, token: str, size: int) -> None:
        """Count ``size`` more bytes for this upload, or NoRoom (nothing counted) when they would pass the
        user's cap or the shared one. The user's cap is checked first, so it is the one named when both are."""
        owner = _ISSUED.owner(token) or ""
        self.ledger.reserve(token, owner, size, self.max_user_bytes, self.max_total_bytes)

    def check_disk(self, size: int) -> None:
        """NoRoom when ``size`` more bytes would leave less than MIN_FREE_BYTES free on the disk."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free - size < self.min_free_bytes:
            raise NoRoom(f"the server's disk has {format_bytes(free)} free, too little for this upload "
                         f"(MIN_FREE_BYTES keeps {format_bytes(self.min_free_bytes)} free); try again later")

    def _dir(self, token: str) -> Path:
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise UploadError("invalid upload token; reload the page and choose the file again")
        return self.root / token

    # --- receiving --------------------------------------------------------------------------------------

    def receive(self, token: str, name: str, chunks: Iterable[bytes], declared_size: int | None = None
                ) -> StagedUpload:
        """Write ``chunks`` to the staging area; the synchronous twin of :meth:`receive_async`."""
        try:
            writer = _Writer(self, token, name, declared_size)
        except SlotTaken as exc:
            return StagedUpload(token, safe_file_name(name), None, 0, str(exc))
        except UploadTooLarge as exc:
            return self.reject(token, name, str(exc), too_large=True)
        try:
            for chunk in chunks:
                writer.add(chunk)
        except UploadError as exc:
            return writer.reject(str(exc), too_large=isinstance(exc, UploadTooLarge))
        except BaseException:
            writer.abort()
            raise
        return writer.finish()

    async def receive_async(self, token: str, name: str, chunks: AsyncIterable[bytes],
                            declared_size: int | None = None) -> StagedUpload:
        """Stream a request body to disk; stop at the size limit. Disk writes run in a worker thread so a
        large upload does not stall the server's event loop (other users' pages)."""
        import anyio.to_thread

        try:
            writer = _Writer(self, token, name, declared_size)
        except SlotTaken as exc:
            return StagedUpload(token, safe_file_name(name), None, 0, str(exc))
        except UploadTooLarge as exc:
            return self.reject(token, name, str(exc), too_large=True)
        try:
            async for chunk in chunks:
                if writer.add_buffered(chunk):
                    await anyio.to_thread.run_sync(writer.flush)
            await anyio.to_thread.run_sync(writer.flush)
        except UploadError as exc:
            return writer.reject(str(exc), too_large=isinstance(exc, UploadTooLarge))
        except BaseException:
            writer.abort()
            raise
        return await anyio.to_thread.run_sync(writer.finish)

    def reject(self, token: str, name: str, message: str, *, too_large: bool = False) -> StagedUpload:
        """Record why an upload was refused (e.g. too large before a byte was sent), for the page to show."""
        directory = self._dir(token)
        shutil.rmtree(directory, ignore_errors=True)
        self.ledger.release(token)
        return self._write_status(StagedUpload(token, safe_file_name(name), None, 0, message, too_large))

    def _write_status(self, upload: StagedUpload) -> StagedUpload:
        directory = self._dir(upload.token)
        directory.mkdir(parents=True, exist_ok=True)
        status = {"name": upload.name, "size": upload.size, "error": upload.error,
                  "too_large": upload.too_large, "file": UPLOAD_FILE if upload.path else None}
        tmp = directory / f".{STATUS_FILE}.part"
        tmp.write_text(json.dumps(status))
        os.replace(tmp, directory / STATUS_FILE)
        return upload

    # --- reading and cleaning ---------------------------------------------------------------------------

    def get(self, token: str) -> StagedUpload | None:
        """The finished (or rejected) upload for a token; None while nothing has arrived."""
        directory = self._dir(token)
        try:
            status = json.loads((directory / STATUS_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            return StagedUpload(token, "upload", None, 0, "the upload's record is unreadable; choose the file again")
        path = directory / UPLOAD_FILE if status.get("file") else None
        if path is not None and not path.is_file():
            return StagedUpload(token, status.get("name", "upload"), None, 0,
                                "the uploaded file is gone from the staging area; choose it again")
        return StagedUpload(token, status.get("name", "upload"), path, int(status.get("size") or 0),
                            status.get("error"), bool(status.get("too_large")))

    def touch(self, token: str) -> None:
        """Mark an upload as in use (its page is open), so the idle sweep leaves it."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._dir(token))

    def discard(self, token: str) -> None:
        shutil.rmtree(self._dir(token), ignore_errors=True)
        self.ledger.release(token)
        _ISSUED.discard(token)

    def sweep(self, older_than_seconds: float | None = None) -> int:
        """Remove staged uploads last touched longer ago than the limit (UPLOAD_IDLE_SECONDS); return how many.
        An upload still arriving is left alone."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - (self.idle_seconds if older_than_seconds is None else older_than_seconds)
        removed = 0
        for entry in self.root.iterdir():
            try:
                if entry.is_dir() and not self.ledger.in_flight(entry.name) and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
                    self.ledger.release(entry.name)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class _Writer:
    """One upload in flight: a ``.part`` file renamed into place when complete."""

    def __init__(self, area: StagingArea, token: str, name: str, declared_size: int | None):
        self.area, self.token, self.name = area, token, safe_file_name(name)
        self.directory = area._dir(token)
        try:
            # Exclusive: a second upload to the same token (after the page checked the first) is refused, never
            # written over the checked file.
            self.directory.mkdir(parents=True)
        except FileExistsError:
            raise SlotTaken(SLOT_TAKEN_MESSAGE) from None
        if declared_size is not None and declared_size > area.max_bytes:
            # Refuse before a byte is written: the browser said how much it will send.
            raise UploadTooLarge(too_large_message(self.name, declared_size, area.max_bytes))
        area.ledger.begin(token)
        try:
            # The declared size is reserved up front (refused before a byte is written); bytes past it as they come.
            self.reserved = declared_size or 0
            area.reserve(token, self.reserved)
            area.check_disk(self.reserved)
        except BaseException:
            area.ledger.release(token)
            raise
        self.part = self.directory / f".{UPLOAD_FILE}.part"
        self.next_room_check = ROOM_CHECK_BYTES
        self.out = open(self.part, "wb")
        self.size = 0
        self.buffer = bytearray()

    def _count(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.area.max_bytes:
            raise UploadTooLarge(too_large_message(self.name, None, self.area.max_bytes))
        if self.size > self.reserved:  # past the declared size (or none was declared)
            self.area.reserve(self.token, self.size - self.reserved)
            self.reserved = self.size
        if self.size >= self.next_room_check:  # the disk filling from elsewhere
            self.next_room_check = self.size + ROOM_CHECK_BYTES
            self.area.check_disk(self.size)

    def add(self, chunk: bytes) -> None:
        self._count(chunk)
        self.out.write(chunk)

    def add_buffered(self, chunk: bytes) -> bool:
        """Keep the chunk; True when the buffer is full and should be flushed."""
        self._count(chunk)
        self.buffer += chunk
        return len(self.buffer) >= WRITE_BUFFER_BYTES

    def flush(self) -> None:
        if self.buffer:
            self.out.write(self.buffer)
            self.buffer.clear()

    def finish(self) -> StagedUpload:
        self.out.close()
        path = self.directory / UPLOAD_FILE
        os.replace(self.part, path)
        if self.size == 0:
            return self.reject(f"{self.name} is empty (0 bytes); choose a video file")
        self.area.ledger.settle(self.token, self.size)  # a body shorter than declared frees the difference
        return self.area._write_status(StagedUpload(self.token, self.name, path, self.size))

    def abort(self) -> None:
        self.out.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.area.ledger.release(self.token)

    def reject(self, message: str, *, too_large: bool = False) -> StagedUpload:
        self.abort()
        return self.area.reject(self.token, self.name, message, too_large=too_large)


class _IssuedTokens:
    """Tokens handed to upload widgets by this process (pages and the upload route share one interpreter), each
    with the identity it was issued to."""

    def __init__(self, limit: int = 10_000):
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def add(self, token: str, owner: str) -> None:
        with self._lock:
            self._tokens[token] = (time.time(), owner)
            if len(self._tokens) > self._limit:  # forget the oldest: a long-idle page just gets a new token
                for old in sorted(self._tokens, key=lambda t: self._tokens[t][0])[: len(self._tokens) - self._limit]:
                    del self._tokens[old]

    def owner(self, token: str) -> str | None:
        with self._lock:
            entry = self._tokens.get(token)
        return entry[1] if entry else None

    def discard(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)


_ISSUED = _IssuedTokens()


class _Ledger:
    """The bytes staged under one root, per upload and per owner, changed only under one lock: the exact count
    every upload checks its next chunk against (a count of the files on disk taken once per upload let
    concurrent uploads each see the others' as they were when it started)."""

    def __init__(self, root: Path):
        self._lock = threading.Lock()
        self._uploads: dict[str, tuple[str, int]] = {}  # token: (owner, bytes)
        self._owners: dict[str, int] = {}
        self._in_flight: set[str] = set()
        self._total = 0
        # Files left by an earlier run of the app count against the shared cap (no owner is known for them).
        if root.is_dir():
            for entry in root.iterdir():
                size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file()) if entry.is_dir() else 0
                if size:
                    self._add(entry.name, "", size)

    def _add(self, token: str, owner: str, size: int) -> None:
        old_owner, old = self._uploads.get(token, (owner, 0))
        self._uploads[token] = (old_owner, old + size)
        self._owners[old_owner] = self._owners.get(old_owner, 0) + size
        self._total += size

    def total(self, owner: str | None = None) -> int:
        with self._lock:
            return self._total if owner is None else self._owners.get(owner, 0)

    def begin(self, token: str) -> None:
        with self._lock:
            self._in_flight.add(token)

    def in_flight(self, token: str) -> bool:
        with self._lock:
            return token in self._in_flight

    def reserve(self, token: str, owner: str, size: int, user_cap: int | None, total_cap: int | None) -> None:
        with self._lock:
            mine = self._owners.get(owner, 0)
            if user_cap is not None and mine + size > user_cap:
                raise NoRoom(f"you have {format_bytes(mine)} of uploads on the server already, and this one would "
                             f"pass the {format_bytes(user_cap)} one user may stage (MAX_STAGING_BYTES_PER_USER); "
                             "convert or remove one first")
            if total_cap is not None and self._total + size > total_cap:
                raise NoRoom(f"the app is receiving too many uploads right now ({format_bytes(self._total)} "
                             f"staged, limit {format_bytes(total_cap)}, MAX_STAGING_BYTES); try again later")
            self._add(token, owner, size)

    def settle(self, token: str, size: int) -> None:
        """The upload is complete at ``size`` bytes: no longer in flight, counted at its real size."""
        with self._lock:
            self._in_flight.discard(token)
            owner, counted = self._uploads.get(token, ("", 0))
            self._add(token, owner, size - counted)

    def release(self, token: str) -> None:
        with self._lock:
            self._in_flight.discard(token)
            owner, size = self._uploads.pop(token, ("", 0))
            if size:
                self._owners[owner] = self._owners.get(owner, 0) - size
                if not self._owners[owner]:
                    del self._owners[owner]
                self._total -= size


_LEDGERS: dict[Path, _Ledger] = {}
_LEDGERS_LOCK = threading.Lock()


def _ledger_for(root: Path) -> _Ledger:
    """One ledger per staging folder in this process (the pages and the upload route share it)."""
    key = root.resolve()
    with _LEDGERS_LOCK:
        if key not in _LEDGERS:
            _LEDGERS[key] = _Ledger(key)
        return _LEDGERS[key]
