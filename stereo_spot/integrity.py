"""Size and SHA-256 of the files the pipeline stores, recorded when a file is written and checked before it is
used again: a converted segment before the join, the final video before it is delivered.

A record written before checksums existed has neither; then only what it has is checked (presence, and the
size where it is known), so old jobs still resume and deliver.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from stereo_spot.errors import StepError

_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Digest:
    size: int
    sha256: str


def digest(path: Path | str) -> Digest:
    """Size and SHA-256 of a file, read in blocks (a multi-GB video is never held in memory)."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as src:
        while block := src.read(_BLOCK):
            sha.update(block)
            size += len(block)
    return Digest(size, sha.hexdigest())


def mismatch(path: Path | str, size: int | None, sha256: str | None) -> str | None:
    """Why the file at ``path`` is not the one recorded (``size`` bytes, ``sha256``), or None when it is. A
    missing file is a mismatch; a record without a size or checksum checks only what it has."""
    path = Path(path)
    if not path.is_file():
        return "it is missing"
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"it has {actual_size} bytes, {size} were stored"
    if sha256 is not None and digest(path).sha256 != sha256:
        return "its SHA-256 checksum differs from the one recorded when it was stored"
    return None


class SegmentsDamaged(StepError):
    """Converted segments that are missing or differ from their completion record. Their records are dropped
    before this is raised, so the next run converts exactly these segments again."""

    def __init__(self, job_id: str, problems: dict[int, str]):
        self.job_id, self.problems = job_id, dict(sorted(problems.items()))
        shown = "; ".join(f"segment {index}: {why}" for index, why in list(self.problems.items())[:5])
        more = " …" if len(self.problems) > 5 else ""
        super().__init__(f"job {job_id}: {len(self.problems)} converted segment(s) failed verification "
                         f"({shown}{more}); their records were dropped, so running the job again converts them "
                         "again")

    @property
    def segments(self) -> list[int]:
        return list(self.problems)


class FinalDamaged(StepError):
    """The stored result differs from what the join recorded."""
