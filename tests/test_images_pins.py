"""scripts/pin-images points the deployment at pushed images in one place: the aws overlay's `images:` block
pins every image kustomize renders (Deployment and WorkflowTemplate scripts, both overlays) to its digest, and
the compiled files' references; the rest of the kustomization is kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_manifests_images import _images

ROOT = Path(__file__).resolve().parent.parent
DIGESTS = {"cpu": "sha256:" + "1" * 64, "gpu": "sha256:" + "2" * 64, "ui": "sha256:" + "3" * 64}


@pytest.fixture
def pinned(tmp_path) -> Path:
    copy = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "pin-images"), "--registry", "ghcr.io/a-fork/",
                           "--tag", "v9.9.9", *[f"--digest={n}={d}" for n, d in DIGESTS.items()],
                           "--kustomization", str(copy / "overlays" / "aws" / "kustomization.yaml"),
                           "--kustomization", str(copy / "overlays" / "aws-kubeflow" / "kustomization.yaml"),
                           "--compiled", str(copy / "generated" / "kfp-pipeline.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return copy


def test_every_rendered_image_is_pinned_to_its_digest(pinned):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    for overlay in ("aws", "aws-kubeflow"):
        out = subprocess.run([kubectl, "kustomize", str(pinned / "overlays" / overlay)], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        # the project's own images; third-party ones (the sign-in proxy) are pinned in test_manifests_images
        images = {i for i in _images([d for d in yaml.safe_load_all(out) if d]) if "stereo-spot-" in i}
        assert images == {f"ghcr.io/a-fork/stereo-spot-{n}:v9.9.9@{d}" for n, d in DIGESTS.items()}, images


def test_the_compiled_pipeline_and_the_kustomization_keep_everything_else(pinned):
    spec = (pinned / "generated" / "kfp-pipeline.yaml").read_text()
    images = set(_images(list(yaml.safe_load_all(spec))))
    assert images == {f"ghcr.io/a-fork/stereo-spot-{n}@{DIGESTS[n]}" for n in ("cpu", "gpu")}, images
    original = (ROOT / "manifests" / "generated" / "kfp-pipeline.yaml").read_text()
    assert spec.count("\n") == original.count("\n")
    before = yaml.safe_load((ROOT / "manifests" / "overlays" / "aws" / "kustomization.yaml").read_text())
    after_text = (pinned / "overlays" / "aws" / "kustomization.yaml").read_text()
    after = yaml.safe_load(after_text)
    assert {k: v for k, v in after.items() if k != "images"} == {k: v for k, v in before.items() if k != "images"}
    assert after_text.startswith("# stereo-spot on EKS.")


def test_a_malformed_digest_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "pin-images"), "--registry", "r", "--tag", "t",
                           "--digest", "cpu=latest", "--kustomization", str(tmp_path / "k.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "expected NAME=sha256:" in proc.stderr
