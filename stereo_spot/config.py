"""Settings from the environment. Names are the contract in DESIGN.md (no prefix, so a Kubernetes ConfigMap
can hold them as they are)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where state lived before it moved to the platform's data folder: still used where it exists, so an upgrade
#: does not lose the jobs (and the resumable work) kept there.
LEGACY_HOME = Path("~/.stereo-spot")


def default_home() -> Path:
    """``STEREO_SPOT_HOME`` when set (read by Settings first); else an existing ``~/.stereo-spot``; else the
    platform's data folder (``~/.local/share/stereo-spot`` on Linux, ``~/Library/Application Support/stereo-spot``
    on macOS, ``%LOCALAPPDATA%\\stereo-spot`` on Windows)."""
    import platformdirs

    legacy = LEGACY_HOME.expanduser()
    return legacy if legacy.is_dir() else platformdirs.user_data_path("stereo-spot", appauthor=False)


def default_cache() -> Path:
    """The platform's cache folder for stereo-spot (``~/.cache/stereo-spot`` on Linux, ``XDG_CACHE_HOME``
    honoured): model weights fetched from S3 live under it."""
    import platformdirs

    return platformdirs.user_cache_path("stereo-spot", appauthor=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    storage_adapter: Literal["local", "aws"] = "local"
    stereo_spot_home: Path = Field(default_factory=default_home)

    input_bucket_name: str = "stereo-spot-input"
    output_bucket_name: str = "stereo-spot-output"
    jobs_table_name: str = "stereo-spot-jobs"
    segment_completions_table_name: str = "stereo-spot-segment-completions"
    reassembly_triggered_table_name: str = "stereo-spot-reassembly-triggered"
    event_dedup_table_name: str = "stereo-spot-event-dedup"
    chunking_queue_url: str | None = None
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None

    # links for operators, e.g. https://argo.example.com/workflows/argo/stereo-spot-{job_id}
    argo_ui_url: str | None = None
    argo_namespace: str = "stereo-spot"
    # The Argo server's API: the app stops a deleted job's workflow there. Without ARGO_TOKEN the app uses its
    # pod's service-account token (the Argo server then acts with that account's RBAC: manifests/base/rbac.yaml).
    argo_server_url: str | None = None
    argo_token: str | None = None
    kfp_ui_url: str | None = None
    logs_url_template: str | None = None

    # UI
    max_upload_bytes: int = 4 * 1024**3
    ui_submit_engine: Literal["none", "argo", "kfp"] = "none"
    # Who is signed in: ``none`` (one user on 127.0.0.1), ``oidc`` (Streamlit's st.login with the provider in
    # secrets.toml) or ``header`` (an authenticating proxy such as oauth2-proxy sets ``ui_auth_header``).
    ui_auth: Literal["none", "oidc", "header"] = "none"
    ui_auth_header: str = "X-Forwarded-Email"
    ui_admins: str = ""  # comma-separated identities that see everyone's jobs
    # Jobs one user may have in progress at once (0: no limit), and jobs converting at once on this machine
    # (local storage; the rest wait in a queue).
    ui_max_jobs_per_user: int = Field(3, ge=0)
    max_concurrent_jobs: int = Field(1, ge=1)
    # Staging area for uploads in flight: at most this many bytes, and always this much free disk left.
    max_staging_bytes: int = Field(16 * 1024**3, ge=1)
    min_free_bytes: int = Field(1024**3, ge=0)

    # Limits on what one job may ask for, checked on the probe before a job exists (a small file can declare
    # hours of 8K at a high frame rate: compute, not bytes, is what it costs).
    max_frame_pixels: int = Field(1920 * 1080, ge=1)
    max_fps: float = Field(120.0, gt=0)
    max_duration_seconds: float = Field(4 * 3600.0, gt=0)
    max_frames_per_job: int = Field(4 * 3600 * 60, ge=1)
    # A job running longer than this is stopped and marked failed (the SQS worker; the workflow has its own
    # activeDeadlineSeconds).
    max_job_runtime_seconds: int = Field(12 * 3600, ge=60)

    @property
    def admins(self) -> frozenset[str]:
        return frozenset(name.strip().lower() for name in self.ui_admins.split(",") if name.strip())

    @cached_property
    def database_path(self) -> Path:
        return self.stereo_spot_home / "stereo-spot.db"

    @cached_property
    def storage_root(self) -> Path:
        return self.stereo_spot_home / "objects"


def get_settings() -> Settings:
    return Settings()
