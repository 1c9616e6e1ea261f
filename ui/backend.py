"""The settings, backend and staging area the pages and the HTTP routes share (one process serves both)."""

from __future__ import annotations

import json
from functools import lru_cache

from stereo_spot.adapters import build_backend
from stereo_spot.config import Settings
from stereo_spot.ports import Backend
from stereo_spot.ui.uploads import StagingArea


def current_settings() -> Settings:
    """Read from the environment on every call: cheap, and a test or operator changing it is seen at once."""
    return Settings()


def _settings_key(settings: Settings) -> str:
    return settings.model_dump_json()


@lru_cache(maxsize=8)
def _backend_for(key: str) -> Backend:
    # A failed build (store unreachable) raises and is not cached, so the next page load tries again.
    return build_backend(Settings(**json.loads(key)))


def backend_for(settings: Settings | None = None) -> Backend:
    return _backend_for(_settings_key(settings or current_settings()))


def staging_area(settings: Settings | None = None) -> StagingArea:
    settings = settings or current_settings()
    return StagingArea(settings.stereo_spot_home / "uploads", settings.max_upload_bytes,
                       max_total_bytes=settings.max_staging_bytes, max_user_bytes=settings.staging_bytes_per_user,
                       min_free_bytes=settings.min_free_bytes, idle_seconds=settings.upload_idle_seconds)
