"""The images built from images/*/Dockerfile (buildah, on a debootstrap stand-in for the base, see
tests/buildah.py) and run: the compiled WorkflowTemplate's DAG walked with each pod's command and arguments run
inside the CPU image (chunk → convert × N → concat on a generated clip, the embedded storage mounted in), and the
UI image's server answering the Deployment's health check.

Skipped, with the reason, where buildah or debootstrap is not installed (scripts/setup --dev installs both as
root) or the tests do not run as root (debootstrap and vfs storage need it)."""

from __future__ import annotations

import json
import os
import socket
import time
import tomllib
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import av
import pytest
import yaml

from stereo_spot import keys, steps
from stereo_spot.adapters.local import local_backend
from stereo_spot.components._common import TERMINATION_LOG_ENV
from stereo_spot.media.frames import frame_to_rgb
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat
from stereo_spot.runner import run_job
from tests import buildah
from tests.media_fixtures import make_clip
from tests.test_pipelines_argo_run import TEMPLATES, ArgoEmulator, Run, video_facts
from tests.test_spatial_video import check_spatial

ROOT = Path(__file__).resolve().parent.parent
SIZE, FPS, SECONDS = (160, 96), 12, 2.0
UID = 1000  # the images' user

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(buildah.missing_tools()),
                       reason=f"needs {' and '.join(buildah.missing_tools())} to build the images "
                              "(scripts/setup --dev installs them as root: apt-get install buildah debootstrap)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="building with debootstrap and vfs storage needs root"),
]


def _locked_torch() -> str:
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    return pins["torch"]


def _build(name: str) -> str:
    index = buildah.local_torch_index(_locked_torch())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return buildah.build(name, {"VERSION": version, **({"TORCH_INDEX_URL": index} if index else {})})


@pytest.fixture(scope="module")
def cpu_image() -> str:
    return _build("cpu")


@pytest.fixture(scope="module")
def ui_image() -> str:
    return _build("ui")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """A folder mounted at the same path in the containers: the embedded storage, pods' inputs, clips."""
    return _shared_folder(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def cpu_container(cpu_image, shared):
    """One working container for the module's commands (vfs storage copies the whole image per container)."""
    env = {"STORAGE_ADAPTER": "local", "STEREO_SPOT_HOME": str(shared / "home"),
           "STEREO_SPOT_WORKDIR": str(shared / "work")}
    container = buildah.Container(cpu_image, volumes=[f"{shared}:{shared}"], env=env)
    yield container
    container.remove()


def _shared_folder(path: Path) -> Path:
    """A folder the image's user can write, mounted at the same path inside (so keys and paths agree)."""
    path.mkdir(parents=True, exist_ok=True)
    for folder in [path, *path.parents]:
        if folder == Path(folder.anchor) or folder == Path("/tmp"):
            break
        os.chmod(folder, os.stat(folder).st_mode | 0o711)  # traversable, as the mount point's parents are
    os.chown(path, UID, UID)
    return path


def _chown_tree(path: Path) -> None:
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(folder, name), UID, UID)
    os.chown(path, UID, UID)


class ImageArgo(ArgoEmulator):
    """The Argo emulator (its DAG walk and retry strategies) with each pod run inside a container of the image:
    the template's own command, args and env, the substituted inputs file where Argo puts it, and the pod's
    /tmp (where the Hera runner writes output parameters) in a mounted folder of its own."""

    def __init__(self, workdir: Path, container: buildah.Container):
        super().__init__(workdir)
        self.container = container
        self.images: list[str] = []

    def _attempt(self, template_name: str, args: dict[str, str], label: str, run: Run, attempt: int) \
            -> tuple[bool, str, int]:
        template = TEMPLATES[template_name]
        script = template["script"]
        self.images.append(script["image"])
        inputs = [{"name": p["name"], "value": args.get(p["name"], p.get("default"))}
                  for p in template["inputs"]["parameters"]]
        pod = f"pod-{len(run.pods)}"
        run.pods.append(label)
        source = self.workdir / f"{pod}.json"
        source.write_text(json.dumps(inputs))
        termination = self.workdir / f"{pod}.termination-log"
        termination.write_text("")
        pod_tmp = _shared_folder(self.workdir / f"{pod}-tmp")

        def local(path: str) -> str:
            return str(pod_tmp / path[len("/tmp/"):]) if path.startswith("/tmp/") else path

        _chown_tree(self.workdir)
        env = {e["name"]: local(e["value"]) for e in script.get("env", []) if e["name"] != "STEREO_SPOT_MODEL_CACHE"}
        saved = dict(self.container.env)
        self.container.env.update({**env, TERMINATION_LOG_ENV: str(termination)})
        try:
            proc = self.container.run([*script["command"], *script["args"], str(source)])
        finally:
            self.container.env.clear()
            self.container.env.update(saved)
        if proc.returncode != 0:
            message = termination.read_text() or (proc.stderr.strip().splitlines() or [""])[-1]
            run.failures.append({"displayName": label, "message": f"Error (exit code {proc.returncode}): {message}",
                                 "templateName": template_name, "phase": "Failed", "podName": pod,
                                 "finishedAt": datetime.now(UTC).isoformat(), "task": label.split("(")[0],
                                 "exitCode": proc.returncode, "stderr": proc.stderr[-3000:]})
            return False, proc.stdout, proc.returncode
        outputs = {p["name"]: Path(local(p["valueFrom"]["path"])).read_text()
                   for p in template.get("outputs", {}).get("parameters", [])}
        if outputs:
            run.parameters[label.split("(")[0]] = outputs
        return True, proc.stdout.strip(), 0


def test_the_cpu_image_is_non_root_labelled_and_carries_the_license(cpu_image, cpu_container):
    config = buildah.image_config(cpu_image)
    assert config["User"].split(":")[0] == str(UID)
    labels = config["Labels"]
    assert labels["org.opencontainers.image.revision"] == buildah.git_revision()
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    proc = cpu_container.run(["sh", "-c", "id -u && python -c 'import torch; print(torch.__version__)' "
                                          "&& head -3 /opt/stereo-spot/LICENSE && stereo-spot --version"])
    assert proc.returncode == 0, proc.stderr
    uid, torch_version, *rest = proc.stdout.split("\n")
    assert uid == str(UID)
    assert torch_version == f"{_locked_torch()}+cpu"  # the lock's version, CPU build
    assert "Apache License" in "\n".join(rest)
    # Kubeflow's container components: each compiled executor's command (the image's `stereo-spot step <name>`)
    # exists in the image, and the image has no kfp (the steps are its own commands; kfp only compiles them)
    spec = next(yaml.safe_load_all((ROOT / "manifests" / "generated" / "kfp-pipeline.yaml").read_text()))
    commands = [executor["container"]["command"] for executor in spec["deploymentSpec"]["executors"].values()]
    assert commands and all(command[:2] == ["stereo-spot", "step"] for command in commands), commands
    checks = " && ".join(f"{' '.join(command)} --help >/dev/null" for command in commands)
    proc = cpu_container.run(["sh", "-ec", f'{checks} && python -P -c "import importlib.util, sys; '
                                           'import stereo_spot.components.cli, stereo_spot.components.chunk, '
                                           'stereo_spot.components.concat, stereo_spot.components.fail, '
                                           'stereo_spot.components.convert; '
                                           'sys.exit(\'kfp is installed\' if importlib.util.find_spec(\'kfp\') '
                                           'else 0)" && echo ok'])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_the_cpu_image_runs_the_compiled_workflow(cpu_container, shared):
    """The whole DAG with every pod in the image: chunk → convert × 2 → concat, the 3D video checked, and the
    exit handler's pod for a bad upload (exit code 2, the job failed with its reason)."""
    backend = local_backend(Path(cpu_container.env["STEREO_SPOT_HOME"]))
    _shared_folder(Path(cpu_container.env["STEREO_SPOT_WORKDIR"]))
    pods = _shared_folder(shared / "pods")
    clip = make_clip(shared / "clip.mp4", seconds=SECONDS, fps=FPS, size=SIZE, gop=6)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "clip")
    steps.store_source(backend, job.job_id, clip)
    key = keys.input_key(job.job_id)
    bad = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "notes")
    (shared / "notes.mp4").write_bytes(b"not a video at all " * 64)
    steps.store_source(backend, bad.job_id, shared / "notes.mp4")
    _chown_tree(shared)

    argo = ImageArgo(pods, cpu_container)
    started = time.monotonic()
    run = argo.submit(backend.input_bucket, key.replace("/", "%2F"))  # as the Sensor passes it
    print(f"\nworkflow in the cpu image: {time.monotonic() - started:.1f} s")
    assert run.status == "Succeeded", run.failures
    assert run.pods == ["chunk", "convert(0:0)", "convert(1:1)", "concat"]
    assert {image.rsplit(":", 1)[0].rsplit("/", 1)[-1] for image in argo.images} == {"stereo-spot-cpu",
                                                                                     "stereo-spot-gpu"}
    done = backend.jobs.get(job.job_id)
    assert done.status == JobStatus.COMPLETED and done.total_segments == 2
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
    source, converted = video_facts(clip), video_facts(final)
    assert converted["frames"] == source["frames"] == SECONDS * FPS
    assert (converted["width"], converted["height"]) == (2 * SIZE[0], SIZE[1])
    assert converted["audio"] == 1
    assert abs(converted["duration"] - source["duration"]) <= 1 / FPS + 1e-6

    failed = argo.submit(backend.input_bucket, keys.input_key(bad.job_id))
    assert failed.status == "Failed" and failed.pods[-2:] == ["chunk", "mark-failed"]
    assert failed.failures[0]["exitCode"] == 2, failed.failures
    reason = backend.jobs.get(bad.job_id).failure_reason
    assert backend.jobs.get(bad.job_id).status == JobStatus.FAILED and reason.startswith("chunk: ")


def test_the_cpu_image_converts_to_spatial_video(cpu_container, shared, backend):
    """--format spatial in the pods (the workflow's format parameter): chunk → convert × 2 → concat in the image,
    whose convert runs the multiview x265 the image built; the result, decoded here, has both views in every frame,
    each ≥ 35 dB from the eye the side-by-side output of the same clip carries (converted here, outside the
    image), and Apple's boxes. Caught: an image without the encoder (the job fails: "needs x265 built with
    multiview"), one whose x265 cannot run there (a missing library), a join that loses the second view."""
    backend_in_image = local_backend(Path(cpu_container.env["STEREO_SPOT_HOME"]))
    _shared_folder(Path(cpu_container.env["STEREO_SPOT_WORKDIR"]))
    # 24 fps, as check_spatial times the frames; two segments of 0.5 s, so the result is a join
    clip = make_clip(shared / "spatial-clip.mp4", seconds=1.0, fps=24, size=SIZE, gop=6)
    job = steps.create_job(backend_in_image, ConversionSettings(segment_seconds=0.5), "spatial clip")
    steps.store_source(backend_in_image, job.job_id, clip)
    _chown_tree(shared)

    started = time.monotonic()
    run = ImageArgo(_shared_folder(shared / "spatial-pods"), cpu_container).submit(
        backend_in_image.input_bucket, keys.input_key(job.job_id), format="spatial")
    print(f"\nspatial workflow in the cpu image: {time.monotonic() - started:.1f} s")
    assert run.status == "Succeeded", run.failures
    assert backend_in_image.jobs.get(job.job_id).settings.output_format == OutputFormat.SPATIAL
    final = backend_in_image.objects.local_path(backend_in_image.output_bucket, keys.final_key(job.job_id))

    reference = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "side by side")
    steps.store_source(backend, reference.job_id, clip)
    run_job(backend, reference.job_id, workers=1)
    with av.open(str(backend.objects.local_path(backend.output_bucket, keys.final_key(reference.job_id)))) as sbs:
        packed = [frame_to_rgb(frame) for frame in sbs.decode(video=0)]
    width = SIZE[0]
    check_spatial(final, [f[:, :width] for f in packed], [f[:, width:] for f in packed])
    assert video_facts(final)["audio"] == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_ui_image_answers_the_deployments_health_check(ui_image, tmp_path):
    deployment = next(d for d in yaml.safe_load_all((ROOT / "manifests" / "base" / "ui.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    # the sign-in proxy's probe, which it passes through to the app without a session
    probe = containers["oauth2-proxy"]["readinessProbe"]["httpGet"]["path"]
    args = list(containers["ui"]["args"])  # the app container's own command, on a free loopback port here
    port = _free_port()
    args[args.index("--address") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    home = _shared_folder(tmp_path / "home")
    container = buildah.Container(ui_image, env={"STORAGE_ADAPTER": "local", "STEREO_SPOT_HOME": str(home)})
    try:
        with container.serve(args) as server:
            deadline = time.monotonic() + 240
            body = None
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=5) as response:
                        body = response.status, response.read().decode()
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(1)
            if body is None:
                server.terminate()
                pytest.fail(f"no answer on {probe}: {server.stdout.read()[-3000:] if server.stdout else ''}")
            assert body == (200, "ok")
    finally:
        container.remove()
