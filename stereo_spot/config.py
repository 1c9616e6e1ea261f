"""Settings from the environment: every variable the project reads is a field here, named as the variable (no
prefix, so a Kubernetes ConfigMap can hold them as they are; DESIGN.md's names are the contract). An empty
variable counts as unset. tests/test_settings_env.py fails when code elsewhere reads the environment itself.

Two classes: ``Settings`` (storage, limits, the app, the engines) validates everything at once, and
``ReportingSettings`` (logs, tracebacks, the termination message) holds what is read while an error is being
reported, so a bad value in the first (``MAX_FPS=abc``) cannot stop the report of that very error."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stereo_spot.errors import UserError

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


class SettingsError(UserError, ValueError):
    """A variable holds a value its setting cannot take; the message names the variable."""


class _FromEnvironment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False,
                                      str_strip_whitespace=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, values: object) -> object:
        """``NAME=`` (or spaces) leaves the default, as unset would: a ConfigMap often lists a name empty."""
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if not (isinstance(v, str) and not v.strip())}
        return values


class Settings(_FromEnvironment):
    """Storage, limits, the app, the engines: validated together, at once."""

    storage_adapter: Literal["local", "aws"] = "local"
    stereo_spot_home: Path = Field(default_factory=default_home)

    input_bucket_name: str = "stereo-spot-input"
    output_bucket_name: str = "stereo-spot-output"
    jobs_table_name: str = "stereo-spot-jobs"
    segment_completions_table_name: str = "stereo-spot-segment-completions"
    reassembly_triggered_table_name: str = "stereo-spot-reassembly-triggered"
    event_dedup_table_name: str = "stereo-spot-event-dedup"
    chunking_queue_url: str | None = None
    # AWS_DEFAULT_REGION as boto3 reads it, where only that one is set
    aws_region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    aws_endpoint_url: str | None = None

    # The steps and the engine
    stereo_spot_workdir: Path | None = None  # the steps' scratch folders (default: the system's temp folder)
    # model weights fetched from s3:// (default: the platform's cache folder, default_cache() / "models")
    stereo_spot_model_cache: Path | None = None
    stereo_spot_crf: int | None = Field(None, ge=0, le=51)  # the encoder's quality when a job names none (18)
    stereo_spot_device: str | None = None  # the convert pod's device, e.g. cuda:0 (default: CUDA when there is one)
    # --format spatial's encoder: x265 built with multiview (default /opt/x265-mv/bin/x265, media/mvhevc.py)
    stereo_spot_x265_multiview: Path | None = None
    # `stereo-spot kfp-trigger`: the event and its delivery id, as the Sensor's Job passes them
    stereo_spot_event: str = ""
    stereo_spot_delivery_id: str = ""

    # links for operators, e.g. https://argo.example.com (the job's runs: stereo_spot.adapters.argo_runs.ui_link)
    argo_ui_url: str | None = None
    argo_namespace: str = "stereo-spot"
    # The Argo server's API: the app stops a deleted job's workflow there. Without ARGO_TOKEN the app uses its
    # pod's service-account token (the Argo server then acts with that account's RBAC: manifests/base/rbac.yaml).
    argo_server_url: str | None = None
    argo_token: str | None = None
    # argo-server serves https with a self-signed certificate by default: trust its CA bundle (a PEM file), or
    # skip the check explicitly (the Argo CLI's ARGO_INSECURE_SKIP_VERIFY). stereo_spot.adapters.argo_runs.tls_verify
    # decides from these two.
    argo_ca_file: str | None = None
    argo_insecure_skip_verify: bool = False
    kfp_ui_url: str | None = None
    logs_url_template: str | None = None

    # Kubeflow Pipelines' API (`stereo-spot submit --engine kfp`, the kfp-trigger Job); KF_PIPELINES_ENDPOINT and
    # KF_PIPELINES_SA_TOKEN_PATH are the names kfp's own client reads
    kfp_host: str | None = Field(None, validation_alias=AliasChoices("KFP_HOST", "KF_PIPELINES_ENDPOINT"))
    kfp_token: str | None = None
    kfp_namespace: str | None = None
    kfp_pipeline_id: str | None = None
    kfp_pipeline_version_id: str | None = None
    kfp_experiment: str | None = None
    kfp_run_service_account: str | None = None
    kf_pipelines_sa_token_path: str | None = None

    # The Kubernetes API for `stereo-spot doctor`, found the way kubectl finds it: the variables the kubelet sets
    # in every pod, else KUBECONFIG's first file
    kubernetes_service_host: str | None = None
    kubernetes_service_port: str = "443"
    kubeconfig: str | None = None

    # UI
    max_upload_bytes: int = 4 * 1024**3
    ui_submit_engine: Literal["none", "argo", "kfp"] = "none"
    # Who is signed in: ``none`` (one user on 127.0.0.1), ``oidc`` (Streamlit's st.login with the provider in
    # secrets.toml) or ``header`` (an authenticating proxy such as oauth2-proxy sets ``ui_auth_header``).
    ui_auth: Literal["none", "oidc", "header"] = "none"
    ui_auth_header: str = "X-Forwarded-Email"
    # Header mode off loopback: which requests come from the proxy. A shared secret the proxy sends in the
    # X-Auth-Proxy-Secret header, and/or the proxy's addresses (comma-separated IPs or networks, e.g.
    # 10.0.3.7,10.1.0.0/16); ``stereo-spot ui`` refuses a non-loopback address in header mode without one.
    ui_auth_proxy_secret: str | None = None
    ui_auth_trusted_proxies: str = ""
    ui_admins: str = ""  # comma-separated identities that see everyone's jobs
    # s3:// prefixes (comma-separated) anyone may name as model weights in the app; admins may name any
    # (default: none, so weights in the app are an admin's choice)
    ui_weights_prefixes: str = ""
    # Jobs one user may have in progress at once (0: no limit), and jobs converting at once on this machine
    # (local storage; the rest wait in a queue).
    ui_max_jobs_per_user: int = Field(3, ge=0)
    max_concurrent_jobs: int = Field(1, ge=1)
    # Staging area for uploads in flight: at most this many bytes, and always this much free disk left.
    max_staging_bytes: int = Field(16 * 1024**3, ge=1)
    min_free_bytes: int = Field(1024**3, ge=0)
    # One user's staged uploads together (default: MAX_UPLOAD_BYTES, one full-size upload at a time), so one user
    # cannot fill MAX_STAGING_BYTES; an upload nobody touched for this long is removed.
    max_staging_bytes_per_user: int | None = Field(None, ge=1)
    upload_idle_seconds: int = Field(15 * 60, ge=60)

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

    @property
    def weights_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip().rstrip("/") + "/" for p in self.ui_weights_prefixes.split(",") if p.strip())

    @property
    def staging_bytes_per_user(self) -> int:
        return self.max_staging_bytes_per_user or self.max_upload_bytes

    @cached_property
    def database_path(self) -> Path:
        return self.stereo_spot_home / "stereo-spot.db"

    @cached_property
    def storage_root(self) -> Path:
        return self.stereo_spot_home / "objects"


def get_settings() -> Settings:
    """The settings, or a SettingsError whose one line names each variable that is wrong and its value."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error) for error in exc.errors())) from None


def _describe(error) -> str:
    name = str(error["loc"][0]).upper() if error.get("loc") else "a variable"
    return f"{name}={error.get('input')!r}: {error['msg']}"


_OFF = ("", "0", "false", "no", "off")


class ReportingSettings(_FromEnvironment):
    """How this process reports: read at start-up and in error handlers, so no value here fails to parse."""

    stereo_spot_debug: bool = False  # tracebacks behind the one-line errors (any value but 0/false/no/off)
    stereo_spot_log_level: str | None = None  # DEBUG, INFO, WARNING, ERROR (the CLI's -v/-q set it)
    stereo_spot_log_format: str = ""  # json or text; otherwise JSON unless stderr is a terminal
    # Kubernetes' termination-message file: a failed step's one-line reason goes there
    stereo_spot_termination_log: Path = Path("/dev/termination-log")

    @field_validator("stereo_spot_debug", mode="before")
    @classmethod
    def _any_value_turns_on(cls, value: object) -> bool:
        return str(value).strip().lower() not in _OFF if not isinstance(value, bool) else value

    @field_validator("stereo_spot_log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> str:
        return str(value).strip().lower()


def reporting_settings() -> ReportingSettings:
    return ReportingSettings()
