"""Settings from the environment. Names are the contract in DESIGN.md (no prefix, so a Kubernetes ConfigMap
can hold them as they are)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".stereo-spot"


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
    kfp_ui_url: str | None = None
    logs_url_template: str | None = None

    # UI
    max_upload_bytes: int = 4 * 1024**3
    ui_submit_engine: Literal["none", "argo", "kfp"] = "none"

    @cached_property
    def database_path(self) -> Path:
        return self.stereo_spot_home / "stereo-spot.db"

    @cached_property
    def storage_root(self) -> Path:
        return self.stereo_spot_home / "objects"


def get_settings() -> Settings:
    return Settings()
