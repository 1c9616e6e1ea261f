"""Pick the adapters named by ``STORAGE_ADAPTER``."""

from __future__ import annotations

from stereo_spot.config import Settings, get_settings
from stereo_spot.ports import Backend


def build_backend(settings: Settings | None = None) -> Backend:
    settings = settings or get_settings()
    if settings.storage_adapter == "aws":
        from stereo_spot.adapters.aws import aws_backend

        return aws_backend(settings)
    from stereo_spot.adapters.local import local_backend
    from stereo_spot.adapters.operator_links import links_from_settings

    backend = local_backend(settings.stereo_spot_home, settings.input_bucket_name, settings.output_bucket_name)
    backend.links = links_from_settings(settings)
    return backend
