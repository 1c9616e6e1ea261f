"""A source kept by reference: the store records where the user's own file is, how big it was, when it was
last changed and its SHA-256, instead of holding a second copy of a multi-GB film.

Reading a referenced source checks it first. A different size, or a different checksum, means the file
changed since the job started: segments already converted would not join with the rest, so the run stops with
one line naming the user's file. A different time alone (``touch``, a copy that kept the bytes) is settled by the
checksum. The checksum of a (path, size, time) is computed once per process: chunking and joining in one run
read the source twice but hash it once, and a resume (a new process) verifies it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from stereo_spot.errors import UserError


class SourceChanged(UserError):
    """The user's file behind a referenced source is missing or is no longer the file the job started from."""


@dataclass(frozen=True)
class SourceRef:
    path: str
    size: int
    mtime_ns: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SourceRef:
        return cls(**json.loads(text))


# (path, size, mtime_ns) -> sha256, for files this process has hashed.
_verified: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def reference(path: Path | str) -> SourceRef:
    """The record of ``path`` as it is now."""
    path = Path(path).resolve()
    stat = path.stat()
    digest = sha256_of(path)
    _verified[(str(path), stat.st_size, stat.st_mtime_ns)] = digest
    return SourceRef(str(path), stat.st_size, stat.st_mtime_ns, digest)


def verified_path(ref: SourceRef) -> Path:
    """The user's file, after checking it is still the one recorded; SourceChanged, naming it, otherwise."""
    path = Path(ref.path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SourceChanged(f"the source {path} is gone (moved or deleted since the job started): put it back "
                            "and run the command again, or convert it anew") from None
    except OSError as exc:
        raise SourceChanged(f"the source {path} cannot be read: {exc.strerror or exc}") from None
    if not path.is_file():
        raise SourceChanged(f"the source {path} is no longer a file")
    if stat.st_size != ref.size:
        raise SourceChanged(f"the source {path} changed since the job started ({ref.size} bytes then, "
                            f"{stat.st_size} now): convert it anew")
    seen = (str(path), stat.st_size, stat.st_mtime_ns)
    digest = _verified.get(seen)
    if digest is None:
        digest = _verified[seen] = sha256_of(path)
    if digest != ref.sha256:
        raise SourceChanged(f"the source {path} changed since the job started (its content differs, same size): "
                            "convert it anew")
    return path


def write(path: Path, ref: SourceRef) -> int:
    """Write the record atomically; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ref.to_json().encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def read(path: Path) -> SourceRef:
    return SourceRef.from_json(path.read_text())
