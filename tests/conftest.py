"""Fixtures shared by the whole suite. Every test gets its own STEREO_SPOT_HOME, so nothing touches ~/.stereo-spot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stereo_spot.adapters.local import local_backend
from stereo_spot.ports import Backend

# pytest-xdist's workers start with COLUMNS=80 in their environment. Rich takes COLUMNS, when set at a console's
# creation, as that console's fixed width, so the tests that give the command line a wider terminal (CliRunner's
# env) would not get it. Without it the width is measured at each print, as in a run without workers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("STEREO_SPOT_HOME", str(path))
    monkeypatch.setenv("STORAGE_ADAPTER", "local")
    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(tmp_path / "work"))
    return path


@pytest.fixture
def backend(home: Path) -> Backend:
    return local_backend(home)
