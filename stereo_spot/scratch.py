"""The steps' scratch folders (``STEREO_SPOT_WORKDIR``, default the system's temporary folder).

A step works in ``stereo-spot-{step}-{host}-{pid}-…``: a run killed with SIGKILL (or a machine that lost power)
cannot remove its folder, so the next step on this machine removes every folder whose process is gone. The host
part keeps a folder shared between machines (or containers with their own process numbers) from being judged
by the wrong process table; folders of other hosts, and of versions that did not name the process, are left
alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^stereo-spot-[a-z]+-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-")


def _host() -> str:
    return hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:8]


def root() -> Path:
    from stereo_spot.config import get_settings

    configured = get_settings().stereo_spot_workdir
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        return Path(configured)
    return Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale(folder: Path) -> list[Path]:
    """Remove the scratch folders in ``folder`` whose process on this host is gone; returns them."""
    host, removed = _host(), []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _NAME.match(path.name)
        if match is None or match["host"] != host or not path.is_dir() or _alive(int(match["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by a run that was killed", path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def workdir(step: str) -> Iterator[Path]:
    """A fresh scratch folder for one step, removed afterwards; stale ones of killed runs go first."""
    base = root()
    remove_stale(base)
    with tempfile.TemporaryDirectory(prefix=f"stereo-spot-{step}-{_host()}-{os.getpid()}-", dir=base) as tmp:
        yield Path(tmp)
