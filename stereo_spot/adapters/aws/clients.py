"""boto3 clients shared by the AWS adapters, and the one place boto errors become our StoreError family.

Clients are created lazily and once per process: they are thread-safe, but neither pickle nor survive a fork,
and the runner hands the backend to worker processes. Pickling an ``AwsClients`` keeps only its settings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from stereo_spot.ports import ConflictError, NotFound, StoreError

SERVICE_NAMES = {"dynamodb": "DynamoDB", "s3": "S3", "sqs": "SQS"}

# Error codes that mean "the table/bucket/queue itself is missing": a deployment problem, not a missing job.
_MISSING_RESOURCE = {
    "ResourceNotFoundException",
    "NoSuchBucket",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}
_MISSING_OBJECT = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class AwsConfig:
    region: str = "us-east-1"
    endpoint_url: str | None = None  # a local endpoint (moto, LocalStack); None for AWS itself

    @classmethod
    def from_settings(cls, settings: Any) -> AwsConfig:
        return cls(region=settings.aws_region, endpoint_url=settings.aws_endpoint_url or None)


class AwsClients:
    def __init__(self, config: AwsConfig):
        self.config = config
        self._clients: dict[str, Any] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    def client(self, service: str) -> Any:
        if os.getpid() != self._pid:  # a forked child: never reuse the parent's connection pools
            self._clients, self._pid = {}, os.getpid()
        found = self._clients.get(service)
        if found is not None:
            return found
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._make(service)
            return self._clients[service]

    def _make(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {
            "region_name": self.config.region,
            "retries": {"max_attempts": 4, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 70,  # longer than an SQS long poll (20 s)
            "max_pool_connections": 32,
        }
        if service == "s3":
            options["signature_version"] = "s3v4"
            if self.config.endpoint_url:  # local endpoints are an IP or localhost: no virtual-host buckets
                options["s3"] = {"addressing_style": "path"}
        session = boto3.session.Session()
        return session.client(service, endpoint_url=self.config.endpoint_url, region_name=self.config.region,
                              config=Config(**options))

    def endpoint(self, service: str) -> str:
        if self.config.endpoint_url:
            return self.config.endpoint_url
        return f"{SERVICE_NAMES.get(service, service)} in {self.config.region}"


@contextmanager
def aws_errors(clients: AwsClients, service: str, what: str) -> Iterator[None]:
    """Turn boto's exceptions into StoreError (and its ConflictError/NotFound) with a message saying which
    service, which operation and what to do."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    name = SERVICE_NAMES.get(service, service)
    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError) as exc:
        raise StoreError(f"cannot reach {name} at {clients.endpoint(service)}: {exc}") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise StoreError(f"no AWS credentials for {name} ({what}): set AWS_ACCESS_KEY_ID and "
                         f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = error.get("Message") or code
        if code == "ConditionalCheckFailedException":
            raise ConflictError(f"{what}: the record is not in the expected state") from exc
        if code in _MISSING_RESOURCE:
            raise StoreError(f"{what}: {name} says {message} (create the resources with "
                             f"`stereo-spot aws bootstrap`, or check the names in the environment)") from exc
        if code in _MISSING_OBJECT:
            raise NotFound(f"{what}: does not exist") from exc
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            raise StoreError(f"{what}: {name} denied access: {message}") from exc
        raise StoreError(f"{what}: {name} answered {code}: {message}") from exc
    except BotoCoreError as exc:
        raise StoreError(f"{what}: {name}: {exc}") from exc
