"""A real moto server on 127.0.0.1 for the AWS tests: boto3 talks HTTP to it exactly as it would to AWS.

Import the fixtures into a test module with ``from tests.moto_server import aws_settings, moto_endpoint  # noqa``.
The server starts once per test session (on a free port) and stops at the end; each test gets its own resource
names (a random prefix) created by ``stereo-spot aws bootstrap``'s code, so tests never see each other's data.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from stereo_spot.config import Settings

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in (
        "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
        "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
    # Dummy credentials and no profile: nothing can reach a real account from the tests.
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing", "AWS_REGION": REGION,
                       "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def settings_for(endpoint: str, prefix: str, **overrides) -> Settings:
    """Settings naming the resources ``aws bootstrap --prefix {prefix}`` creates."""
    from stereo_spot.aws.bootstrap import ResourceNames

    names = ResourceNames.from_settings(Settings(), prefix)
    values = dict(
        storage_adapter="aws", aws_region=REGION, aws_endpoint_url=endpoint,
        input_bucket_name=names.input_bucket, output_bucket_name=names.output_bucket,
        jobs_table_name=names.jobs_table, segment_completions_table_name=names.completions_table,
        reassembly_triggered_table_name=names.reassembly_table, event_dedup_table_name=names.dedup_table,
        chunking_queue_url=f"{endpoint}/123456789012/{names.queue}")
    values.update(overrides)
    return Settings(**values)


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def aws_settings(moto_endpoint: str) -> Settings:
    """Fresh, bootstrapped resources for one test; the settings point at them (queue URL as bootstrap says)."""
    from stereo_spot.aws.bootstrap import bootstrap

    prefix = new_prefix()
    settings = settings_for(moto_endpoint, prefix)
    result = bootstrap(settings, prefix)
    return settings.model_copy(update={"chunking_queue_url": result.env["CHUNKING_QUEUE_URL"]})
