"""The node-local weight cache: processes (pods on one node) that fetch the same s3:// weights at once download
them once; the others wait for the lock and reuse the folder. Against a moto server over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import boto3
import pytest

from stereo_spot import weights
from tests.moto_server import moto_endpoint  # noqa: F401 - the fixture

FILES = {"config.json": b'{"layers": 2}', "model.safetensors": b"\x01" * 200_000, "tokenizer.txt": b"a b c"}

# One "pod": waits for the start signal so both race, and counts its own downloads (each slowed down, so an
# unlocked cache would let both download everything).
CHILD = """
import json, sys, time
from pathlib import Path
from stereo_spot import weights
storage = weights._default_storage()
downloads, real = [], storage.download_file
def slow(bucket, key, dest):
    downloads.append(key)
    time.sleep(0.4)
    real(bucket, key, dest)
storage.download_file = slow
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
folder = weights.fetch_weights(sys.argv[1], "model", storage=storage)
print(json.dumps({"folder": str(folder), "downloads": downloads}))
"""


@pytest.fixture
def uri(moto_endpoint) -> str:  # noqa: F811
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"models-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    for name, data in FILES.items():
        s3.put_object(Bucket=bucket, Key=f"inpaint/v1/{name}", Body=data)
    return f"s3://{bucket}/inpaint/v1"


def test_two_processes_on_one_node_download_once(uri, tmp_path):
    cache, go = tmp_path / "node-cache", tmp_path / "go"
    env = {**os.environ, weights.CACHE_ENV: str(cache)}
    pods = [subprocess.Popen([sys.executable, "-c", CHILD, uri, str(go)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    time.sleep(1.0)  # both have started and listed nothing yet: they wait for the signal
    go.write_text("")
    results = []
    for pod in pods:
        out, err = pod.communicate(timeout=120)
        assert pod.returncode == 0, err
        results.append(json.loads(out))
    assert results[0]["folder"] == results[1]["folder"]
    assert sorted(len(r["downloads"]) for r in results) == [0, len(FILES)]  # one downloaded, one reused
    folder = cache / os.path.basename(results[0]["folder"])
    assert {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")} == FILES
    manifest = folder / ".stereo-spot-manifest.json"
    stamp = manifest.stat().st_mtime_ns
    os.environ[weights.CACHE_ENV] = str(cache)
    try:
        assert weights.fetch_weights(uri) == folder and manifest.stat().st_mtime_ns == stamp  # a warm node
    finally:
        del os.environ[weights.CACHE_ENV]


def test_a_cache_folder_that_cannot_be_written_falls_back_to_a_private_one(uri, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(weights.CACHE_ENV, str(blocker / "cache"))  # cannot be a folder
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    folder = weights.fetch_weights(uri)
    assert folder.is_relative_to(tmp_path / "tmp")
    assert (folder / "config.json").read_bytes() == FILES["config.json"]
