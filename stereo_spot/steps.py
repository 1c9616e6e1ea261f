"""The pipeline steps, written once over the ports and run by every engine (embedded runner, Argo, Kubeflow,
the SQS worker).

    chunk   input/{job}/source.mp4  -> segments/{job}/{i}_{n}_{mode}.mp4 (stream copy), total_segments
    convert segments/{job}/{i}_...  -> jobs/{job}/segments/{i}.mp4 + a SegmentCompletion
    concat  the completions          -> jobs/{job}/final.mp4 (stream copy + the source's audio), completed
    fail    records a readable reason

Every step is idempotent: objects are written under deterministic keys (a re-run overwrites them with the same
content), records are keyed by job and segment, and state changes are conditional on the current status. A step
that finds its work already done returns the recorded result, so duplicate events and retried pods are harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from stereo_spot import integrity, keys, leases
from stereo_spot.errors import JobNotFound, StepError, UserError
from stereo_spot.models import (
    ChunkResult,
    ConversionSettings,
    Job,
    JobStatus,
    OutputFormat,
    SegmentCompletion,
    utcnow,
)
from stereo_spot.ports import REASSEMBLY_LOCK_TTL_SECONDS, Backend, ConflictError, NotFound
from stereo_spot.units import format_bytes

log = logging.getLogger(__name__)

# Statuses from which chunk may (re)start: a duplicate event for a job already past chunking is a no-op.
_CHUNKABLE = (JobStatus.CREATED, JobStatus.CHUNKING_IN_PROGRESS)
_CONVERTIBLE = (JobStatus.CHUNKING_COMPLETE, JobStatus.REASSEMBLING)
# Statuses in which an upload event starts no run: the job is done or gone. A failed job is not one of them: a
# new run resumes it (job_for_upload reopens it, and the steps skip the segments already converted).
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.DELETED)


# --- helpers --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    """A step's scratch folder (``stereo_spot.scratch``: what a killed run left is removed first)."""
    from stereo_spot.scratch import workdir

    with workdir(prefix) as tmp:
        yield tmp


def _fetch(backend: Backend, bucket: str, key: str, dest: Path) -> Path:
    """A local path holding the object: the stored file itself where the storage is a local folder (no copy of
    a multi-GB source), otherwise a download into ``dest``."""
    local_path = getattr(backend.objects, "local_path", None)
    if local_path is not None:
        path = local_path(bucket, key)
        if not path.is_file():
            raise NotFound(f"object {bucket}/{key} does not exist")
        return path
    backend.objects.download_file(bucket, key, dest)
    return dest


SHORT_ID_MIN = 4  # as git's abbreviated hashes: shorter prefixes match too much to be worth typing


def resolve_job_id(backend: Backend, text: str) -> str:
    """A job id from what a person typed: the whole id, or a prefix of it that names exactly one job."""
    text = text.strip().lower()
    if keys.is_job_id(text):
        return text
    if len(text) < SHORT_ID_MIN or not keys.is_job_id_prefix(text):
        raise JobNotFound(f"invalid job id {text!r}: give the id `stereo-spot jobs` lists, or its first "
                          f"{SHORT_ID_MIN} or more characters")
    matches = backend.jobs.ids_starting_with(text, limit=11)
    if not matches:
        raise JobNotFound(f"no job id starts with {text}; `stereo-spot jobs` lists them")
    if len(matches) > 1:
        shown = ", ".join(matches[:10]) + (", …" if len(matches) > 10 else "")
        count = str(len(matches)) if len(matches) <= 10 else "more than 10"
        raise UserError(f"{text} matches {count} jobs ({shown}): type more of the id")
    return matches[0]


def require_job(backend: Backend, job_id: str) -> Job:
    keys.validate_job_id(job_id)
    job = backend.jobs.get(job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} does not exist")
    if job.status == JobStatus.DELETED:
        raise StepError(f"job {job_id} was deleted")
    return job


def fingerprint(path: Path, settings: ConversionSettings, depth_video: Path | None = None) -> str:
    """Same file (path, size, mtime) with the same settings, and the same depth video to render from (an edited
    one is another job): re-running the command resumes the job."""
    stat = path.stat()
    raw = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{settings.model_dump_json()}"
    if depth_video is not None:
        depth = depth_video.stat()
        raw += f"|{depth_video.resolve()}|{depth.st_size}|{depth.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


# --- job creation ---------------------------------------------------------------------------------------


def create_job(backend: Backend, settings: ConversionSettings, title: str, *, job_id: str | None = None,
               source_fingerprint: str | None = None, owner: str | None = None,
               max_in_progress: int | None = None) -> Job:
    """A new job record. ``max_in_progress``: the owner's limit on jobs in progress, enforced by the store in the
    same write (QuotaExceeded)."""
    job = Job(job_id=job_id or keys.new_job_id(), settings=settings, title=title.strip() or "untitled",
              source_fingerprint=source_fingerprint, owner=owner)
    backend.jobs.create(job, max_in_progress=max_in_progress)
    return job


def job_for_upload(backend: Backend, bucket: str, key: str, overrides: dict | None = None) -> Job:
    """The job an uploaded source at ``bucket``/``key`` (``input/{job_id}/source.mp4``, URL-encoded or not)
    belongs to — the one policy every engine (Argo, Kubeflow, the SQS worker) applies to an upload event.

    An upload without a job record gets one, with the default settings and ``overrides``: a source copied
    straight into the bucket (``aws s3 cp``, a partner's pipeline) is a request to convert it, and dropping it
    would lose the upload without a trace (nothing else would ever look at it again); the record makes it
    visible in the app and in every job listing. A failed job is reopened (a new run resumes it). A job that
    has not started chunking takes ``overrides``; once chunking has started, the settings it started with stay.
    """
    overrides = overrides or {}
    key = keys.normalize_event_key(key)
    job_id = keys.parse_input_key(key)
    job = backend.jobs.get(job_id)
    if job is None:
        info = backend.objects.head(bucket, key)
        try:
            job = create_job(backend, ConversionSettings(**overrides), f"upload {job_id[:8]}", job_id=job_id)
            log.info("job %s had no record: created one for the uploaded source", job_id)
        except ConflictError:  # a duplicate event created it a moment ago
            job = backend.jobs.get(job_id) or job
        if info is not None and job.uploaded_at is None:
            job = backend.jobs.update(job_id, uploaded_at=info.last_modified or utcnow(),
                                      source_file_size_bytes=info.size)
        return job
    job = reopen_failed(backend, job_id)
    if overrides and job.status == JobStatus.CREATED:
        settings = ConversionSettings.model_validate({**job.settings.model_dump(), **overrides})
        try:
            job = backend.jobs.update(job_id, expected_status=JobStatus.CREATED, settings=settings)
        except ConflictError:  # chunking started meanwhile
            job = backend.jobs.get(job_id) or job
    return job


def store_source(backend: Backend, job_id: str, source: Path | str | BinaryIO) -> Job:
    """Put the source under ``input/{job}/source.mp4`` and record when and how big. On AWS this object's
    creation is the event that starts the workflow, so the job record is written first."""
    key = keys.input_key(job_id)
    if isinstance(source, (str, Path)):
        backend.objects.upload_file(backend.input_bucket, key, source, content_type="video/mp4")
        size = Path(source).stat().st_size
    else:
        size = backend.objects.upload_fileobj(backend.input_bucket, key, source, content_type="video/mp4")
    return backend.jobs.update(job_id, uploaded_at=utcnow(), source_file_size_bytes=size)


def store_depth_video(backend: Backend, job_id: str, depth: Path | str | BinaryIO, *,
                      by_reference: bool = False) -> None:
    """Put the depth video a job renders from at ``input/{job}/depth.mkv`` (``keys.depth_video_key``), under the
    job's input prefix, so every engine that may read the source may read it. ``by_reference``: the command
    line's own file stays where it is where the storage is this machine's (as ``reference_source`` keeps the
    source); an app upload is copied, its staged file goes away."""
    key = keys.depth_video_key(job_id)
    reference_file = getattr(backend.objects, "reference_file", None)
    if isinstance(depth, (str, Path)):
        if by_reference and reference_file is not None:
            reference_file(backend.input_bucket, key, depth)
        else:
            backend.objects.upload_file(backend.input_bucket, key, depth, content_type="video/x-matroska")
    else:
        backend.objects.upload_fileobj(backend.input_bucket, key, depth, content_type="video/x-matroska")


def reference_source(backend: Backend, job_id: str, source: Path) -> Job:
    """The command line's source: the user's own file, which stays where it is. A storage on this machine
    records a reference to it (path, size, time, SHA-256; checked whenever it is read) rather than a second
    copy; any other storage gets an upload, as with ``store_source``. An app upload has no user copy and is
    stored with ``store_source``."""
    reference_file = getattr(backend.objects, "reference_file", None)
    if reference_file is None:
        return store_source(backend, job_id, source)
    size = reference_file(backend.input_bucket, keys.input_key(job_id), source)
    return backend.jobs.update(job_id, uploaded_at=utcnow(), source_file_size_bytes=size)


# --- chunk ----------------------------------------------------------------------------------------------


def chunk(backend: Backend, bucket: str, key: str) -> ChunkResult:
    """Split the source into segments. One caller chunks a job at a time (its chunk lease); another one started
    meanwhile waits, and returns the holder's result once the job is chunked."""
    job_id = keys.parse_input_key(keys.normalize_event_key(key))
    job = require_job(backend, job_id)
    if job.total_segments and job.status not in _CHUNKABLE:
        log.info("job %s is already chunked into %d segments", job_id, job.total_segments)
        return _chunk_result(job)
    name, owner = leases.chunk_lease(job_id), leases.this_owner()

    def chunked() -> bool:
        return require_job(backend, job_id).status not in _CHUNKABLE

    if not leases.acquire(backend, name, owner, job_id=job_id, activity="chunking", give_up=chunked,
                          ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS):
        return _chunk_unguarded(backend, bucket, key)  # the holder finished: its result, or why not
    with leases.holding(backend, name, owner, ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS):
        return _chunk_unguarded(backend, bucket, key)


def _chunk_unguarded(backend: Backend, bucket: str, key: str) -> ChunkResult:
    from stereo_spot.limits import check_found_frames, check_frame_pixels
    from stereo_spot.media.chunk import chunk_video
    from stereo_spot.media.frames import frame_count
    from stereo_spot.media.probe import frame_size, probe, require_video

    key = keys.normalize_event_key(key)
    job_id = keys.parse_input_key(key)
    job = require_job(backend, job_id)
    if job.total_segments and job.status not in _CHUNKABLE:
        log.info("job %s is already chunked into %d segments", job_id, job.total_segments)
        return _chunk_result(job)
    if job.status not in _CHUNKABLE:
        raise StepError(f"job {job_id} is {job.status.value}; it cannot be chunked")
    job = backend.jobs.update(job_id, expected_status=_CHUNKABLE, status=JobStatus.CHUNKING_IN_PROGRESS,
                              chunking_started_at=utcnow())
    settings = job.settings
    with _workdir("chunk") as tmp:
        source = _fetch(backend, bucket, key, tmp / "source.mp4")
        limits = job_limits(backend, job)
        name = keys.input_key(job_id)
        info = probe(source, max_frame_pixels=limits.max_frame_pixels if limits else None)
        video = require_video(info)
        if limits:
            _check_limits(name, info, video, settings, limits)
        start, end = settings.window
        depth_origin = None
        if settings.depth_video:  # refused before any segment exists when it does not fit
            depth_origin = _fit_depth_video(backend, job_id, source, video.display_size, (start, end),
                                            settings.max_fps, tmp)
        paths = chunk_video(source, tmp / "segments", settings.segment_seconds, settings.start, settings.duration)
        if not paths:
            raise StepError("the source has no video frames in the requested time window")
        total = len(paths)
        frames = 0
        for path in paths:  # counted before any segment is stored: a limit refuses the job with nothing uploaded
            if limits:  # the picture size first: counting frames opens the segment, which decodes its start
                check_frame_pixels(name, *frame_size(path), limits.max_frame_pixels)
            frames += frame_count(path)
            if limits:
                check_found_frames(name, frames, limits)
        for index, path in enumerate(paths):
            segment = keys.segment_key(job_id, index, total, job.mode)
            backend.objects.upload_file(backend.input_bucket, segment, path, content_type="video/mp4")
            discard_if_deleted(backend, job_id, backend.input_bucket, segment)
        duration = _window_duration(info.duration_seconds, start, end)
        if start is not None or end is not None:  # chunks start at a keyframe before the window: estimate
            frames = min(frames, max(1, round(duration * float(video.fps or 0))))
        if settings.max_fps and float(video.fps or 0) > settings.max_fps:  # frames dropped in convert
            frames = min(frames, max(1, round(duration * settings.max_fps)))
        log.info("job %s: %s; split into %d segment(s) of about %g s", job_id, describe_source(info, frames), total,
                 settings.segment_seconds)
        if settings.auto_divergence:
            # Chosen once for the whole job, so every segment converts with the same values.
            from stereo_spot.stereo import auto_divergence

            measured = auto_divergence.measure_video(source, settings, rotation=video.rotation, window=(start, end))
            settings = auto_divergence.apply(settings, measured)
            log.info("job %s: auto divergence %.2f %%, convergence %.2f (depth percentiles %s)", job_id,
                     settings.divergence, settings.convergence, measured.percentiles)
    # total_segments and the status change land in one update: a reader never sees one without the other.
    job = backend.jobs.update(job_id, expected_status=JobStatus.CHUNKING_IN_PROGRESS,
                              status=JobStatus.CHUNKING_COMPLETE, total_segments=total,
                              source_rotation=video.rotation, source_duration_seconds=duration,
                              source_frames=frames, settings=settings, depth_origin_seconds=depth_origin)
    return _chunk_result(job)


def _fit_depth_video(backend: Backend, job_id: str, source: Path, size: tuple[int, int],
                     span: tuple[float | None, float | None], max_fps: float | None, tmp: Path) -> float:
    """The job's depth video checked against its source (``media.depth_video.check_fits``, the rule the command
    line applies too): the source time of its first frame, or a MediaError saying how they differ."""
    from stereo_spot.media.depth_video import check_fits

    try:
        depth = _fetch(backend, backend.input_bucket, keys.depth_video_key(job_id), tmp / "depth.mkv")
    except NotFound as exc:
        raise StepError(f"job {job_id} renders from a depth video, and there is none at "
                        f"{keys.depth_video_key(job_id)}: upload it there before the source") from exc
    return check_fits(depth, source, size=size, window=span, max_fps=max_fps)


def describe_source(info, frames: int) -> str:
    """The probe result in one phrase: size, rate, duration, frames, codec, audio."""
    video = info.video
    width, height = video.display_size
    audio = ", ".join(f"{a.codec} {a.sample_rate} Hz {a.channels} ch" for a in info.audio) or "none"
    return (f"source {width}x{height}, {float(video.fps or 0):.3g} fps, {info.duration_seconds:.2f} s, "
            f"{frames} frames, {video.codec}, audio {audio}")


def job_limits(backend: Backend, job: Job):
    """The limits (Settings) a job's source is held to, or None for the command line's own jobs (local storage,
    no owner): they convert what their user chose on their own machine. The app's jobs (an owner) and every
    job in the cluster (a source can reach the bucket without the app: a direct or presigned S3 upload) are
    held to the same bounds the app checks before a job exists."""
    from stereo_spot.config import get_settings

    if backend.name == "local" and job.owner is None:
        return None
    return get_settings()


def _check_limits(name: str, info, video, settings: ConversionSettings, limits) -> None:
    from stereo_spot.limits import check_media_limits

    width, height = video.display_size
    check_media_limits(name, width, height, float(video.fps or 0), info.duration_seconds, limits,
                       start=settings.start, length=settings.duration)


def _window_duration(video_duration: float, start: float | None, end: float | None) -> float:
    begin = start or 0.0
    stop = video_duration if end is None else min(end, video_duration)
    return max(0.0, stop - begin)


def _chunk_result(job: Job) -> ChunkResult:
    total = job.total_segments or 0
    return ChunkResult(job_id=job.job_id, total_segments=total, segment_indices=list(range(total)))


# --- convert --------------------------------------------------------------------------------------------


def convert(backend: Backend, job_id: str, segment_index: int, *, device: str | None = None,
            progress: Callable[[int], None] | None = None, redo: bool = False) -> SegmentCompletion:
    job = require_job(backend, job_id)
    if job.status not in _CONVERTIBLE and job.status != JobStatus.COMPLETED:
        raise StepError(f"job {job_id} is {job.status.value}; segments are converted after chunking")
    total = job.total_segments or 0
    if not 0 <= segment_index < total:
        raise StepError(f"job {job_id} has {total} segments; there is no segment {segment_index}")
    out_key = keys.output_segment_key(job_id, segment_index)
    if not redo:
        done = backend.completions.get(job_id, segment_index)
        # A completed job's converted segments are removed after the join: its records are the result.
        if done is not None and (job.status == JobStatus.COMPLETED
                                 or backend.objects.exists(backend.output_bucket, out_key)):
            return done
    from stereo_spot.logs import log_context

    with log_context(job_id=job_id, segment=segment_index):  # every line about this segment says which one
        try:
            stats, written = _convert_and_store(backend, job, segment_index, out_key, device, progress)
        except NotFound:  # a source segment this one reads was lost: chunk again, then convert
            if not restore_source_segments(backend, job):
                raise
            stats, written = _convert_and_store(backend, job, segment_index, out_key, device, progress)
        log.info("job %s: segment %d of %d: %.2f-%.2f s, %d frames in %.2f s (%.1f fps)", job_id, segment_index,
                 total, stats.start_seconds, stats.start_seconds + stats.duration_seconds, stats.frames,
                 stats.seconds, stats.frames / stats.seconds if stats.seconds > 0 else 0.0)
    discard_if_deleted(backend, job_id, backend.output_bucket, out_key)
    completion = SegmentCompletion(job_id=job_id, segment_index=segment_index, total_segments=total,
                                   output_key=out_key, frames=stats.frames, duration_seconds=stats.duration_seconds,
                                   convert_seconds=stats.seconds, stats=stats.to_record(),
                                   size_bytes=written.size, sha256=written.sha256)
    backend.completions.put(completion)
    return completion


def _convert_and_store(backend: Backend, job: Job, segment_index: int, out_key: str, device: str | None,
                       progress: Callable[[int], None] | None):
    """Convert one source segment and store the result; its statistics and the stored file's digest. Every
    object is fetched before the conversion starts (a missing one raises NotFound before any frame is counted)."""
    from stereo_spot.media.probe import probe, require_video
    from stereo_spot.stereo.engine import StereoEngine
    from stereo_spot.stereo.segment import convert_segment, needs_lookahead, warmup_seconds_needed

    job_id, total = job.job_id, job.total_segments or 0
    with _workdir("convert") as tmp:
        source = _fetch(backend, backend.input_bucket,
                        keys.segment_key(job_id, segment_index, total, job.mode), tmp / "segment.mp4")
        # The tail of the previous segment(s) warms up the engine's temporal state, so segments converted in
        # parallel join without a visible seam. Short segments may need more than one.
        engine = StereoEngine(job.settings, device=device)
        source_video = require_video(probe(source))
        needed = warmup_seconds_needed(engine, float(source_video.fps or 25))
        warmup: list[Path] = []
        previous = segment_index - 1
        while previous >= 0 and needed > 0:
            path = _fetch(backend, backend.input_bucket, keys.segment_key(job_id, previous, total, job.mode),
                          tmp / f"previous-{previous}.mp4")
            warmup.insert(0, path)
            needed -= probe(path).duration_seconds
            previous -= 1
        # A video inpainter's last chunk may reach into the next segment: it runs whole, as in a single pass.
        lookahead = None
        if needs_lookahead(engine) and segment_index + 1 < total:
            lookahead = _fetch(backend, backend.input_bucket,
                               keys.segment_key(job_id, segment_index + 1, total, job.mode), tmp / "next.mp4")
        out = tmp / ("converted.mkv" if job.settings.depth_output else "converted.mp4")
        with _depth_frames(backend, job, tmp) as depth_frames:
            stats = convert_segment(source, out, job.settings, rotation=job.source_rotation,
                                    window=job.settings.window, warmup_src=warmup, device=device,
                                    progress=progress, engine=engine, lookahead_src=lookahead,
                                    depth_frames=depth_frames)
        written = integrity.digest(out)  # of what was encoded: concat checks the stored copy against it
        backend.objects.upload_file(backend.output_bucket, out_key, out, content_type="video/mp4")
    return stats, written


@contextlib.contextmanager
def _depth_frames(backend: Backend, job: Job, tmp: Path):
    """The job's depth video to render from, opened for reading (None when the job estimates depth)."""
    if not job.settings.depth_video:
        yield None
        return
    from stereo_spot.media.depth_video import DepthFrames

    if job.depth_origin_seconds is None:
        raise StepError(f"job {job.job_id} renders from a depth video that chunking did not check; convert it "
                        "again with --fresh")
    path = _fetch(backend, backend.input_bucket, keys.depth_video_key(job.job_id), tmp / "depth.mkv")
    with DepthFrames(path, job.depth_origin_seconds) as frames:
        yield frames


def restore_source_segments(backend: Backend, job: Job) -> list[int]:
    """Store again the source segments of a chunked job that are missing (removed by hand, a lost disk): the
    source is chunked again, which cuts at the same keyframes, so the pieces are the ones chunking stored. Under
    the job's chunk lease, so parallel converts restore once. Returns the segments restored."""
    from stereo_spot.media.chunk import chunk_video

    total, settings = job.total_segments or 0, job.settings
    expected = {keys.segment_key(job.job_id, index, total, job.mode): index for index in range(total)}
    name, owner = leases.chunk_lease(job.job_id), leases.this_owner()
    leases.acquire(backend, name, owner, job_id=job.job_id, activity="restoring its source segments",
                   ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS)
    with leases.holding(backend, name, owner, ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS):
        present = set(backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job.job_id)))
        missing = sorted(index for key, index in expected.items() if key not in present)
        if not missing:
            return []
        log.warning("job %s: source segment(s) %s are missing; chunking the source again to restore them",
                    job.job_id, ", ".join(map(str, missing)))
        with _workdir("chunk") as tmp:
            source = _fetch(backend, backend.input_bucket, keys.input_key(job.job_id), tmp / "source.mp4")
            paths = chunk_video(source, tmp / "segments", settings.segment_seconds, settings.start,
                                settings.duration)
            if len(paths) != total:
                raise StepError(f"job {job.job_id}: its source now splits into {len(paths)} segments, not {total}; "
                                "convert it again with --fresh")
            for index in missing:
                backend.objects.upload_file(backend.input_bucket, keys.segment_key(job.job_id, index, total, job.mode),
                                            paths[index], content_type="video/mp4")
    return missing


def convert_leased(backend: Backend, job_id: str, segment_index: int, *, device: str | None = None,
                   progress: Callable[[int], None] | None = None) -> SegmentCompletion | None:
    """``convert`` under the segment's lease, for runs that may share a job (two commands on one input): None,
    converting nothing, while another live process holds the segment."""
    name, owner = leases.segment_lease(job_id, segment_index), leases.this_owner()
    if not leases.try_take(backend, name, owner, REASSEMBLY_LOCK_TTL_SECONDS):
        return None
    with leases.holding(backend, name, owner, ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS):
        return convert(backend, job_id, segment_index, device=device, progress=progress)


# --- convert over a shard (the engines' GPU workers) -------------------------------------------------------

# GPU workers (convert pods) a job fans out to unless the run asks for another maximum: the GPU NodePool's limit.
DEFAULT_GPU_WORKERS = 8


def shard_count(total_segments: int, max_workers: int | None = None) -> int:
    """How many GPU workers convert a job of ``total_segments``: as many as allowed, never more than there are
    segments (an idle pod would still pay for its start and its model load)."""
    limit = DEFAULT_GPU_WORKERS if max_workers is None else int(max_workers)
    if limit < 1:
        raise UserError(f"the maximum number of GPU workers must be at least 1, not {limit}")
    return max(1, min(int(total_segments), limit))


def shard_segments(total_segments: int, shard_index: int, shard_count: int) -> range:
    """The contiguous run of segments shard ``shard_index`` of ``shard_count`` converts. Shards differ in size
    by at most one segment and together cover every segment once, in order."""
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise StepError(f"there is no shard {shard_index} of {shard_count}")
    base, extra = divmod(int(total_segments), shard_count)
    start = shard_index * base + min(shard_index, extra)
    return range(start, start + base + (1 if shard_index < extra else 0))


def convert_shard(backend: Backend, job_id: str, shard_index: int, shard_count: int, *,
                  device: str | None = None, progress: Callable[[int], None] | None = None) \
        -> list[SegmentCompletion]:
    """Convert the segments of one contiguous shard, in order, in this process: the models are loaded once
    (they are kept per process) and used for every segment. Segments already completed are skipped by
    ``convert``'s point read, so a retried pod resumes where the reclaimed one stopped."""
    job = require_job(backend, job_id)
    segments = shard_segments(job.total_segments or 0, shard_index, shard_count)
    log.info("job %s: shard %d of %d converts segments %d-%d", job_id, shard_index, shard_count,
             segments.start, segments.stop - 1)
    return [convert(backend, job_id, index, device=device, progress=progress) for index in segments]


# --- concat ---------------------------------------------------------------------------------------------


def concat(backend: Backend, job_id: str, *, owner: str | None = None, wait_seconds: float | None = None) -> Job:
    """Join the converted segments into ``final.mp4``. Exactly one caller does the work (the reassembly lock);
    a caller that loses the lock waits up to ``wait_seconds`` (the lock's TTL: a holder that died frees it by
    then) and returns the job as it is if the holder is still working: the holder completes it.

    The holder renews its short-lived lock while it works. After a successful join the intermediates (source
    segments, converted segments) are removed; the final video and the report stay."""
    job = require_job(backend, job_id)
    final_key = keys.final_key(job_id)
    if _joined(backend, job):
        return job
    total = job.total_segments or 0
    completions = backend.completions.query_by_job(job_id)
    missing = sorted(set(range(total)) - {c.segment_index for c in completions})
    if total == 0 or missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise StepError(f"job {job_id}: {len(missing)} of {total} segments are not converted yet ({shown})")
    owner = owner or leases.this_owner()
    if wait_seconds is None:
        wait_seconds = REASSEMBLY_LOCK_TTL_SECONDS + 5
    lock = leases.reassembly_lease(job_id)
    if not leases.acquire(backend, lock, owner, job_id=job_id, activity="joining the segments",
                          give_up=lambda: _past_joining(backend, job_id), wait_seconds=wait_seconds,
                          ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS):
        log.info("job %s: another concat holds the reassembly lock", job_id)
        return require_job(backend, job_id)
    try:
        with leases.renewing(backend, lock, owner, ttl_seconds=REASSEMBLY_LOCK_TTL_SECONDS):
            job = require_job(backend, job_id)
            if _joined(backend, job):
                return job  # the previous holder finished while this caller waited
            with _workdir("concat") as tmp:
                segments = _verified_segments(backend, job, completions, tmp)
                job = backend.jobs.update(job_id, expected_status=_CONVERTIBLE, status=JobStatus.REASSEMBLING,
                                          reassembly_started_at=utcnow())
                out, content_type, joined = _join(backend, job, segments, tmp)
                final = integrity.digest(out)  # checked again before the result is delivered
                backend.objects.upload_file(backend.output_bucket, final_key, out, content_type=content_type)
            discard_if_deleted(backend, job_id, backend.output_bucket, final_key)
            log.info("job %s: joined %d segments into %s: %d frames, %.2f s, %d audio stream(s), %s", job_id,
                     len(segments), final_key, joined.frames, joined.duration_seconds, joined.audio_streams,
                     format_bytes(final.size))
            _write_report(backend, job, completions)
            job = backend.jobs.update(job_id, expected_status=JobStatus.REASSEMBLING, status=JobStatus.COMPLETED,
                                      completed_at=utcnow(), failure_reason=None, final_size_bytes=final.size,
                                      final_sha256=final.sha256)
        remove_intermediates(backend, job)
        return job
    except BaseException:
        backend.reassembly.release(lock, owner)
        raise


def _join(backend: Backend, job: Job, segments: list[Path], tmp: Path):
    """The joined result in ``tmp``: (its path, its content type, the ``ConcatResult``). A 3D video gets the
    source's audio and the layout's metadata; a depth video (``depth_output``) is Matroska with its tags and no
    audio, stored under the same final key."""
    from stereo_spot.media.concat import concat_segments
    from stereo_spot.naming import result_media_type

    settings = job.settings
    if settings.depth_output:
        from stereo_spot.media.depth_video import depth_tags

        out = tmp / "final.mkv"
        joined = concat_segments(segments, None, out, settings.start, settings.duration, metadata=depth_tags())
        return out, result_media_type(settings), joined
    source = _fetch(backend, backend.input_bucket, keys.input_key(job.job_id), tmp / "source.mp4")
    out = tmp / "final.mp4"
    joined = concat_segments(segments, source, out, settings.start, settings.duration)
    _write_layout_metadata(out, settings)
    return out, result_media_type(settings), joined


def _joined(backend: Backend, job: Job) -> bool:
    """A completed job whose result exists: in the store, or delivered out of it by the command line (which moves
    a command-line job's result to its output and records where). Its segments are gone after the join, so
    joining again is neither needed nor possible."""
    return job.status == JobStatus.COMPLETED and (
        job.delivered_to is not None or backend.objects.exists(backend.output_bucket, keys.final_key(job.job_id)))


def _verified_segments(backend: Backend, job: Job, completions: list[SegmentCompletion], tmp: Path) -> list[Path]:
    """The converted segments as local files, each checked against its completion record (size and SHA-256;
    the size or only the presence for older records). A segment that is missing or differs loses its record and
    its stored file, and SegmentsDamaged names them all: the embedded runner converts them again and joins; on
    a cluster the concat step fails with that reason and the next run of the job converts just those (a concat
    pod cannot convert: that is the GPU step's work)."""
    paths: list[Path] = []
    problems: dict[int, str] = {}
    for completion in completions:
        if completion.segment_index >= (job.total_segments or 0):
            continue
        try:
            path = _fetch(backend, backend.output_bucket, completion.output_key,
                          tmp / f"{completion.segment_index}.mp4")
        except NotFound:
            problems[completion.segment_index] = "it is missing"
            continue
        why = integrity.mismatch(path, completion.size_bytes, completion.sha256)
        if why is not None:
            problems[completion.segment_index] = why
        paths.append(path)
    if not problems:
        return paths
    for index in problems:
        backend.completions.delete(job.job_id, index)
        backend.objects.delete(backend.output_bucket, keys.output_segment_key(job.job_id, index))
    if job.status == JobStatus.REASSEMBLING:  # a join that was interrupted: the job is converting again
        with contextlib.suppress(ConflictError):
            backend.jobs.update(job.job_id, expected_status=JobStatus.REASSEMBLING,
                                status=JobStatus.CHUNKING_COMPLETE)
    raise integrity.SegmentsDamaged(job.job_id, problems)


def _past_joining(backend: Backend, job_id: str) -> bool:
    """Waiting for the reassembly lock is pointless once the job completed, failed or was deleted."""
    job = backend.jobs.get(job_id)
    return job is None or job.status in (JobStatus.COMPLETED, JobStatus.DELETED, JobStatus.FAILED)


def verify_final(backend: Backend, job_id: str, path: Path) -> None:
    """Check a copy of ``final.mp4`` against the size and SHA-256 the join recorded (jobs joined before they
    were recorded: nothing to check). Raises FinalDamaged."""
    job = require_job(backend, job_id)
    why = integrity.mismatch(path, job.final_size_bytes, job.final_sha256)
    if why is not None:
        raise integrity.FinalDamaged(
            f"the stored result of job {job_id} is damaged: {why}; its segments are gone after the join, so "
            "convert the input again with --fresh")


def _write_layout_metadata(path: Path, settings: ConversionSettings) -> None:
    """The container's stereo (and, for VR180, spherical) metadata that headset players read."""
    from stereo_spot.media import spatial, vexu

    if settings.output_format is OutputFormat.SPATIAL:
        # view 0 is the left eye as packed (--swap-eyes already exchanged them), and the hero
        spatial_video = vexu.SpatialVideo(baseline_mm=settings.baseline_mm, hfov_degrees=settings.hfov)
        vexu.write_spatial_video(path, spatial_video)
        return
    meta = spatial.metadata_for(settings.output_format, settings.swap_eyes)
    if meta is not None:
        spatial.write_metadata(path, meta)


def remove_intermediates(backend: Backend, job: Job) -> int:
    """After a successful join: remove the source segments (``segments/{job}/``) and the converted segments
    (``jobs/{job}/segments/``); their records stay for the report and the timings. Returns how many objects."""
    removed = 0
    for bucket, prefix in ((backend.input_bucket, keys.segments_prefix(job.job_id)),
                           (backend.output_bucket, keys.job_output_prefix(job.job_id) + "segments/")):
        for key in backend.objects.list_keys(bucket, prefix):
            backend.objects.delete(bucket, key)
            removed += 1
    return removed


def discard_if_deleted(backend: Backend, job_id: str, bucket: str, key: str) -> None:
    """Called right after a step wrote an object: if the job was deleted meanwhile, remove what was written and
    stop. ``delete_job`` marks the job deleted before it lists the job's objects, so every object is either seen
    by that listing or removed here."""
    job = backend.jobs.get(job_id)
    if job is None or job.status == JobStatus.DELETED:
        backend.objects.delete(bucket, key)
        raise StepError(f"job {job_id} was deleted")


def reopen_failed(backend: Backend, job_id: str) -> Job:
    """A new run of a failed job resumes it (``stereo-spot resume``, a resubmitted workflow): converted segments
    are kept and the rest is done again. Any other job is returned as it is."""
    job = require_job(backend, job_id)
    if job.status != JobStatus.FAILED:
        return job
    try:
        return backend.jobs.update(job_id, expected_status=JobStatus.FAILED, failure_reason=None,
                                   status=JobStatus.CHUNKING_COMPLETE if job.total_segments else JobStatus.CREATED)
    except ConflictError:  # another run reopened it a moment ago
        return require_job(backend, job_id)


def _write_report(backend: Backend, job: Job, completions: list[SegmentCompletion]) -> None:
    """The comfort report (``jobs/{job}/report.json``). A report that cannot be built must not cost the user
    the finished video: it is logged and skipped. Colour + depth (RGB-D) and the depth video have no stereo pair
    to report on."""
    from stereo_spot.report import write_report

    if not job.settings.renders_stereo_pair:
        return
    try:
        write_report(backend, job, completions)
        log.info("job %s: comfort report written to %s", job.job_id, keys.report_key(job.job_id))
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("job %s: the comfort report could not be written", job.job_id)


# --- fail / delete --------------------------------------------------------------------------------------


def fail(backend: Backend, job_id: str, reason: str) -> Job | None:
    """Record a readable reason. A completed or deleted job keeps its status: a late failure of a duplicate run
    must not hide a finished video. Returns None where there is no such job."""
    try:
        keys.validate_job_id(job_id)
    except UserError:
        return None
    job = backend.jobs.get(job_id)
    if job is None:
        return None
    if job.status in (JobStatus.COMPLETED, JobStatus.DELETED):
        return job
    try:
        return backend.jobs.update(job_id, expected_status=tuple(s for s in JobStatus if s not in
                                                                 (JobStatus.COMPLETED, JobStatus.DELETED)),
                                   status=JobStatus.FAILED, failure_reason=reason or "unknown failure")
    except ConflictError:
        return backend.jobs.get(job_id)


def delete_job(backend: Backend, job_id: str) -> Job:
    """Mark the job deleted, then remove every object under its prefixes (source, segments, outputs, report),
    whatever wrote them. The record stays, so lists and links show that it was deleted rather than a missing
    job. Steps that write after this began remove their own object (``discard_if_deleted``)."""
    job = require_job(backend, job_id)
    job = backend.jobs.update(job_id, status=JobStatus.DELETED)
    prefixes = ((backend.input_bucket, f"input/{job_id}/"), (backend.input_bucket, keys.segments_prefix(job_id)),
                (backend.output_bucket, keys.job_output_prefix(job_id)))
    for bucket, prefix in prefixes:
        for key in backend.objects.list_keys(bucket, prefix):
            backend.objects.delete(bucket, key)
    backend.completions.delete_job(job_id)
    return job
