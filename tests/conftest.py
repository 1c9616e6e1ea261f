"""Fixtures shared by the whole suite. Every test gets its own STEREO_SPOT_HOME, so nothing touches ~/.stereo-spot."""

from __future__ import annotations

from pathlib import Path

import pytest

from stereo_spot.adapters.local import local_backend
from stereo_spot.ports import Backend


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
