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
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.stereo.devices import GpuMemoryError, encoder_for
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.errors import StereoInputError
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


#: Seconds of the previous segment fed to the engine's temporal state before converting.
WARMUP_SECONDS = 1.0
_QUEUE_BATCHES = 2
_DONE = object()


@dataclass
class SegmentStats:
    frames: int
    duration_seconds: float  # of the converted video: last pts - first pts + one frame
    seconds: float  # wall-clock time the conversion took
    warmup_seconds: float = 0.0  # of ``seconds``: running the previous segment's tail through the engine
    engine_seconds: float = 0.0  # of ``seconds``: the stereo engine (depth, warp, fill, pack) on this segment
    depth_seconds: float = 0.0  # of ``engine_seconds``: depth estimation
    #: frames converted without output: a video inpainter's chain from its last restart before the segment and
    #: the end of its last chunk after it (``chunk_chain``); 0 for per-frame fills
    warmup_frames: int = 0
    batch_size: int = 0  # frames per engine batch that converted the segment (smaller after an out-of-memory)
    encoder: str = ""  # the video encoder (libx264, h264_nvenc)
    comfort: dict | None = None  # ``ComfortStats.to_dict()``: parallax histogram, holes, borders, flicker
    start_seconds: float = 0.0  # time of the first converted frame on the source's timeline

    def to_record(self) -> dict:
        """What a segment completion stores: the comfort statistics and the timings."""
        return {**(self.comfort or {}), "timings": {
            "convert_seconds": round(self.seconds, 4), "warmup_seconds": round(self.warmup_seconds, 4),
            "engine_seconds": round(self.engine_seconds, 4), "depth_seconds": round(self.depth_seconds, 4),
            "warmup_frames": self.warmup_frames}}


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _produce(source: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread body: move items from ``source`` into ``out`` until exhausted, failed or stopped."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone: drop the item

    try:
        for item in source:
            if not put(item):
                return
        put(_DONE)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        put(_Failed(exc))


def _threaded(source: Iterator, stop: threading.Event, name: str) -> Iterator:
    """Iterate ``source`` in a background thread, ``_QUEUE_BATCHES`` items ahead."""
    items: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
    thread = threading.Thread(target=_produce, args=(source, items, stop), name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


class _EncoderThread:
    """Encodes packed batches in a background thread; the writer is created from the first batch's size."""

    def __init__(self, make_writer: Callable[[int, int], object]) -> None:
        self._make_writer = make_writer
        self._writer = None
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stereo-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain without work after a failure
            packed, pts = item
            try:
                if self._writer is None:
                    self._writer = self._make_writer(packed.shape[2], packed.shape[1])
                for frame, stamp in zip(packed, pts, strict=True):
                    self._writer.write(frame, stamp)
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                self._error = exc

    def put(self, packed: np.ndarray, pts: list[int]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((packed, pts))

    def close(self, *, raise_errors: bool = True) -> None:
        """Finish encoding and close the file. ``raise_errors=False`` when the caller is already failing."""
        self._queue.put(_DONE)
        self._thread.join()
        try:
            if self._writer is not None:
                self._writer.close()
        except BaseException:
            if raise_errors:
                raise
        if raise_errors and self._error is not None:
            raise self._error


def _stack(frames: list) -> np.ndarray:
    return np.stack([f.rgb for f in frames])


def _depth_warmup_seconds(engine: StereoEngine, fps: float) -> float:
    return max(WARMUP_SECONDS, (engine.warmup_frames + 0.5) / max(fps, 1e-3))


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
    return _depth_warmup_seconds(engine, fps) + (float(getattr(chain, "restart_seconds", 0.0)) if chain else 0.0)


def needs_lookahead(engine: StereoEngine) -> bool:
    """Whether converting a segment reads the first frames of the next one: a chunk of a video inpainter that
    straddles the segment's end is run whole, as a single pass runs it, and only its output frames are kept."""
    return _chain(engine) is not None


def _warm_up(engine: StereoEngine, sources: list[Path], rotation: int, batch_size: int,
             codec_threads: int = 0, max_fps: float | None = None) -> int:
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
            engine.warm_up(_stack(batch))
            fed += len(batch)
    return fed


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
    read.
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
                    from stereo_spot.stereo.chunk_chain import convert_chained

                    return convert_chained(engine, src, dst, settings, video, rotation, window, warmup_src,
                                            lookahead_src, batch_size, counted, started, collect_stats,
                                            codec_threads, codec)
                return _convert(engine, src, dst, settings, video, rotation, window, warmup_src, batch_size,
                                counted, started, collect_stats, codec_threads, codec)
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
             codec_threads: int = 0, codec: str = "libx264") -> SegmentStats:
    from stereo_spot.media.frames import VideoWriter, read_frame_batches

    engine.reset()
    engine.stats = None
    warmup_seconds = 0.0
    sources = warmup_sources(warmup_src)
    if sources:
        _warm_up(engine, sources, rotation, batch_size, codec_threads, settings.max_fps)
        warmup_seconds = time.perf_counter() - started
    engine.depth_seconds = 0.0
    # colour + depth has no stereo pair to measure
    engine.stats = ComfortStats() if collect_stats and not settings.output_format.is_rgbd else None
    engine_seconds = 0.0

    encode = encode_settings(settings, codec_threads, codec)
    fps = output_fps(video, settings)
    time_base: Fraction | None = None
    first_pts: int | None = None
    last_pts = 0
    frames = 0

    def make_writer(width: int, height: int) -> VideoWriter:
        return segment_writer(dst, width, height, time_base, fps, encode, settings)

    encoder = _EncoderThread(make_writer)
    stop = threading.Event()
    try:
        batches = read_frame_batches(src, batch_size, rotation=rotation, window=window, threads=codec_threads,
                                     max_fps=settings.max_fps)
        for batch in _threaded(batches, stop, "stereo-decode"):
            if time_base is None:
                time_base = batch[0].time_base
                first_pts = batch[0].pts
            pts = [f.pts for f in batch]
            engine_started = time.perf_counter()
            packed = engine.convert_batch(_stack(batch))
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


def output_fps(video, settings: ConversionSettings) -> Fraction:
    """The frame rate a segment is encoded at: the source's (25 when it does not say), capped by --max-fps."""
    fps = video.fps or Fraction(25)
    if settings.max_fps and fps > settings.max_fps:
        fps = Fraction(settings.max_fps).limit_denominator(1001)
    return fps


def encode_settings(settings: ConversionSettings, codec_threads: int, codec: str):
    """The job's encoder choices for a segment's writer (``media.encode.settings_for``)."""
    from stereo_spot.media.encode import settings_for

    return settings_for(settings.output_format, threads=codec_threads, codec=codec, swap_eyes=settings.swap_eyes,
                        crf=settings.crf, preset=settings.preset,
                        pix_fmt=settings.pix_fmt.value if settings.pix_fmt else None)


def segment_writer(dst: Path, width: int, height: int, time_base: Fraction, fps: Fraction, encode,
                   settings: ConversionSettings):
    """The writer of a converted segment: the packed frames through the job's encoder, or for spatial video
    the two eyes as the views of one MV-HEVC stream (x265's multiview CLI, whatever --codec says)."""
    from stereo_spot.media.encode import X26X_PRESET, X26X_PRESETS
    from stereo_spot.media.frames import VideoWriter
    from stereo_spot.media.mvhevc import SpatialSegmentWriter

    if settings.output_format is OutputFormat.SPATIAL:
        preset = encode.preset if encode.preset in X26X_PRESETS else X26X_PRESET
        return SpatialSegmentWriter(dst, width, height, time_base, fps, crf=encode.crf, preset=preset,
                                    threads=encode.threads)
    return VideoWriter(dst, width, height, time_base, fps, encode)


def warmup_sources(warmup_src: Path | Sequence[Path] | None) -> list[Path]:
    """The segments before this one, as a list (one path, several, or none)."""
    if not warmup_src:
        return []
    return [Path(warmup_src)] if isinstance(warmup_src, (str, Path)) else [Path(p) for p in warmup_src]


def finish_segment(engine: StereoEngine, encoder: _EncoderThread, src: Path, *, frames: int, first_pts: int | None,
                   last_pts: int, time_base: Fraction | None, fps: Fraction, started: float, warmup_seconds: float,
                   engine_seconds: float, batch_size: int, codec: str, warmup_frames: int = 0) -> SegmentStats:
    """Close the encoder (raising what it failed with), refuse a segment without frames, and gather its stats."""
    encoder.close()
    if frames == 0:
        raise StereoInputError(f"{src.name} has no video frames in the requested time window")
    duration = float((last_pts - first_pts) * time_base + 1 / fps)
    comfort = engine.stats.to_dict() if engine.stats is not None else None
    engine.stats = None
    return SegmentStats(frames=frames, duration_seconds=duration, seconds=time.perf_counter() - started,
                        start_seconds=float(first_pts * time_base),
                        warmup_seconds=warmup_seconds, engine_seconds=engine_seconds,
                        depth_seconds=engine.depth_seconds, comfort=comfort, batch_size=batch_size,
                        encoder=codec, warmup_frames=warmup_frames)
