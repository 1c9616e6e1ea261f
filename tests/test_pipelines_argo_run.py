"""The compiled WorkflowTemplate run the way Argo runs it, on the embedded storage: each script template's
command + args + a file holding ``{{inputs.parameters}}`` (``python -m hera.workflows.runner -e
components.<step>:<function> <inputs>``), stdout as ``outputs.result``, ``withParam`` fan-out over chunk's
result, each template's ``retryStrategy``, the termination message as the node message, and the onExit handler
with workflow.status/failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import pytest
import yaml

from stereo_spot import keys, steps
from stereo_spot.components._common import TERMINATION_LOG_ENV
from stereo_spot.media import mvhevc, spatial, vexu
from stereo_spot.media.mvhevc import multiview_x265
from stereo_spot.models import ConversionSettings, JobStatus
from tests.media_fixtures import make_clip

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = yaml.safe_load((ROOT / "manifests" / "generated" / "workflowtemplate.yaml").read_text())
TEMPLATES = {t["name"]: t for t in TEMPLATE["spec"]["templates"]}
SIZE, FPS, SECONDS = (160, 96), 12, 2.0


@dataclass
class Run:
    status: str = "Succeeded"
    failures: list[dict] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> its output parameters
    pods: list[str] = field(default_factory=list)


class ArgoEmulator:
    """Just enough of the Argo controller to walk the compiled DAG: parameter substitution, withParam,
    depends, when, onExit. Pods are subprocesses on this machine."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None,
                 attempt_env: Callable[[str, int], dict[str, str]] | None = None):
        self.workdir = workdir
        self.env = env or {}  # the pods' environment on top of this process's
        self.attempt_env = attempt_env or (lambda template, attempt: {})  # per template and attempt (0, 1, ...)

    def submit(self, bucket: str, key: str, **optional: str) -> Run:
        # a parameter from a ConfigMap takes its default when the key is not there (operator.go
        # setGlobalParameters); this emulator has no ConfigMaps
        params = {p["name"]: p.get("value", (p.get("valueFrom") or {}).get("default"))
                  for p in TEMPLATE["spec"]["arguments"]["parameters"]}
        params.update({"bucket": bucket, "key": key, **optional})
        assert all(v is not None for v in params.values()), params
        run = Run()
        self.dag(TEMPLATE["spec"]["entrypoint"], params, run)
        self.on_exit(params, run)
        return run

    def on_exit(self, params: dict, run: Run) -> None:
        status = run.status
        self.dag(TEMPLATE["spec"]["onExit"], params, run, exit_handler=True)
        run.status = status

    def dag(self, name: str, params: dict, run: Run, exit_handler: bool = False) -> None:
        for task in TEMPLATES[name]["dag"]["tasks"]:
            if not exit_handler and run.status != "Succeeded":
                return  # failFast: nothing after a failed task starts
            scope = {"workflow.parameters." + k: v for k, v in params.items()}
            scope.update({"workflow.status": run.status, "workflow.failures": json.dumps(run.failures),
                          "workflow.name": "stereo-spot-test"})
            scope.update({f"tasks.{t}.outputs.result": r for t, r in run.results.items()})
            scope.update({f"tasks.{t}.outputs.parameters.{n}": v for t, out in run.parameters.items()
                          for n, v in out.items()})
            if "when" in task:
                left, op, right = self._sub(task["when"], scope).partition(" != ")
                if not op or left.strip() == right.strip():
                    continue
            if "depends" in task:
                assert task["depends"] in run.results or task["depends"] in {f.get("task") for f in run.failures}
            items = json.loads(self._sub(task["withParam"], scope)) if "withParam" in task else [None]
            results = []
            for index, item in enumerate(items):
                args = {p["name"]: self._sub(p["value"], {**scope, "item": "" if item is None else str(item)})
                        for p in task["arguments"]["parameters"]}
                label = task["name"] if item is None else f"{task['name']}({index}:{item})"
                ok, stdout = self._pod(task["template"], args, label, run)
                results.append(stdout)
                if not ok:
                    run.status = "Failed"
                    break
            if run.status == "Succeeded" or exit_handler:
                run.results[task["name"]] = results[0] if len(results) == 1 and "withParam" not in task else ""

    @staticmethod
    def _sub(text: str, scope: dict[str, str]) -> str:
        return re.sub(r"\{\{([^}=][^}]*)\}\}", lambda m: scope[m.group(1).strip()], text)

    def _pod(self, template_name: str, args: dict[str, str], label: str, run: Run) -> tuple[bool, str]:
        """One node: its first pod and the retries its retryStrategy allows. A pod that exits non-zero is a
        Failure (an Error is the controller's or the init/wait containers'): `OnError` does not retry it."""
        strategy = TEMPLATES[template_name].get("retryStrategy", {})
        limit = int(strategy.get("limit", 0))
        retried = strategy.get("retryPolicy", "OnFailure") in ("Always", "OnFailure")
        attempt = 0
        while True:
            ok, stdout, exit_code = self._attempt(template_name, args, label if attempt == 0 else
                                                  f"{label}(retry {attempt})", run, attempt)
            if ok or not retried or attempt >= limit or not self._expression(strategy, exit_code):
                return ok, stdout
            attempt += 1

    @staticmethod
    def _expression(strategy: dict, exit_code: int) -> bool:
        expression = strategy.get("expression")
        if expression is None:
            return True
        match = re.fullmatch(r"lastRetry\.exitCode != '(-?\d+)'", expression)
        assert match, f"the emulator does not know the retry expression {expression!r}"
        return str(exit_code) != match.group(1)

    def _attempt(self, template_name: str, args: dict[str, str], label: str, run: Run, attempt: int) \
            -> tuple[bool, str, int]:
        template = TEMPLATES[template_name]
        script = template["script"]
        inputs = []
        for param in template["inputs"]["parameters"]:
            value = args.get(param["name"], param.get("default"))
            assert value is not None, f"{template_name}: no value for input {param['name']}"
            inputs.append({"name": param["name"], "value": value})
        assert script["source"] == "{{inputs.parameters}}"
        pod = f"pod-{len(run.pods)}"
        run.pods.append(label)
        source = self.workdir / f"{pod}.json"  # Argo writes the substituted source to /argo/staging/script
        source.write_text(json.dumps(inputs))
        termination = self.workdir / f"{pod}.termination-log"
        termination.write_text("")
        # the pod's own /tmp (where the Hera runner writes output parameters) is a folder of its own here
        pod_tmp = self.workdir / f"{pod}-tmp"

        def local(path: str) -> str:
            return str(pod_tmp / path[len("/tmp/"):]) if path.startswith("/tmp/") else path

        script_env = {e["name"]: local(e["value"]) for e in script.get("env", [])}
        command = [sys.executable if part == "python" else part for part in script["command"]]
        proc = subprocess.run([*command, *script["args"], str(source)], capture_output=True, text=True,
                              timeout=600, env={**os.environ, **script_env, **self.env,
                                                **self.attempt_env(template_name, attempt),
                                                TERMINATION_LOG_ENV: str(termination)})
        if proc.returncode != 0:
            message = termination.read_text() or proc.stderr.strip().splitlines()[-1]
            run.failures.append({"displayName": label, "message": f"Error (exit code {proc.returncode}): {message}",
                                 "templateName": template_name, "phase": "Failed", "podName": pod,
                                 "finishedAt": datetime.now(UTC).isoformat(), "task": label.split("(")[0],
                                 "exitCode": proc.returncode})
            return False, proc.stdout, proc.returncode
        outputs = {p["name"]: Path(local(p["valueFrom"]["path"])).read_text()
                   for p in template.get("outputs", {}).get("parameters", [])}
        if outputs:  # read by the executor from the files; a missing one fails the node
            run.parameters[label.split("(")[0]] = outputs
        return True, proc.stdout.strip(), 0


def video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for packet in container.demux(video) if packet.size)
        duration = float(video.duration * video.time_base) if video.duration else float(container.duration / 1e6)
        return {"frames": frames, "width": video.codec_context.width, "height": video.codec_context.height,
                "audio": len(container.streams.audio), "duration": duration, "rate": Fraction(video.average_rate)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=SECONDS, fps=FPS, size=SIZE, gop=6)


def _upload(backend, clip: Path, **settings) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0, **settings), "clip")
    steps.store_source(backend, job.job_id, clip)
    return keys.input_key(job.job_id)


@pytest.mark.slow  # over 10 s
def test_the_workflow_converts_a_clip_and_a_second_run_changes_nothing(backend, clip, tmp_path):
    argo = ArgoEmulator(tmp_path)
    key = _upload(backend, clip)
    job_id = keys.parse_input_key(key)
    # the Sensor passes the key as S3 sent it: URL-encoded
    run = argo.submit(backend.input_bucket, key.replace("/", "%2F"))
    assert run.status == "Succeeded", run.failures
    assert run.pods == ["chunk", "convert(0:0)", "convert(1:1)", "concat"]  # no exit-handler pod on success
    assert json.loads(run.parameters["chunk"]["shards"]) == [0, 1]
    assert run.results["concat"] == keys.final_key(job_id)
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.COMPLETED and job.total_segments == 2
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))
    source, converted = video_facts(clip), video_facts(final)
    assert converted["frames"] == source["frames"] == SECONDS * FPS
    assert (converted["width"], converted["height"]) == (2 * SIZE[0], SIZE[1])  # full side-by-side
    assert converted["audio"] == 1 and converted["rate"] == FPS
    assert abs(converted["duration"] - source["duration"]) <= 1 / FPS + 1e-6
    before = (final.stat().st_mtime_ns, final.read_bytes())

    again = argo.submit(backend.input_bucket, key)  # a duplicate event, after the first run was deleted
    assert again.status == "Succeeded", again.failures
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert (final.stat().st_mtime_ns, final.read_bytes()) == before
    # the converted segments were removed after the join; a duplicate run does not bring them back
    assert backend.objects.list_keys(backend.output_bucket, f"jobs/{job_id}/") == sorted(
        [keys.final_key(job_id), keys.report_key(job_id)])
    assert len(backend.completions.query_by_job(job_id)) == 2


def test_one_gpu_worker_converts_every_segment_in_one_pod(backend, clip, tmp_path):
    key = _upload(backend, clip)
    job_id = keys.parse_input_key(key)
    run = ArgoEmulator(tmp_path).submit(backend.input_bucket, key, **{"gpu-workers": "1"})
    assert run.status == "Succeeded", run.failures
    assert run.pods == ["chunk", "convert(0:0)", "concat"]  # one pod, one model load, for both segments
    assert json.loads(run.parameters["chunk"]["shards"]) == [0]
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert sorted(c.segment_index for c in backend.completions.query_by_job(job_id)) == [0, 1]


@pytest.mark.slow  # over 10 s
def test_workflow_parameters_choose_the_format(backend, clip, tmp_path):
    key = _upload(backend, clip)
    run = ArgoEmulator(tmp_path).submit(backend.input_bucket, key, format="htb", divergence="3")
    assert run.status == "Succeeded", run.failures
    job = backend.jobs.get(keys.parse_input_key(key))
    assert job.settings.output_format == "htb" and job.settings.divergence == 3.0
    facts = video_facts(backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id)))
    assert (facts["width"], facts["height"]) == SIZE and facts["frames"] == SECONDS * FPS


@pytest.mark.slow  # over 10 s
@pytest.mark.skipif(multiview_x265() is None, reason="needs x265 with multiview (scripts/setup --spatial)")
def test_workflow_parameters_carry_the_spatial_videos_camera(backend, clip, tmp_path):
    """format=spatial with baseline-mm and hfov: the job takes them and the joined file declares them, with both
    views in every frame. Caught: a parameter not passed from the workflow to chunk, or not applied to the job."""
    key = _upload(backend, clip)
    run = ArgoEmulator(tmp_path).submit(backend.input_bucket, key, format="spatial",
                                        **{"baseline-mm": "58.5", "hfov": "70"})
    assert run.status == "Succeeded", run.failures
    job = backend.jobs.get(keys.parse_input_key(key))
    assert (job.settings.output_format, job.settings.baseline_mm, job.settings.hfov) == ("spatial", 58.5, 70.0)
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
    declared = vexu.read_spatial_video(final)
    assert declared is not None and (declared.baseline_mm, declared.hfov_degrees) == (58.5, 70.0)
    # the convergence is in the pixels: no disparity adjustment is declared (docs/quality.md, "No dadj")
    assert b"cmfy" not in spatial.entry_boxes(final)[b"vexu"] and declared.disparity_adjustment == 0.0
    for view in (mvhevc.BASE_VIEW, mvhevc.SECOND_VIEW):
        assert sum(1 for _ in mvhevc.decode_view(final, view)) == SECONDS * FPS, view


def test_a_bad_upload_fails_the_job_with_a_readable_reason(backend, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_bytes(b"not a video at all " * 64)
    key = _upload(backend, notes)
    run = ArgoEmulator(tmp_path).submit(backend.input_bucket, key)
    assert run.status == "Failed" and run.pods == ["chunk", "mark-failed"]
    [failure] = run.failures
    assert failure["exitCode"] == 2  # a user error: the retry expression would not retry it
    job = backend.jobs.get(keys.parse_input_key(key))
    assert job.status == JobStatus.FAILED
    assert job.failure_reason.startswith("chunk: ") and job.failure_reason in failure["message"]


UNREACHABLE = {"STORAGE_ADAPTER": "aws", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens there
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.mark.slow  # over 10 s
def test_every_step_retries_a_transient_failure_and_the_job_completes(backend, clip, tmp_path):
    """Each step's first pod cannot make its scratch folder (a full or broken disk: exit 1, not a user error);
    the retry strategy runs it again and the run succeeds."""
    key = _upload(backend, clip)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    def first_attempt_fails(template: str, attempt: int) -> dict[str, str]:
        return {"STEREO_SPOT_WORKDIR": str(blocker / "scratch")} if attempt == 0 else {}

    run = ArgoEmulator(tmp_path, attempt_env=first_attempt_fails).submit(backend.input_bucket, key)
    assert run.status == "Succeeded", run.failures
    assert run.pods == ["chunk", "chunk(retry 1)", "convert(0:0)", "convert(0:0)(retry 1)", "convert(1:1)",
                        "convert(1:1)(retry 1)", "concat", "concat(retry 1)"]
    assert {f["exitCode"] for f in run.failures} == {1}
    assert backend.jobs.get(keys.parse_input_key(key)).status == JobStatus.COMPLETED


def test_a_step_that_keeps_failing_is_reported_by_the_exit_handler(backend, clip, tmp_path):
    """A store that cannot be reached is not a user error: the step exits 1, is retried up to its limit, leaves
    the job as it is, and once the run has failed the exit handler — itself retried after a first attempt that
    could not reach the store either — records the step's message from workflow.failures."""
    key = _upload(backend, clip)

    def stores(template: str, attempt: int) -> dict[str, str]:
        return UNREACHABLE if template == "chunk" or attempt == 0 else {}

    run = ArgoEmulator(tmp_path, attempt_env=stores).submit(backend.input_bucket, key)
    assert run.status == "Failed"
    limit = TEMPLATES["chunk"]["retryStrategy"]["limit"]
    assert run.pods == ["chunk"] + [f"chunk(retry {i})" for i in range(1, limit + 1)] + \
        ["mark-failed", "mark-failed(retry 1)"]
    assert {f["exitCode"] for f in run.failures} == {1}
    job = backend.jobs.get(keys.parse_input_key(key))
    assert job.status == JobStatus.FAILED
    assert job.failure_reason.startswith("chunk"), job.failure_reason
    assert "Error (exit code 1): chunk: " in job.failure_reason and "127.0.0.1:9" in job.failure_reason
