"""S3 object storage and SQS queues against a moto server over HTTP: streaming multipart transfers, presigned
URLs used by a plain HTTP client, listing, queue visibility."""

from __future__ import annotations

import io
import os

import pytest
import requests

from stereo_spot.adapters.aws import AwsClients, AwsConfig, S3ObjectStorage, SqsQueue, aws_backend
from stereo_spot.adapters.aws.s3 import MIN_PART_SIZE, content_disposition
from stereo_spot.ports import NotFound
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401


@pytest.fixture
def backend(aws_settings):  # noqa: F811
    return aws_backend(aws_settings, part_size=MIN_PART_SIZE)


def _multipart_upload_ids(storage: S3ObjectStorage, bucket: str, key: str) -> list[str]:
    # An S3 ETag with "-N" is the mark of an object stored from N parts.
    return (storage.head(bucket, key).etag or "").split("-")[1:]


def test_multipart_upload_and_download_of_a_file_larger_than_the_part_size(backend, tmp_path):
    data = os.urandom(11 * 1024 * 1024 + 123)  # 3 parts of 5 MiB
    source = tmp_path / "big.mp4"
    source.write_bytes(data)
    storage = backend.objects
    storage.upload_file(backend.input_bucket, "input/big/source.mp4", source)
    assert _multipart_upload_ids(storage, backend.input_bucket, "input/big/source.mp4") == ["3"]
    info = storage.head(backend.input_bucket, "input/big/source.mp4")
    assert info.size == len(data)

    target = tmp_path / "out" / "copy.mp4"
    storage.download_file(backend.input_bucket, "input/big/source.mp4", target)
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["copy.mp4"]  # no temporary file left behind

    # A stream (e.g. an upload in the UI) goes up in parts too, and the byte count comes back.
    written = storage.upload_fileobj(backend.output_bucket, "jobs/x/final.mp4", io.BytesIO(data))
    assert written == len(data)
    assert _multipart_upload_ids(storage, backend.output_bucket, "jobs/x/final.mp4") == ["3"]
    assert storage.read_bytes(backend.output_bucket, "jobs/x/final.mp4") == data


def test_small_objects_exists_head_delete_and_list(backend, tmp_path):
    storage = backend.objects
    bucket = backend.input_bucket
    assert not storage.exists(bucket, "segments/a/00000_00002_sbs.mp4")
    assert storage.head(bucket, "nothing") is None
    for name in ("00001_00002_sbs.mp4", "00000_00002_sbs.mp4"):
        storage.write_bytes(bucket, f"segments/a/{name}", b"x" * 10)
    storage.write_bytes(bucket, "segments/b/00000_00001_sbs.mp4", b"y")
    assert storage.exists(bucket, "segments/a/00000_00002_sbs.mp4")
    info = storage.head(bucket, "segments/a/00000_00002_sbs.mp4")
    assert info.size == 10 and info.last_modified is not None and info.etag
    assert storage.list_keys(bucket, "segments/a/") == ["segments/a/00000_00002_sbs.mp4",
                                                         "segments/a/00001_00002_sbs.mp4"]
    storage.delete(bucket, "segments/a/00000_00002_sbs.mp4")
    storage.delete(bucket, "segments/a/never-existed.mp4")  # not an error
    assert storage.list_keys(bucket, "segments/a/") == ["segments/a/00001_00002_sbs.mp4"]
    with pytest.raises(NotFound, match="does not exist"):
        storage.download_file(bucket, "segments/a/00000_00002_sbs.mp4", tmp_path / "gone.mp4")
    assert not (tmp_path / "gone.mp4").exists()


@pytest.mark.slow  # over 10 s
def test_list_keys_pages_past_1000(backend):
    from concurrent.futures import ThreadPoolExecutor

    storage = backend.objects
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: storage.write_bytes(backend.output_bucket, f"many/{i:05d}", b""), range(1005)))
    keys = storage.list_keys(backend.output_bucket, "many/")
    assert len(keys) == 1005 and keys[0] == "many/00000" and keys[-1] == "many/01004"


def test_presigned_upload_with_an_http_client_then_presigned_download(backend):
    storage = backend.objects
    data = os.urandom(300_000)
    put_url = storage.presign_upload(backend.input_bucket, "input/p/source.mp4", expires_seconds=600)
    assert "X-Amz-Signature" in put_url and "X-Amz-Expires=600" in put_url
    answer = requests.put(put_url, data=data, timeout=30)
    assert answer.status_code == 200, answer.text
    assert storage.head(backend.input_bucket, "input/p/source.mp4").size == len(data)

    get_url = storage.presign_download(backend.input_bucket, "input/p/source.mp4", expires_seconds=60,
                                       download_name="Ferien am Meer-3d_LRF_Full_SBS.mp4")
    answer = requests.get(get_url, timeout=30)
    assert answer.status_code == 200 and answer.content == data
    disposition = answer.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert 'filename="Ferien am Meer-3d_LRF_Full_SBS.mp4"' in disposition


    with pytest.raises(ValueError, match="7 days"):
        storage.presign_download(backend.input_bucket, "input/p/source.mp4", expires_seconds=8 * 24 * 3600)


def test_content_disposition_keeps_unicode_names_and_a_safe_fallback():
    value = content_disposition('Été "3D"/final.mp4')
    assert value.startswith('attachment; filename="')
    fallback = value.split('filename="')[1].split('"')[0]
    assert all(32 <= ord(c) < 127 for c in fallback) and "/" not in fallback and '"' not in fallback
    assert "filename*=UTF-8''%C3%89t%C3%A9%20%223D%22-final.mp4" in value


def test_queue_send_receive_visibility_and_delete(aws_settings):  # noqa: F811
    queue = SqsQueue(AwsClients(AwsConfig.from_settings(aws_settings)), aws_settings.chunking_queue_url)
    # bootstrap's notification sends an s3:TestEvent first
    for message in queue.receive(max_messages=10, wait_seconds=0):
        queue.delete(message)
    message_id = queue.send('{"hello": 1}')
    first = queue.receive(wait_seconds=1, visibility_timeout=60)
    assert [m.message_id for m in first] == [message_id] and first[0].body == '{"hello": 1}'
    assert first[0].attributes["ApproximateReceiveCount"] == "1"
    assert queue.receive(wait_seconds=0) == []  # hidden while in flight
    queue.extend_visibility(first[0], 120)
    assert queue.receive(wait_seconds=0) == []
    queue.release(first[0])  # visibility 0: back at once for another worker
    again = queue.receive(wait_seconds=1, visibility_timeout=60)
    assert [m.message_id for m in again] == [message_id]
    assert again[0].attributes["ApproximateReceiveCount"] == "2"
    queue.delete(again[0])
    assert queue.receive(wait_seconds=0, visibility_timeout=0) == []
