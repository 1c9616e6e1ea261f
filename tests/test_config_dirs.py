"""Where state and caches live: STEREO_SPOT_HOME first, an existing ~/.stereo-spot (so an upgrade keeps its
jobs), else the platform's data folder; model weights in the platform's cache folder.

What each test is there to catch: a default that ignores STEREO_SPOT_HOME, one that abandons the state an
earlier version kept in ~/.stereo-spot, and a cache that ignores XDG_CACHE_HOME or STEREO_SPOT_MODEL_CACHE.
"""

from __future__ import annotations

import sys

import pytest

from stereo_spot.config import Settings, default_home
from stereo_spot.weights import cache_root

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the expected folders are Linux's")


@pytest.fixture
def user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("STEREO_SPOT_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "STEREO_SPOT_MODEL_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_state_goes_to_the_platform_data_folder(user_home):
    assert default_home() == user_home / ".local" / "share" / "stereo-spot"
    assert Settings().stereo_spot_home == user_home / ".local" / "share" / "stereo-spot"


def test_an_existing_legacy_folder_is_kept(user_home):
    (user_home / ".stereo-spot").mkdir()
    assert Settings().stereo_spot_home == user_home / ".stereo-spot"


def test_stereo_spot_home_comes_first(user_home, monkeypatch):
    (user_home / ".stereo-spot").mkdir()
    monkeypatch.setenv("STEREO_SPOT_HOME", str(user_home / "elsewhere"))
    assert Settings().stereo_spot_home == user_home / "elsewhere"


def test_model_weights_go_to_the_platform_cache(user_home, monkeypatch):
    assert cache_root() == user_home / ".cache" / "stereo-spot" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_home / "xdg"))
    assert cache_root() == user_home / "xdg" / "stereo-spot" / "models"
    monkeypatch.setenv("STEREO_SPOT_MODEL_CACHE", str(user_home / "models"))
    assert cache_root() == user_home / "models"
