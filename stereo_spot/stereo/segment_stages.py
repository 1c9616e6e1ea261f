"""The stages every segment conversion is built from, whether it renders frame by frame (``segment``) or in a
video inpainter's chain of chunks (``chunk_chain``): the decoding thread, the encoding thread, the frames'
stacking, the warm-up a depth estimator needs, the output's frame rate and encoder, and the segment's stats.

Both conversions import these from here; neither reaches into the other.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.errors import StereoInputError

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


def threaded(source: Iterator, stop: threading.Event, name: str) -> Iterator:
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


class EncoderThread:
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


def stack_frames(frames: list) -> np.ndarray:
    return np.stack([f.rgb for f in frames])


def depth_warmup_seconds(engine: StereoEngine, fps: float) -> float:
    return max(WARMUP_SECONDS, (engine.warmup_frames + 0.5) / max(fps, 1e-3))



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
    """The writer of a converted segment: the packed frames through the job's encoder, for spatial video
    the two eyes as the views of one MV-HEVC stream (x265's multiview CLI, whatever --codec says), for a depth
    job the depth as FFV1 in Matroska (``media.depth_video``, whatever the name's suffix)."""
    from stereo_spot.media.depth_video import DepthWriter
    from stereo_spot.media.encode import X26X_PRESET, X26X_PRESETS
    from stereo_spot.media.frames import VideoWriter
    from stereo_spot.media.mvhevc import SpatialSegmentWriter

    if settings.depth_output:
        return DepthWriter(dst, width, height, time_base, fps, threads=encode.threads)
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


def finish_segment(engine: StereoEngine, encoder: EncoderThread, src: Path, *, frames: int, first_pts: int | None,
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
