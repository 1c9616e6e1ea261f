"""Integrity end to end: each converted segment's size and SHA-256 are recorded when it is stored and checked
before the join; the final video's are checked before it is delivered. A damaged or missing segment is converted
again (the embedded runner) or named in the concat step's failure with its record dropped (the cluster)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.cli.main import app
from stereo_spot.integrity import SegmentsDamaged, digest
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample

SIZE, FPS = (160, 96), 24
FRAMES = 2 * FPS


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=2.0, size=SIZE, fps=FPS, gop=6)


def decoded_frames(path: Path) -> int:
    """Frames that decode; a damaged file raises (InvalidDataError) or decodes fewer."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def converted_but_not_joined(backend, source: Path) -> str:
    """A job whose run was interrupted after every segment was converted, before the join."""
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, source)
    for index in steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id)).segment_indices:
        steps.convert(backend, job.job_id, index)
    return job.job_id


def flip_bytes(path: Path) -> None:
    """Damage the middle of a file, keeping its size (what a bad disk sector or a bit flip does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def stored_segment(backend, job_id: str, index: int) -> Path:
    return backend.objects.local_path(backend.output_bucket, keys.output_segment_key(job_id, index))


def test_each_completion_records_the_stored_segments_size_and_checksum(backend, clip):
    """Breakage caught: convert not recording (or recording another file's) size and digest."""
    job_id = converted_but_not_joined(backend, clip)
    for completion in backend.completions.query_by_job(job_id):
        stored = digest(stored_segment(backend, job_id, completion.segment_index))
        assert (completion.size_bytes, completion.sha256) == (stored.size, stored.sha256)


def test_a_damaged_segment_is_converted_again_and_the_run_goes_on(backend, clip, caplog):
    """The reproduction: bytes flipped in jobs/<id>/segments/1.mp4 of an interrupted job, then the same run.
    Before: completed with a final that decoded part of the frames. Breakage caught: concat not verifying (the
    final decodes fewer frames), the runner not reconverting (SegmentsDamaged escapes)."""
    job_id = converted_but_not_joined(backend, clip)
    first = {c.segment_index: c for c in backend.completions.query_by_job(job_id)}
    flip_bytes(stored_segment(backend, job_id, 1))
    with caplog.at_level(logging.WARNING, logger="stereo_spot"):
        job = run_job(backend, job_id, workers=1)
    assert job.status == JobStatus.COMPLETED
    lines = [r.getMessage() for r in caplog.records if "failed verification" in r.getMessage()]
    assert len(lines) == 1 and "segment 1 " in lines[0] and "SHA-256" in lines[0], lines
    again = {c.segment_index: c for c in backend.completions.query_by_job(job_id)}
    assert again[1].completed_at > first[1].completed_at  # converted again
    assert all(again[i] == first[i] for i in (0, 2, 3))  # the others were kept
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))
    assert decoded_frames(final) == FRAMES
    assert (job.final_size_bytes, job.final_sha256) == (digest(final).size, digest(final).sha256)


def test_a_missing_segment_is_converted_again(backend, clip):
    """Before: every resume failed for good with "object … does not exist". Breakage caught: a NotFound from the
    fetch not being turned into a dropped record."""
    job_id = converted_but_not_joined(backend, clip)
    stored_segment(backend, job_id, 2).unlink()
    job = run_job(backend, job_id, workers=1)
    assert job.status == JobStatus.COMPLETED
    assert decoded_frames(backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))) == FRAMES


def test_concat_alone_names_the_segment_and_drops_its_record(backend, clip):
    """The cluster's concat step cannot convert: it fails with the segment named and forgets its completion, so
    the next run of the job converts that segment only. Breakage caught: the record or the file not dropped."""
    job_id = converted_but_not_joined(backend, clip)
    flip_bytes(stored_segment(backend, job_id, 3))
    with pytest.raises(SegmentsDamaged, match=r"segment 3: its SHA-256 checksum differs") as caught:
        steps.concat(backend, job_id)
    assert caught.value.segments == [3]
    assert [c.segment_index for c in backend.completions.query_by_job(job_id)] == [0, 1, 2]
    assert not stored_segment(backend, job_id, 3).exists()
    assert backend.jobs.get(job_id).status == JobStatus.CHUNKING_COMPLETE
    assert not backend.objects.exists(backend.output_bucket, keys.final_key(job_id))


def test_records_without_a_checksum_check_what_they_have(backend, clip):
    """Completions written before checksums existed: without a size the join goes on; with a size, a truncated
    segment is still caught. Breakage caught: requiring a checksum (old jobs could never finish), or ignoring
    the size."""
    job_id = converted_but_not_joined(backend, clip)
    for completion in backend.completions.query_by_job(job_id):
        size = completion.size_bytes if completion.segment_index == 0 else None
        backend.completions.put(completion.model_copy(update={"sha256": None, "size_bytes": size}))
    path = stored_segment(backend, job_id, 0)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SegmentsDamaged, match=r"segment 0: it has \d+ bytes, \d+ were stored"):
        steps.concat(backend, job_id)
    assert run_job(backend, job_id, workers=1).status == JobStatus.COMPLETED


def test_the_same_command_after_a_damaged_segment_delivers_a_whole_video(home, clip, tmp_path, monkeypatch):
    """The issue's reproduction through the command: an interrupted `convert`, a flipped segment, the same
    command again. Before: exit 0 and an output that decoded 47 frames. Breakage caught: any step of the chain
    above, seen from the user's side."""
    out = tmp_path / "out" / "x.mp4"
    command = ["convert", str(clip), "-o", str(out), "--segment-seconds", "0.5", "--workers", "1"]
    join = steps.concat

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "concat", interrupted)
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 130, first.output
    monkeypatch.setattr(steps, "concat", join)
    from stereo_spot.adapters.local import local_backend

    backend = local_backend(home)
    (job,) = backend.jobs.list_in_progress()
    flip_bytes(stored_segment(backend, job.job_id, 1))
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "segment 1 failed verification" in again.output
    assert decoded_frames(out) == FRAMES


def test_a_damaged_final_is_not_delivered(home, clip, tmp_path):
    """`resume <id> -o` copies the stored result out: a result that differs from what the join recorded is
    refused in one line and nothing is written. Breakage caught: delivering without the check."""
    out = tmp_path / "x.mp4"
    from stereo_spot.adapters.local import local_backend

    backend = local_backend(home)
    job_id = converted_but_not_joined(backend, clip)
    assert run_job(backend, job_id, workers=1).status == JobStatus.COMPLETED
    flip_bytes(backend.objects.local_path(backend.output_bucket, keys.final_key(job_id)))
    result = CliRunner().invoke(app, ["resume", job_id, "-o", str(out)])
    assert result.exit_code == 1
    assert "the stored result of job" in result.output and "SHA-256" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.glob(".x.mp4*")) == []


def test_on_a_cluster_the_concat_step_fails_the_job_and_the_next_run_reconverts_the_segment(backend, clip,
                                                                                           monkeypatch, tmp_path):
    """The engines' concat component: a user-error exit (no retry of a join that cannot succeed), the job failed
    with the segment named; the next run of the job (a resubmitted workflow) converts just that segment through
    the shards and joins. Breakage caught: neither the record nor the stored file dropped (the shard would skip
    the segment again)."""
    from stereo_spot.components import _common
    from stereo_spot.components import concat as concat_component

    monkeypatch.setenv(_common.TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    job_id = converted_but_not_joined(backend, clip)
    kept = {c.segment_index: c for c in backend.completions.query_by_job(job_id)}
    flip_bytes(stored_segment(backend, job_id, 2))
    with pytest.raises(_common.StepFailed) as failed:
        concat_component.concat(keys.input_key(job_id))
    assert failed.value.code == _common.EXIT_USER_ERROR
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.FAILED and "segment 2: its SHA-256 checksum differs" in job.failure_reason
    # the next run of the workflow
    assert steps.job_for_upload(backend, backend.input_bucket, keys.input_key(job_id)).status == \
        JobStatus.CHUNKING_COMPLETE
    converted = steps.convert_shard(backend, job_id, 0, 1)
    assert [c for c in converted if c != kept.get(c.segment_index)] == [converted[2]]  # only segment 2 is new
    assert steps.concat(backend, job_id).status == JobStatus.COMPLETED
    assert decoded_frames(backend.objects.local_path(backend.output_bucket, keys.final_key(job_id))) == FRAMES


def test_a_lost_source_segment_is_chunked_again(backend, clip, caplog):
    """A source segment (segments/<job>/…) removed from the store: before, every resume failed for good with
    "object … does not exist". Now convert chunks the source again, stores the same piece, and goes on.
    Breakage caught: the NotFound not caught in convert, or restoring the wrong piece (a different digest)."""
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "clip")
    steps.store_source(backend, job.job_id, clip)
    total = steps.chunk(backend, backend.input_bucket, keys.input_key(job.job_id)).total_segments
    steps.convert(backend, job.job_id, 0)
    lost = backend.objects.local_path(backend.input_bucket, keys.segment_key(job.job_id, 2, total, "sbs"))
    original = digest(lost)
    lost.unlink()
    with caplog.at_level(logging.WARNING, logger="stereo_spot"):
        steps.convert(backend, job.job_id, 3)  # reads segment 2 as its warm-up
    assert [r.getMessage() for r in caplog.records
             if r.name.startswith("stereo_spot") and r.levelno >= logging.WARNING] == [
        f"job {job.job_id}: source segment(s) 2 are missing; chunking the source again to restore them"]
    assert digest(lost) == original
    assert run_job(backend, job.job_id, workers=1).status == JobStatus.COMPLETED
    assert decoded_frames(backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))) == FRAMES
