"""Model weights: a local folder, or an ``s3://bucket/prefix`` copied once into a local cache.

``--depth-weights`` and ``--inpaint-weights`` name a folder in the layout the model's library saves
(``save_pretrained``). A local folder is used where it is. An S3 prefix is downloaded through the project's S3
adapter (so ``AWS_ENDPOINT_URL``, ``AWS_REGION`` and the usual credential chain apply) into
``$STEREO_SPOT_MODEL_CACHE`` (default ``~/.cache/stereo-spot/models``), under a folder named after the prefix,
and reused while every object's size and ETag still match: a second segment, worker or run does not download
again. The download lands in a temporary folder that is renamed into place when complete, so workers that start
together never see half a model, and it is made under an exclusive file lock (``fcntl.flock`` on a file beside
the folder): of two processes or pods sharing the cache (a node-local volume on Kubernetes) the second waits for
the first and then reuses what it downloaded. A cache folder that cannot be written (a read-only volume without
these weights, a host folder owned by another user) falls back to a private temporary cache with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from stereo_spot.errors import UserError

CACHE_ENV = "STEREO_SPOT_MODEL_CACHE"  # the variable behind Settings.stereo_spot_model_cache
_MANIFEST = ".stereo-spot-manifest.json"
_lock = threading.Lock()
log = logging.getLogger(__name__)


class WeightsError(UserError):
    """The weights cannot be found or read; the message says where and what to do."""


def cache_root() -> Path:
    from stereo_spot.config import default_cache, get_settings

    configured = get_settings().stereo_spot_model_cache
    if configured:
        return configured.expanduser()

    return default_cache() / "models"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (bucket, ``some/prefix/``)."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise WeightsError(f"{uri} names no bucket: write s3://BUCKET/PREFIX")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def fetch_weights(spec: str, what: str = "model", storage=None) -> Path:
    """The local folder holding the weights named by ``spec`` (a folder, or an ``s3://`` prefix)."""
    if not spec:
        raise WeightsError(f"the {what} needs weights: give a folder or an s3:// prefix")
    if spec.startswith("s3://"):
        return _fetch_s3(spec, what, storage)
    folder = Path(spec).expanduser()
    if not folder.exists():
        raise WeightsError(f"the {what} weights {spec} do not exist (give a folder or an s3:// prefix)")
    if not folder.is_dir():
        raise WeightsError(f"the {what} weights {spec} must be a folder (the layout save_pretrained writes), "
                           f"not a file")
    return folder.resolve()


def _default_storage():
    from stereo_spot.adapters.aws.clients import AwsClients, AwsConfig
    from stereo_spot.adapters.aws.s3 import S3ObjectStorage
    from stereo_spot.config import get_settings

    settings = get_settings()
    return S3ObjectStorage(AwsClients(AwsConfig(region=settings.aws_region, endpoint_url=settings.aws_endpoint_url)))


def _fetch_s3(uri: str, what: str, storage) -> Path:
    from stereo_spot.ports import StoreError

    bucket, prefix = parse_s3_uri(uri)
    storage = storage or _default_storage()
    try:
        names = [key for key in storage.list_keys(bucket, prefix) if not key.endswith("/")]
        if not names:
            raise WeightsError(f"no {what} weights under {uri}: the prefix holds no objects")
        listing = {}
        for key in names:
            info = storage.head(bucket, key)
            listing[key[len(prefix):]] = [info.size, info.etag] if info is not None else [None, None]
    except StoreError as exc:
        raise WeightsError(f"cannot read the {what} weights {uri}: {exc}") from exc
    name = f"{bucket}-{hashlib.sha256(f'{bucket}/{prefix}'.encode()).hexdigest()[:16]}"
    target = cache_root() / name
    if _manifest(target) == listing:  # a warm cache: no lock needed to read a complete folder
        return target
    target = _writable(target)
    with _exclusive(target.parent / f".{name}.lock"), _lock:
        if _manifest(target) != listing:  # whoever held the lock before may have downloaded it meanwhile
            _download(storage, uri, bucket, prefix, listing, target, what)
    return target


def _writable(target: Path) -> Path:
    """``target``, or the same name in a private temporary cache where its folder cannot be written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".write-test-")
        probe.close()
        return target
    except OSError as exc:
        fallback = Path(tempfile.gettempdir()) / f"stereo-spot-models-{os.getuid()}"
        log.warning("the model cache %s cannot be written (%s): this process uses %s", target.parent, exc,
                    fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback / target.name


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One holder at a time across processes (and pods sharing the folder): ``flock`` is released by the kernel
    when its holder dies, so a killed download never leaves the cache locked."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _download(storage, uri: str, bucket: str, prefix: str, listing: dict, target: Path, what: str) -> None:
    from stereo_spot.ports import StoreError

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for relative in listing:
            destination = staging / relative
            if ".." in Path(relative).parts:
                raise WeightsError(f"{uri} holds an object with an unsafe name: {relative}")
            storage.download_file(bucket, prefix + relative, destination)
        (staging / _MANIFEST).write_text(json.dumps(listing, sort_keys=True))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except StoreError as exc:
        raise WeightsError(f"cannot download the {what} weights {uri}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
