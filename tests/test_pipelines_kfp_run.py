"""The compiled Kubeflow pipeline (manifests/generated/kfp-pipeline.yaml) end to end under kfp.local on the
embedded storage: kfp's own local launcher resolves each container component's placeholders (inputs, the
``OutputPath`` files, the ParallelFor item, ``dsl.Collected``, the exit task's final status) and runs the
resulting command — the image's ``stereo-spot step <name>`` — as a subprocess, then reads the output files, as the
KFP launcher does in a pod. Without a cluster, without installing anything, and with kfp made unimportable for
the steps, as in an image without kfp."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from stereo_spot import keys, steps
from stereo_spot.models import ConversionSettings, JobStatus
from tests.media_fixtures import make_clip
from tests.test_pipelines_argo_run import video_facts

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "manifests" / "generated" / "kfp-pipeline.yaml"
SIZE, FPS, SECONDS = (160, 96), 12, 2.0


@pytest.fixture
def local_kfp(home, tmp_path, monkeypatch):
    import kfp.local
    from kfp import components
    from kfp.local import subprocess_task_handler

    # kfp.local's SubprocessRunner refuses container components only because it cannot provide their image; here
    # the image's entry point is installed (kfp's own tests lift the same check to run container components)
    monkeypatch.setattr(subprocess_task_handler.SubprocessTaskHandler, "validate_not_container_component",
                        lambda self, full_command: None)
    # kfp.local's ParallelFor finds its items only in a task output named `Output` (a Python component's return
    # value); the KFP backend iterates over any named output. The same lookup, for our named `shards`:
    from kfp.local import io

    parent_input = io.IOStore.get_parent_input

    def get_parent_input(self, key):
        try:
            return parent_input(self, key)
        except ValueError:
            task, _, output = key.removeprefix("pipelinechannel--").rpartition("-")
            return self.get_task_output(task, output)

    monkeypatch.setattr(io.IOStore, "get_parent_input", get_parent_input)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # a step that imported kfp would fail here: the step images need none
    blocker = tmp_path / "no-kfp"
    (blocker / "kfp").mkdir(parents=True)
    (blocker / "kfp" / "__init__.py").write_text("raise ImportError('kfp is not installed in the step image')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(blocker), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"),
                   raise_on_error=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-Python base image", "accelerator ignored locally"
        yield components.load_component_from_file(str(PIPELINE))


def _run(pipeline, **arguments):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline(**arguments)


@pytest.mark.slow  # over 10 s
def test_the_kfp_pipeline_converts_a_clip_and_a_second_run_changes_nothing(local_kfp, backend, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=SECONDS, fps=FPS, size=SIZE, gop=6)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "clip")
    steps.store_source(backend, job.job_id, clip)
    key = keys.input_key(job.job_id)

    _run(local_kfp, bucket=backend.input_bucket, key=key)
    stored = backend.jobs.get(job.job_id)
    assert stored.status == JobStatus.COMPLETED, stored.failure_reason
    assert stored.total_segments == 2 and len(backend.completions.query_by_job(job.job_id)) == 2
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
    source, converted = video_facts(clip), video_facts(final)
    assert converted["frames"] == source["frames"] == SECONDS * FPS
    assert (converted["width"], converted["height"]) == (2 * SIZE[0], SIZE[1])
    assert converted["audio"] == 1 and converted["rate"] == FPS
    assert abs(converted["duration"] - source["duration"]) <= 1 / FPS + 1e-6
    before = (final.stat().st_mtime_ns, final.read_bytes())
    # the run's visualisations: concat's Markdown (the comfort report) and HTML (the report under a still)
    root = tmp_path / "kfp-root"
    (report,) = [p for p in root.rglob("report") if p.is_file()]
    (preview,) = [p for p in root.rglob("preview") if p.is_file()]
    assert "| comfort | value |" in report.read_text() and job.job_id in report.read_text()
    assert "data:image/png;base64," in preview.read_text()

    _run(local_kfp, bucket=backend.input_bucket, key=key, format="anaglyph")  # too late to change: completed
    again = backend.jobs.get(job.job_id)
    assert again.status == JobStatus.COMPLETED and again.settings.output_format == "sbs"
    assert (final.stat().st_mtime_ns, final.read_bytes()) == before
    # the converted segments were removed after the join; the second run does not bring them back
    assert backend.objects.list_keys(backend.output_bucket, f"jobs/{job.job_id}/") == sorted(
        [keys.final_key(job.job_id), keys.report_key(job.job_id)])


@pytest.mark.slow  # over 10 s
def test_the_exit_handler_marks_a_failed_run(local_kfp, backend, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_bytes(b"not a video at all " * 64)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "notes")
    steps.store_source(backend, job.job_id, notes)
    _run(local_kfp, bucket=backend.input_bucket, key=keys.input_key(job.job_id))
    stored = backend.jobs.get(job.job_id)
    assert stored.status == JobStatus.FAILED
    assert stored.failure_reason.startswith("chunk: ")  # the step's own reason, kept by the exit task


@pytest.mark.slow  # over 10 s
def test_the_exit_handler_records_an_unexpected_failure(local_kfp, backend, tmp_path, monkeypatch):
    """chunk cannot make its scratch folder (not a user error): the job stays as it is until the exit task,
    which runs after the failed run and marks the job failed."""
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0, fps=FPS, size=SIZE, gop=6)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "clip")
    steps.store_source(backend, job.job_id, clip)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("STEREO_SPOT_WORKDIR", str(blocker / "scratch"))
    _run(local_kfp, bucket=backend.input_bucket, key=keys.input_key(job.job_id))
    stored = backend.jobs.get(job.job_id)
    assert stored.status == JobStatus.FAILED
    assert stored.failure_reason.startswith("the Kubeflow run ") and " ended failed" in stored.failure_reason


@pytest.mark.parametrize("status,expected", [
    # the KFP backend's driver: camelCase names, the execution state
    ('{"state": "COMPLETE", "pipelineJobResourceName": "runs/r-1", "pipelineTaskName": "exit-handler-1", '
     '"error": {}}', ("COMPLETE", "", "runs/r-1")),
    ('{"state": "FAILED", "pipelineJobResourceName": "runs/r-2", "error": {"code": 9, "message": "chunk failed"}}',
     ("FAILED", "chunk failed", "runs/r-2")),
    # kfp.local: snake_case names
    ('{"state": "FAILED", "pipeline_job_resource_name": "local-1", "error": {"code": 1, "message": "m"}}',
     ("FAILED", "m", "local-1")),
    ("not json", ("not json", "", "")),
])
def test_the_exit_task_reads_the_final_status_as_both_launchers_pass_it(status, expected, monkeypatch):
    from stereo_spot.components import fail

    seen = []
    monkeypatch.setattr(fail, "fail_kfp", lambda key, state, message, run: seen.append((state, message, run)))
    fail.fail_kfp_status(f"input/{'0' * 8}-0000-0000-0000-{'0' * 12}/source.mp4", status)
    assert seen == [expected]
