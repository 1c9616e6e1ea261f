"""The embedded pipeline end to end: steps, runner and CLI on the local storage with generated clips."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings, JobStatus, OutputFormat
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample

SIZE = (160, 96)
FPS = 24


def _video_facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = list(container.streams.audio)
        frames = sum(1 for p in container.demux(video) if p.size)
        duration = float(video.duration * video.time_base) if video.duration else float(container.duration / 1e6)
        return {"frames": frames, "width": video.codec_context.width, "height": video.codec_context.height,
                "audio": len(audio), "duration": duration, "rate": Fraction(video.average_rate)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0, size=SIZE, fps=FPS, gop=6)


def _submit(backend, source: Path, **settings) -> str:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5, **settings), "clip")
    steps.store_source(backend, job.job_id, source)
    return job.job_id


def test_cli_converts_a_clip_in_parallel_segments(home, clip, tmp_path):
    out = tmp_path / "clip-3d.mp4"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--segment-seconds", "0.5",
                                      "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    source, converted = _video_facts(clip), _video_facts(out)
    assert converted["frames"] == source["frames"] == 2 * FPS
    assert (converted["width"], converted["height"]) == (2 * SIZE[0], SIZE[1])
    assert converted["audio"] == 1
    assert abs(converted["duration"] - source["duration"]) <= 1 / FPS + 1e-6
    assert converted["rate"] == FPS


@pytest.mark.parametrize("fmt,size", [
    (OutputFormat.HSBS, SIZE),
    (OutputFormat.TB, (SIZE[0], 2 * SIZE[1])),
    (OutputFormat.HTB, SIZE),
    (OutputFormat.ANAGLYPH, SIZE),
])
def test_every_format_has_its_dimensions(backend, clip, fmt, size):
    job_id = _submit(backend, clip, output_format=fmt)
    job = run_job(backend, job_id, workers=1)
    assert job.status == JobStatus.COMPLETED and job.completed_at is not None
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))
    facts = _video_facts(final)
    assert (facts["width"], facts["height"]) == size
    assert facts["frames"] == 2 * FPS and facts["audio"] == 1


def test_resume_converts_only_missing_segments(backend, clip):
    job_id = _submit(backend, clip)
    result = steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    assert result.total_segments == 4
    first = steps.convert(backend, job_id, 0)
    # the run is "interrupted" here; running the job again must keep segment 0 as it is
    job = run_job(backend, job_id, workers=1)
    assert job.status == JobStatus.COMPLETED
    completions = backend.completions.query_by_job(job_id)
    assert [c.segment_index for c in completions] == [0, 1, 2, 3]
    assert completions[0].completed_at == first.completed_at


def test_steps_are_idempotent(backend, clip):
    job_id = _submit(backend, clip)
    first = steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    again = steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    assert first == again
    for index in first.segment_indices:
        steps.convert(backend, job_id, index)
    steps.convert(backend, job_id, 1)
    job = steps.concat(backend, job_id)
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))
    size = final.stat().st_size
    assert steps.concat(backend, job_id).completed_at == job.completed_at
    assert steps.chunk(backend, backend.input_bucket, keys.input_key(job_id)) == first
    assert final.stat().st_size == size
    assert backend.jobs.get(job_id).status == JobStatus.COMPLETED
    assert steps.fail(backend, job_id, "late duplicate failed").status == JobStatus.COMPLETED
    # the intermediates are removed after the join: the final video and the report are what is left
    assert sorted(backend.objects.list_keys(backend.output_bucket, f"jobs/{job_id}/")) == sorted(
        [keys.final_key(job_id), keys.report_key(job_id)])
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job_id)) == []
    steps.convert(backend, job_id, 2)  # a late duplicate convert of a completed job: its record stands


def test_concat_refuses_missing_segments(backend, clip):
    job_id = _submit(backend, clip)
    steps.chunk(backend, backend.input_bucket, keys.input_key(job_id))
    steps.convert(backend, job_id, 0)
    with pytest.raises(steps.StepError, match="3 of 4 segments"):
        steps.concat(backend, job_id)


def test_window_converts_part_of_the_clip(backend, clip):
    job_id = _submit(backend, clip, start=0.5, duration=1.0)
    run_job(backend, job_id, workers=1)
    facts = _video_facts(backend.objects.local_path(backend.output_bucket, keys.final_key(job_id)))
    assert facts["frames"] == FPS
    assert abs(facts["duration"] - 1.0) <= 1 / FPS + 1e-6


def test_delete_removes_objects_and_marks_the_job(backend, clip):
    job_id = _submit(backend, clip)
    run_job(backend, job_id, workers=1)
    steps.delete_job(backend, job_id)
    assert backend.jobs.get(job_id).status == JobStatus.DELETED
    assert backend.objects.list_keys(backend.output_bucket, f"jobs/{job_id}/") == []
    assert backend.objects.list_keys(backend.input_bucket, f"segments/{job_id}/") == []


def test_jobs_command_lists_the_local_store(home, clip, backend):
    job_id = _submit(backend, clip)
    run_job(backend, job_id, workers=1)
    result = CliRunner().invoke(app, ["jobs"])
    assert result.exit_code == 0, result.output
    assert job_id in result.stdout and "completed" in result.stdout


def test_the_progress_total_is_never_below_the_frames_done():
    from stereo_spot.cli.main import progress_total

    assert progress_total(None, 0) is None  # unknown until chunk has probed the video
    assert progress_total(80, 40) == 80
    assert progress_total(80, 81) == 81  # the container's count (or duration × fps) was one short
