"""Objects on S3. Uploads and downloads go through boto3's transfer manager: files above the multipart threshold
move in parts of ``part_size`` bytes (several in parallel), read from and written to disk part by part, so a
multi-GB film never sits in memory."""

from __future__ import annotations

import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from stereo_spot.adapters.aws.clients import AwsClients, aws_errors
from stereo_spot.ports import NotFound, ObjectInfo, ObjectStorage

DEFAULT_PART_SIZE = 16 * 1024 * 1024  # 10,000 parts (S3's limit) x 16 MiB = 156 GiB per object
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 rejects smaller parts (except the last)


def content_disposition(download_name: str) -> str:
    """``attachment`` with the name twice: a plain-ASCII fallback and the exact UTF-8 name (RFC 6266)."""
    name = " ".join(download_name.replace("/", "-").replace("\\", "-").split()) or "download"
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"%;' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class _Counting:
    """Wraps a readable file object and counts the bytes the transfer manager reads from it."""

    def __init__(self, inner: BinaryIO):
        self.inner, self.count = inner, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.count += len(data)
        return data


class S3ObjectStorage(ObjectStorage):
    def __init__(self, clients: AwsClients, part_size: int = DEFAULT_PART_SIZE, concurrency: int = 8):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes")
        self.clients, self.part_size, self.concurrency = clients, part_size, concurrency

    @property
    def _s3(self) -> Any:
        return self.clients.client("s3")

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.part_size, multipart_chunksize=self.part_size,
                              max_concurrency=self.concurrency, use_threads=True)

    def _errors(self, what: str):
        return aws_errors(self.clients, "s3", what)

    @staticmethod
    def _extra(key: str, content_type: str | None) -> dict[str, str]:
        content_type = content_type or mimetypes.guess_type(key)[0]
        return {"ContentType": content_type} if content_type else {}

    def upload_file(self, bucket: str, key: str, path: Path | str, content_type: str | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot upload {path}: no such file")
        with self._errors(f"uploading {path} to s3://{bucket}/{key}"):
            self._s3.upload_file(str(path), bucket, key, ExtraArgs=self._extra(key, content_type),
                                 Config=self._transfer_config())

    def upload_fileobj(self, bucket: str, key: str, fileobj: BinaryIO, content_type: str | None = None) -> int:
        counting = _Counting(fileobj)
        with self._errors(f"uploading to s3://{bucket}/{key}"):
            self._s3.upload_fileobj(counting, bucket, key, ExtraArgs=self._extra(key, content_type),
                                    Config=self._transfer_config())
        return counting.count

    def download_file(self, bucket: str, key: str, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Into a temporary name first: a reader never sees half a file, and a failed download leaves nothing.
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with self._errors(f"downloading s3://{bucket}/{key}"):
                self._s3.download_file(bucket, key, str(tmp), Config=self._transfer_config())
            os.replace(tmp, path)
        except NotFound:
            raise NotFound(f"object s3://{bucket}/{key} does not exist") from None
        finally:
            tmp.unlink(missing_ok=True)

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            with self._errors(f"looking up s3://{bucket}/{key}"):
                answer = self._s3.head_object(Bucket=bucket, Key=key)
        except NotFound:
            return None
        return ObjectInfo(key=key, size=int(answer.get("ContentLength", 0)),
                          last_modified=answer.get("LastModified"), etag=(answer.get("ETag") or "").strip('"'))

    def exists(self, bucket: str, key: str) -> bool:
        return self.head(bucket, key) is not None

    def delete(self, bucket: str, key: str) -> None:
        with self._errors(f"deleting s3://{bucket}/{key}"):
            self._s3.delete_object(Bucket=bucket, Key=key)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors(f"listing s3://{bucket}/{prefix}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def list_objects(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        with self._errors(f"listing s3://{bucket}/{prefix}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                found.extend(ObjectInfo(key=item["Key"], size=item.get("Size", 0),
                                        last_modified=item.get("LastModified"),
                                        etag=(item.get("ETag") or "").strip('"') or None)
                             for item in page.get("Contents", []))
        return sorted(found, key=lambda info: info.key)

    def presign_upload(self, bucket: str, key: str, expires_seconds: int = 3600) -> str:
        _check_expiry(expires_seconds)
        with self._errors(f"signing an upload to s3://{bucket}/{key}"):
            return self._s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key},
                                                   ExpiresIn=expires_seconds, HttpMethod="PUT")

    def presign_download(self, bucket: str, key: str, expires_seconds: int = 3600,
                         download_name: str | None = None) -> str:
        _check_expiry(expires_seconds)
        params: dict[str, str] = {"Bucket": bucket, "Key": key}
        if download_name:
            params["ResponseContentDisposition"] = content_disposition(download_name)
        with self._errors(f"signing a download of s3://{bucket}/{key}"):
            return self._s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds)


def _check_expiry(seconds: int) -> None:
    # SigV4 presigned URLs live at most 7 days.
    if not 1 <= seconds <= 7 * 24 * 3600:
        raise ValueError(f"a presigned URL expires after 1 s to 7 days, not {seconds} s")
