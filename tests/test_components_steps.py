"""The engine components in-process: how a step leaves its container (exit code, termination message, stdout),
the settings overrides, and the exit handlers' failure reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stereo_spot import keys, steps
from stereo_spot.components import _common, chunk, fail
from stereo_spot.components._common import EXIT_FAILURE, EXIT_USER_ERROR, StepFailed
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat

JOB = "0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55"


@pytest.fixture
def termination_log(tmp_path, monkeypatch):
    path = tmp_path / "termination-log"
    path.write_text("")
    monkeypatch.setenv(_common.TERMINATION_LOG_ENV, str(path))
    return path


def test_a_key_that_names_no_job_is_a_user_error(home, termination_log):
    with pytest.raises(StepFailed) as failed:
        chunk.chunk("stereo-spot-input", "input/holiday.mp4")
    assert failed.value.code == EXIT_USER_ERROR and failed.value.user_error
    assert termination_log.read_text() == failed.value.reason
    assert failed.value.reason.startswith("chunk: 'input/holiday.mp4' is not an input key")


def test_a_source_that_is_not_a_video_fails_the_job_at_once(backend, termination_log, tmp_path):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "notes")
    bogus = tmp_path / "notes.mp4"
    bogus.write_bytes(b"this is not a video" * 100)
    steps.store_source(backend, job.job_id, bogus)
    with pytest.raises(StepFailed) as failed:
        chunk.chunk(backend.input_bucket, keys.input_key(job.job_id))
    assert failed.value.code == EXIT_USER_ERROR
    stored = backend.jobs.get(job.job_id)
    assert stored.status == JobStatus.FAILED
    assert stored.failure_reason == failed.value.reason == termination_log.read_text()
    # the exit handler that follows keeps the step's precise reason
    fail.fail(keys.input_key(job.job_id), "Failed", json.dumps([{"displayName": "chunk", "message": "Error"}]))
    assert backend.jobs.get(job.job_id).failure_reason == failed.value.reason


def test_an_unexpected_error_asks_for_a_retry(backend, termination_log, monkeypatch):
    job = steps.create_job(backend, ConversionSettings(), "clip")

    def broken(*args, **kwargs):
        raise RuntimeError("the store timed out")

    monkeypatch.setattr(steps, "chunk", broken)
    with pytest.raises(StepFailed) as failed:
        chunk.chunk(backend.input_bucket, keys.input_key(job.job_id))
    assert failed.value.code == EXIT_FAILURE and not failed.value.user_error
    assert termination_log.read_text() == "chunk: the store timed out"
    assert backend.jobs.get(job.job_id).status == JobStatus.CREATED  # a retry may still succeed


@pytest.mark.parametrize("given,expected", [
    (("", "", ""), {}),
    (("anaglyph", " 3.5 ", ""), {"output_format": "anaglyph", "divergence": "3.5"}),
    (("tb", "", "0.2"), {"output_format": "tb", "convergence": "0.2"}),
])
def test_workflow_parameters_override_settings(given, expected):
    assert chunk.settings_overrides(*given) == expected


@pytest.mark.parametrize("given,name", [(("3d", "", ""), "output_format"), (("", "55", ""), "divergence"),
                                        (("", "", "near"), "convergence")])
def test_bad_workflow_parameters_say_which(given, name):
    with pytest.raises(Exception, match=f"invalid workflow parameter {name}="):
        chunk.settings_overrides(*given)


def test_spatial_videos_camera_is_a_workflow_parameter_judged_like_the_others():
    """Caught: baseline_mm or hfov dropped from the overrides, or passed on without the settings' range check."""
    assert chunk.settings_overrides("spatial", "", "", baseline_mm=" 58.5 ", hfov="70") == \
        {"output_format": "spatial", "baseline_mm": "58.5", "hfov": "70"}
    assert chunk.settings_overrides("", "", "", baseline_mm="", hfov="") == {}
    with pytest.raises(Exception, match="invalid workflow parameter hfov='180'"):
        chunk.settings_overrides("spatial", "", "", hfov="180")
    with pytest.raises(Exception, match="invalid workflow parameter baseline_mm='0'"):
        chunk.settings_overrides("spatial", "", "", baseline_mm="0")


def test_an_upload_without_a_job_record_gets_one(backend, tmp_path):
    source = tmp_path / "film.mp4"
    source.write_bytes(b"\0" * 1234)
    key = keys.input_key(JOB)
    backend.objects.upload_file(backend.input_bucket, key, source)
    job = steps.job_for_upload(backend, backend.input_bucket, key.replace("/", "%2F"), {"output_format": "hsbs"})
    assert job.job_id == JOB and job.settings.output_format == OutputFormat.HSBS
    assert job.source_file_size_bytes == 1234 and job.uploaded_at is not None
    # a created job takes new overrides; once chunking started its settings stay
    assert steps.job_for_upload(backend, backend.input_bucket, key, {"divergence": "4"}).settings.divergence == 4
    backend.jobs.update(JOB, status=JobStatus.CHUNKING_IN_PROGRESS)
    assert steps.job_for_upload(backend, backend.input_bucket, key, {"divergence": "1"}).settings.divergence == 4


def test_event_keys_are_url_decoded():
    assert keys.job_id_from_event_key(f"input%2F{JOB}%2Fsource.mp4") == JOB
    assert keys.job_id_from_event_key(f"input/{JOB}/source.mp4") == JOB


def test_argo_failures_become_one_readable_reason():
    failures = [
        {"displayName": "convert(1:1)", "message": "No more retries left", "templateName": "convert",
         "phase": "Failed", "finishedAt": "2026-01-01T10:00:09Z"},
        {"displayName": "convert(1:1)(2)", "message": "Error (exit code 1): convert: CUDA out of memory",
         "templateName": "convert", "phase": "Failed", "finishedAt": "2026-01-01T10:00:08Z"},
        {"displayName": "convert(1:1)(1)", "message": "pod deleted", "templateName": "convert",
         "phase": "Error", "finishedAt": "2026-01-01T10:00:02Z"},
        {"displayName": "main", "message": "child 'x' failed", "templateName": "main", "phase": "Failed"},
    ]
    reason = fail.reason_from_failures(json.dumps(failures))
    assert reason == ("convert(1:1)(2): Error (exit code 1): convert: CUDA out of memory; "
                      "convert(1:1)(1): pod deleted")
    assert "deadline" in fail.reason_from_failures("", "Failed", "stereo-spot-x")
    assert "stereo-spot-x" in fail.reason_from_failures("not json", "Error", "stereo-spot-x")


def test_the_exit_handler_marks_failed_but_never_a_completed_job(backend):
    job = steps.create_job(backend, ConversionSettings(), "clip")
    key = keys.input_key(job.job_id)
    fail.fail(key, "Succeeded", "")
    assert backend.jobs.get(job.job_id).status == JobStatus.CREATED
    fail.fail(key, "Failed", json.dumps([{"displayName": "concat", "message": "Error (exit code 1): disk full"}]))
    stored = backend.jobs.get(job.job_id)
    assert stored.status == JobStatus.FAILED and stored.failure_reason == "concat: Error (exit code 1): disk full"
    done = steps.create_job(backend, ConversionSettings(), "done")
    backend.jobs.update(done.job_id, status=JobStatus.COMPLETED)
    fail.fail_kfp(keys.input_key(done.job_id), "FAILED", "Task exit-handler-1 failed.", "run-1")
    assert backend.jobs.get(done.job_id).status == JobStatus.COMPLETED
    fail.fail("input/not-a-job.mp4", "Failed", "")  # nothing to mark, and no error


@pytest.mark.parametrize("state", ["COMPLETE", "CACHED", "SUCCEEDED"])
def test_the_kubeflow_exit_task_leaves_a_successful_run_alone(backend, state):
    """The KFP backend passes the execution state's name (``COMPLETE``) for a run that succeeded, kfp.local
    ``SUCCEEDED``: neither is a failure."""
    job = steps.create_job(backend, ConversionSettings(), "clip")
    fail.fail_kfp(keys.input_key(job.job_id), state, "", "run-1")
    assert backend.jobs.get(job.job_id).status == JobStatus.CREATED
    fail.fail_kfp(keys.input_key(job.job_id), "FAILED", "", "run-1")
    assert backend.jobs.get(job.job_id).status == JobStatus.FAILED


def test_stdout_carries_only_the_result(home, tmp_path):
    """Argo reads a script's whole stdout as its result: a step's own prints must not reach it."""
    code = ("import sys; from stereo_spot.components._common import run_step\n"
            "def action(backend, job_id):\n"
            "    print('noise from a library'); sys.stdout.flush()\n"
            "    import os; os.write(1, b'native noise\\n')\n"
            "    return [0, 1]\n"
            f"print(run_step('chunk', 'input/{JOB}/source.mp4', action))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[0, 1]\n"
    assert "noise from a library" in proc.stderr and "native noise" in proc.stderr


def test_a_bad_workflow_parameter_fails_the_job_with_its_name(backend, termination_log):
    job = steps.create_job(backend, ConversionSettings(), "clip")
    with pytest.raises(StepFailed) as failed:
        chunk.chunk(backend.input_bucket, keys.input_key(job.job_id), output_format="3d")
    assert failed.value.code == EXIT_USER_ERROR
    stored = backend.jobs.get(job.job_id)
    assert stored.status == JobStatus.FAILED and "invalid workflow parameter output_format='3d'" in \
        stored.failure_reason


def test_a_new_run_of_a_failed_job_resumes_it(backend):
    job = steps.create_job(backend, ConversionSettings(), "clip")
    steps.fail(backend, job.job_id, "convert: the GPU fell off")
    resumed = steps.job_for_upload(backend, backend.input_bucket, keys.input_key(job.job_id))
    assert resumed.status == JobStatus.CREATED and resumed.failure_reason is None
    backend.jobs.update(job.job_id, status=JobStatus.FAILED, total_segments=3, failure_reason="concat: disk full")
    resumed = steps.job_for_upload(backend, backend.input_bucket, keys.input_key(job.job_id))
    assert resumed.status == JobStatus.CHUNKING_COMPLETE and resumed.total_segments == 3


# --- GPU workers: contiguous shards of segments ----------------------------------------------------------

@pytest.mark.parametrize("total,max_workers,expected", [(1, 8, 1), (3, 8, 3), (1080, 8, 8), (9, 2, 2)])
def test_the_shard_count_is_the_gpu_workers_but_never_more_than_the_segments(total, max_workers, expected):
    assert steps.shard_count(total, max_workers) == expected


@pytest.mark.parametrize("total,count", [(1, 1), (7, 3), (1080, 8), (9, 2), (10, 10)])
def test_shards_are_contiguous_balanced_and_cover_every_segment_once(total, count):
    shards = [steps.shard_segments(total, index, count) for index in range(count)]
    assert [i for shard in shards for i in shard] == list(range(total))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(steps.StepError):
        steps.shard_segments(total, count, count)


def test_a_bad_gpu_workers_parameter_is_a_user_error():
    assert chunk.gpu_workers_parameter(" 3 ") == 3
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(steps.UserError, match="gpu-workers"):
            chunk.gpu_workers_parameter(bad)


def test_a_shard_converts_its_own_segments_in_order_and_a_retry_skips_the_completed(backend, tmp_path):
    """What a retried convert pod does: segments its reclaimed predecessor completed are not converted again,
    the rest of its shard is, and no other shard's segment is touched."""
    from tests.media_fixtures import make_clip

    clip = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=12, size=(96, 64), gop=6)
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    total = steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id)).total_segments
    assert total == 4
    first = steps.convert(backend, job.job_id, 2)  # the reclaimed pod got this far
    done_object = backend.objects.local_path(backend.output_bucket, keys.output_segment_key(job.job_id, 2))
    before = done_object.stat().st_mtime_ns
    done = steps.convert_shard(backend, job.job_id, 1, 2)
    assert [c.segment_index for c in done] == [2, 3]
    assert done[0] == first and done_object.stat().st_mtime_ns == before  # not converted twice
    assert sorted(c.segment_index for c in backend.completions.query_by_job(job.job_id)) == [2, 3]
    assert [c.segment_index for c in steps.convert_shard(backend, job.job_id, 0, 2)] == [0, 1]
    assert steps.concat(backend, job.job_id).status == JobStatus.COMPLETED


def test_the_run_outputs_show_the_report_and_a_still_of_the_final_video(backend, tmp_path):
    """What the engines' UIs show of a finished run: the comfort report's figures and warnings as Markdown, a PNG
    still taken from the final video through its presigned URL, and both on one HTML page (Kubeflow's
    visualisation). Catches a still from the wrong object, a report without its figures, or a page without the
    still."""
    import base64

    from stereo_spot.components.run_outputs import PREVIEW_STILL, REPORT_HTML, REPORT_MARKDOWN, write_run_outputs
    from tests.media_fixtures import make_clip

    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "Holiday | 2024")
    backend.jobs.update(job.job_id, status=JobStatus.COMPLETED)
    final = make_clip(tmp_path / "final.mp4", seconds=1.0, fps=12, size=(320, 96), gop=6)
    backend.objects.upload_file(backend.output_bucket, keys.final_key(job.job_id), final)
    report = {"version": 1, "job_id": job.job_id, "max_crossed_pct": 1.25, "max_uncrossed_pct": 0.5,
              "hole_ratio": 0.031, "flicker_index": 0.012, "border_violation_ratio": 0.2,
              "settings": {"divergence": 2.0, "convergence": 0.5}, "warnings": ["Too much in front."]}
    backend.objects.write_bytes(backend.output_bucket, keys.report_key(job.job_id), json.dumps(report).encode())

    written = write_run_outputs(backend, job.job_id, tmp_path / "outputs")
    assert set(written) == {REPORT_MARKDOWN, PREVIEW_STILL, REPORT_HTML}
    markdown = written[REPORT_MARKDOWN].read_text()
    assert "# Holiday | 2024" in markdown and job.job_id in markdown
    assert "| nearest 1 % in front of the screen | 1.25 % |" in markdown and "| holes filled | 3.1 % |" in markdown
    assert "- Too much in front." in markdown
    still = written[PREVIEW_STILL].read_bytes()
    assert still.startswith(b"\x89PNG")
    import av

    with av.open(str(written[PREVIEW_STILL])) as image:
        assert image.streams.video[0].codec_context.width == 320  # the final video's frame, not another
    page = written[REPORT_HTML].read_text()
    assert f"data:image/png;base64,{base64.b64encode(still).decode()}" in page and "1.25 %" in page


def test_run_outputs_of_a_job_without_a_video_or_report_say_so(backend, tmp_path):
    """A job that never finished has no still and no report: the page says so; nothing is raised."""
    from stereo_spot.components.run_outputs import PREVIEW_STILL, REPORT_HTML, write_run_outputs

    job = steps.create_job(backend, ConversionSettings(segment_seconds=1.0), "unfinished")
    written = write_run_outputs(backend, job.job_id, tmp_path / "outputs")
    assert PREVIEW_STILL not in written
    assert "No comfort report" in written[REPORT_HTML].read_text() and "No preview still" in \
        written[REPORT_HTML].read_text()
    assert write_run_outputs(backend, "1b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55", tmp_path / "none") == {}
