"""Convert one video segment to 3D: decode → stereo engine → encode, keeping every frame's timestamp.

Decoding, the engine and encoding run as a three-stage pipeline (a reader thread, the calling thread, a writer
thread) joined by small bounded queues. PyAV releases the GIL while it decodes, converts pixel formats and
encodes, and torch while it computes, so on a multi-core machine the stages overlap; the queues bound memory to a
few batches whatever the segment's length.

``warmup_src`` is the segment before this one (or the few before it, when one is shorter than the warm-up): its
last second, or as many frames as the depth estimator remembers (``StereoEngine.warmup_frames``) when that is
longer, runs through the engine's temporal state first. The estimators keep a
finite memory, so the state at this segment's first frame is what a single long run would have had, and
segments converted in parallel join without a visible seam. A video inpainter's chain of chunks is handled by
``chunk_chain``: the warm-up reaches back to the chain's last restart, and ``lookahead_src`` (the next segment)
finishes the chunk that straddles this segment's end.

On a GPU the batch size follows the free memory (``StereoEngine.batch_frames_for``); a CUDA out-of-memory error
halves the batch and converts the segment again, down to one frame, and then fails with a message naming the
resolution and the batch. The encoder is NVENC where a GPU converts and NVENC opens, libx264 otherwise
(``devices.encoder_for``).

While converting, the engine samples comfort statistics (``stereo/stats.py``); they come back in
``SegmentStats.comfort`` with the segment's timings, for the job's comfort report.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from stereo_spot.media.depth_video import DepthFrames
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.chunk_chain import convert_chained
from stereo_spot.stereo.devices import GpuMemoryError, encoder_for
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.segment_stages import (
    EncoderThread,
    SegmentStats,
    depth_warmup_seconds,
    encode_settings,
    finish_segment,
    output_fps,
    segment_writer,
    stack_frames,
    threaded,
    warmup_sources,
)
from stereo_spot.stereo.stats import ComfortStats

log = logging.getLogger(__name__)


@contextmanager
def _compute_threads(device: torch.device, threads: int | None):
    """Run the engine with fewer intra-op threads on CPU while the codec threads share the cores.

    The encoder (x264 frame threads) and decoder run concurrently with the engine here. Torch's OpenMP ops
    are many and short, and each waits for all of its threads; with the cores already busy encoding, every op
    waits on the scheduler: on 2 cores, 2 torch threads made a 720p segment 5x slower than 1. So the default
    is half of the process's setting (what the runner chose per worker), at least 1, restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    wanted = threads if threads is not None else max(1, before // 2)
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chain(engine: StereoEngine):
    """The engine's inpainter when it fills holes in a chain of temporal chunks (it has ``chunk_end``), else
    None."""
    inpainter = engine.inpainter
    return inpainter if callable(getattr(inpainter, "chunk_end", None)) else None


def warmup_seconds_needed(engine: StereoEngine, fps: float) -> float:
    """Seconds of preceding video the engine needs: a second, or more when the depth estimator remembers more
    frames (half a frame of margin); with an inpainter that chains chunks, also the time back to the chain's
    last restart (at most ``restart_seconds``)."""
    chain = _chain(engine)
    return depth_warmup_seconds(engine, fps) + (float(getattr(chain, "restart_seconds", 0.0)) if chain else 0.0)


def needs_lookahead(engine: StereoEngine) -> bool:
    """Whether converting a segment reads the first frames of the next one: a chunk of a video inpainter that
    straddles the segment's end is run whole, as a single pass runs it, and only its output frames are kept."""
    return _chain(engine) is not None


def _warm_up(engine: StereoEngine, sources: list[Path], rotation: int, batch_size: int,
             codec_threads: int = 0, max_fps: float | None = None, depth_frames: DepthFrames | None = None) -> int:
    """Run the tail of the preceding segments (oldest first) through the engine's temporal state."""
    from stereo_spot.media.frames import read_frame_batches
    from stereo_spot.media.probe import probe, require_video

    plan = []
    remaining = None
    for source in reversed(sources):  # newest first, until enough time is covered
        info = probe(source)
        video = require_video(info)
        if remaining is None:
            remaining = warmup_seconds_needed(engine, float(video.fps or 25))
        start = video.start_seconds + max(0.0, info.duration_seconds - remaining)
        plan.append((source, start))
        remaining -= info.duration_seconds
        if remaining <= 0:
            break
    fed = 0
    for source, start in reversed(plan):
        for batch in read_frame_batches(source, batch_size, rotation=rotation, window=(start, None),
                                        threads=codec_threads, max_fps=max_fps):
            if depth_frames is not None:
                # before the converted part (--start) there is no depth to give: the warm-up begins with it
                batch = [frame for frame in batch if depth_frames.covers(frame.seconds)]
                if not batch:
                    continue
            engine.warm_up(stack_frames(batch), depth=_depth_of(depth_frames, batch))
            fed += len(batch)
    return fed


def _depth_of(depth_frames: DepthFrames | None, batch: list) -> np.ndarray | None:
    """The depth video's frames for a batch of decoded frames, matched by time (None: the engine estimates)."""
    return None if depth_frames is None else depth_frames.frames_at([frame.seconds for frame in batch])


def convert_segment(
    src: Path,
    dst: Path,
    settings: ConversionSettings,
    rotation: int = 0,
    window: tuple[float | None, float | None] = (None, None),
    warmup_src: Path | Sequence[Path] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    engine: StereoEngine | None = None,
    compute_threads: int | None = None,
    collect_stats: bool = True,
    lookahead_src: Path | None = None,
    depth_frames: DepthFrames | None = None,
) -> SegmentStats:
    """Convert the frames of ``src`` inside ``window`` (seconds of its timeline) to a 3D mp4 at ``dst``.

    ``warmup_src`` is the segment before this one, or the segments before it, oldest first: their tail
    (``warmup_seconds_needed``) warms up the engine's temporal state. ``lookahead_src`` is the segment after
    this one, read only as far as a video inpainter's last chunk reaches (``needs_lookahead``).

    Frames keep their pts and the source's time base. ``progress(n)`` is called with the number of frames
    just written (negative after an out-of-memory retry: the frames of the failed attempt are taken back).
    ``batch_size`` frames go through the engine at once (default: ``engine.batch_frames_for`` the frame size).
    ``compute_threads`` sets torch's intra-op threads on CPU for the duration (default: half the
    current setting, see ``_compute_threads``). ``collect_stats`` samples the comfort statistics. Raises
    ``StereoInputError`` when the window holds no frame, and the media layer's errors for files that cannot be
    read. ``depth_frames``: the depth video to render from (``settings.depth_video``), read for each frame of
    the segment and of its warm-up by the frame's time; nothing is estimated. With ``settings.depth_output`` the
    segment written is the depth itself (``media.depth_video``).
    """
    from stereo_spot.media.probe import probe, require_video

    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    video = require_video(probe(src))
    engine = engine or StereoEngine(settings, device=device)
    batch_size = batch_size or engine.batch_frames_for(video.width, video.height)
    codec_threads = _codec_threads()
    codec = encoder_for(engine.device, settings.codec.value)
    _log_decisions(engine, settings, video, window, batch_size, codec)
    with _compute_threads(engine.device, compute_threads):
        while True:
            reported = 0

            def counted(n: int) -> None:
                nonlocal reported
                reported += n
                if progress is not None:
                    progress(n)

            try:
                if _chain(engine) is not None:
                    if depth_frames is not None:
                        raise StereoInputError(f"--inpaint {settings.inpaint} fills holes in chunks of frames; "
                                               "rendering from a depth video needs a per-frame fill")
                    return convert_chained(engine, src, dst, settings, video, rotation, window, warmup_src,
                                            lookahead_src, batch_size, counted, started, collect_stats,
                                            codec_threads, codec)
                return _convert(engine, src, dst, settings, video, rotation, window, warmup_src, batch_size,
                                counted, started, collect_stats, codec_threads, codec, depth_frames)
            except torch.cuda.OutOfMemoryError as exc:
                if reported and progress is not None:
                    progress(-reported)  # this attempt's frames are converted again
                if batch_size <= 1:
                    raise GpuMemoryError(
                        f"out of GPU memory on {engine.device} converting {src.name} ({video.width}x{video.height})"
                        f" even at a batch of 1 frame: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
                    ) from exc
                log.warning("out of GPU memory at %dx%d with a batch of %d frames; converting %s again with %d",
                            video.width, video.height, batch_size, src.name, batch_size // 2)
                batch_size //= 2
                _release_cached_memory(engine.device)


def _log_decisions(engine: StereoEngine, settings: ConversionSettings, video, window, batch_size: int,
                   codec: str) -> None:
    """At debug level (``-vv``), what this segment's conversion chose and why it looks as it does."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    begin, end = window
    span = "the whole segment" if begin is None and end is None else \
        f"{begin or 0:.2f}-{'end' if end is None else f'{end:.2f}'} s"
    convergence = f"auto (at least {settings.convergence:.2f})" if settings.auto_convergence \
        else f"{settings.convergence:.2f}"
    log.debug("decisions: device %s, encoder %s, batches of %d frames (%dx%d), time window %s, convergence %s, "
              "divergence %.2f %%, floating window %s, depth %s, fill %s, precision %s", engine.device, codec,
              batch_size, video.width, video.height, span, convergence, settings.divergence,
              "on" if settings.floating_window else "off", settings.depth_model, settings.inpaint,
              settings.precision.value)


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _codec_threads() -> int:
    """Decoder/encoder threads: FFmpeg's choice (0) when this process may use every core, otherwise the
    process's share. The runner gives each of N worker processes cores/N torch threads; codecs that each
    started a thread per core as well would oversubscribe the machine N times over."""
    budget = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if budget >= cores else budget


def _convert(engine: StereoEngine, src: Path, dst: Path, settings: ConversionSettings, video, rotation: int,
             window: tuple[float | None, float | None], warmup_src: Path | Sequence[Path] | None, batch_size: int,
             progress: Callable[[int], None] | None, started: float, collect_stats: bool,
             codec_threads: int = 0, codec: str = "libx264", depth_frames: DepthFrames | None = None
             ) -> SegmentStats:
    from stereo_spot.media.frames import VideoWriter, read_frame_batches

    engine.reset()
    engine.stats = None
    warmup_seconds = 0.0
    sources = warmup_sources(warmup_src)
    if sources:
        _warm_up(engine, sources, rotation, batch_size, codec_threads, settings.max_fps, depth_frames)
        warmup_seconds = time.perf_counter() - started
    engine.depth_seconds = 0.0
    # colour + depth has no stereo pair to measure
    engine.stats = ComfortStats() if collect_stats and settings.renders_stereo_pair else None
    engine_seconds = 0.0

    encode = encode_settings(settings, codec_threads, codec)
    fps = output_fps(video, settings)
    time_base: Fraction | None = None
    first_pts: int | None = None
    last_pts = 0
    frames = 0

    def make_writer(width: int, height: int) -> VideoWriter:
        return segment_writer(dst, width, height, time_base, fps, encode, settings)

    encoder = EncoderThread(make_writer)
    stop = threading.Event()
    try:
        batches = read_frame_batches(src, batch_size, rotation=rotation, window=window, threads=codec_threads,
                                     max_fps=settings.max_fps)
        for batch in threaded(batches, stop, "stereo-decode"):
            if time_base is None:
                time_base = batch[0].time_base
                first_pts = batch[0].pts
            pts = [f.pts for f in batch]
            engine_started = time.perf_counter()
            packed = engine.convert_batch(stack_frames(batch), depth=_depth_of(depth_frames, batch))
            engine_seconds += time.perf_counter() - engine_started
            encoder.put(packed, pts)
            frames += len(batch)
            last_pts = pts[-1]
            if progress is not None:
                progress(len(batch))
    except BaseException:
        stop.set()
        encoder.close(raise_errors=False)
        raise
    return finish_segment(engine, encoder, src, frames=frames, first_pts=first_pts, last_pts=last_pts,
                          time_base=time_base, fps=fps, started=started, warmup_seconds=warmup_seconds,
                          engine_seconds=engine_seconds, batch_size=batch_size, codec=codec)
