"""The depth video: a job's normalised depth as 16-bit grey, written out for editing and read back to render from.

Format: one FFV1 stream (lossless, every frame a keyframe, so segments join by stream copy and a reader can seek to
any frame) of ``gray16le`` pictures in Matroska, no audio. A pixel is the engine's normalised depth ``depth01``
(0 the farthest thing in the shot, 1 the nearest) times 65535, rounded: the depth the warp uses, after the depth
model's own steadying and span normalisation. The container's tags say so, and a reader refuses a file without
them (an edited file must keep them: ``ffmpeg -map_metadata 0`` does):

    STEREO_SPOT_DEPTH=near-is-bright
    STEREO_SPOT_DEPTH_RANGE=0-65535

Frames and timing follow the conversion's frame sequence (``source_frame_times``: the source's frames in the
converted window, after ``--max-fps``), shifted to start at 0 as the 3D result is; Matroska keeps times to the
millisecond. ``check_fits`` is the one rule that decides whether a depth video fits a source; the command line
applies it before a job exists and the chunk step on every engine before segments are made.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from stereo_spot.media.containers import (
    EncodingWriter,
    frame_ticks,
    open_input,
    open_output,
    require_video_stream,
    seconds_to_ticks,
)
from stereo_spot.media.errors import MediaError

DEPTH_TAG = "STEREO_SPOT_DEPTH"
NEAR_IS_BRIGHT = "near-is-bright"
RANGE_TAG = "STEREO_SPOT_DEPTH_RANGE"
FULL_SCALE = 65535
RANGE = f"0-{FULL_SCALE}"
CODEC = "ffv1"
PIX_FMT = "gray16le"
#: How far a depth frame's time may lie from its source frame's: Matroska rounds each time to the millisecond,
#: and the first frame's time (the origin) as well.
TIME_TOLERANCE_SECONDS = 0.0011


def depth_tags() -> dict[str, str]:
    """The container tags that say how to read the pixels."""
    return {DEPTH_TAG: NEAR_IS_BRIGHT, RANGE_TAG: RANGE}


def quantise(depth01: np.ndarray) -> np.ndarray:
    """Normalised depth (0..1, near = 1) → uint16, 0..65535."""
    return np.rint(np.clip(depth01, 0.0, 1.0) * FULL_SCALE).astype(np.uint16)


def dequantise(values: np.ndarray) -> np.ndarray:
    """uint16 → normalised depth as float32 (0..1, near = 1)."""
    return values.astype(np.float32) / FULL_SCALE


class DepthWriter(EncodingWriter):
    """Writes uint16 [H,W] depth frames with the source's timestamps to an FFV1 gray16le Matroska file.
    Takes the place of ``VideoWriter`` for a depth job's segments (the same ``write(frame, pts)``/``close``)."""

    def __init__(self, path: str | Path, width: int, height: int, time_base: Fraction, fps: Fraction | None,
                 threads: int = 0) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        self.time_base = Fraction(time_base)
        self._frame_ticks = frame_ticks(fps, self.time_base)
        self._frames = 0
        self._last_pts: int | None = None
        self._container = open_output(self.path, fmt="matroska")
        self._container.metadata.update(depth_tags())
        try:
            stream = self._container.add_stream(CODEC, rate=Fraction(fps) if fps else None)
            stream.width, stream.height = width, height
            stream.pix_fmt = PIX_FMT
            ctx = stream.codec_context
            ctx.time_base = self.time_base
            ctx.thread_count = threads
            ctx.gop_size = 1  # every frame a keyframe: a reader seeks straight to it, segments join anywhere
        except (av.error.FFmpegError, ValueError) as exc:
            self._container.close()
            raise MediaError(f"cannot set up the FFV1 encoder: {exc}") from exc
        self._stream = stream

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, depth: np.ndarray, pts: int) -> None:
        if depth.shape != (self.height, self.width) or depth.dtype != np.uint16:
            raise ValueError(f"expected a ({self.height}, {self.width}) uint16 depth frame, got {depth.shape} "
                             f"{depth.dtype}")
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(depth), format=PIX_FMT)
        frame.pts, frame.time_base = pts, self.time_base
        self._mux(self._stream.encode(frame))
        self._last_pts = pts
        self._frames += 1



# --- the frame sequence a conversion reads --------------------------------------------------------------------


def source_frame_times(path: Path, window: tuple[float | None, float | None] = (None, None),
                       max_fps: float | None = None) -> list[Fraction]:
    """Seconds (on the source's timeline) of the frames a conversion of ``path`` reads, in order: the frames'
    timestamps as ``media.frames.read_frames`` puts them (in display order, a repeated one dropped), inside
    ``window``, thinned by ``max_fps`` with the same rule. Read from the packets: nothing is decoded."""
    from stereo_spot.media.frames import keeps_frame

    path = Path(path)
    start, end = window
    with open_input(path) as container:
        stream = require_video_stream(container, path)
        time_base = stream.time_base
        frame_seconds = 1 / float(stream.average_rate) if stream.average_rate else 0.0
        stamps: set[int] = set()
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    stamps.add(packet.pts)
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path.name} cannot be read (its video data is damaged): {exc}") from exc
    lo = seconds_to_ticks(start, time_base) if start is not None else None
    hi = seconds_to_ticks(end, time_base) if end is not None else None
    times = []
    for pts in sorted(stamps):
        if (lo is not None and pts < lo) or (hi is not None and pts >= hi):
            continue
        if max_fps and not keeps_frame(float(pts * time_base), frame_seconds, max_fps):
            continue
        times.append(Fraction(pts) * time_base)
    return times


# --- reading a depth video back -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthVideoInfo:
    width: int
    height: int
    times: list[float]  # of its frames, relative to its first frame, in order

    @property
    def fps(self) -> float:
        span = self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0
        return (len(self.times) - 1) / span if span > 0 else 0.0


def _frame_times(container, stream) -> list[float]:
    stamps = sorted({p.pts for p in container.demux(stream) if p.size and p.pts is not None})
    if not stamps:
        return []
    first = stamps[0]
    return [float((pts - first) * stream.time_base) for pts in stamps]


def read_depth_video(path: Path) -> DepthVideoInfo:
    """The depth video's size and frame times, after checking it is one (16-bit grey, tagged near-is-bright);
    MediaError saying what was expected otherwise."""
    path = Path(path)
    with open_input(path) as container:
        stream = require_video_stream(container, path)
        pix_fmt = stream.codec_context.pix_fmt or "unknown"
        if pix_fmt not in ("gray16le", "gray16be"):
            raise MediaError(f"{path.name} is {pix_fmt}, not a depth video: expected 16-bit grey ({PIX_FMT}, as "
                             "`stereo-spot depth` writes it); keep the pixel format when editing it")
        tags = {key.upper(): value for key, value in container.metadata.items()}
        if tags.get(DEPTH_TAG) != NEAR_IS_BRIGHT:
            found = f"{DEPTH_TAG}={tags[DEPTH_TAG]}" if DEPTH_TAG in tags else f"no {DEPTH_TAG} tag"
            raise MediaError(f"{path.name} has {found}: expected {DEPTH_TAG}={NEAR_IS_BRIGHT} (the convention "
                             "`stereo-spot depth` writes); keep the tags when editing it (ffmpeg -map_metadata 0)")
        if tags.get(RANGE_TAG, RANGE) != RANGE:
            raise MediaError(f"{path.name} has {RANGE_TAG}={tags[RANGE_TAG]}: expected {RANGE}")
        times = _frame_times(container, stream)
        if not times:
            raise MediaError(f"{path.name} has no frames")
        return DepthVideoInfo(stream.codec_context.width, stream.codec_context.height, times)


def check_fits(depth_path: Path, source: Path, *, size: tuple[int, int],
               window: tuple[float | None, float | None] = (None, None), max_fps: float | None = None) -> float:
    """The rule every engine applies before rendering from a depth video: it must be a depth video
    (``read_depth_video``), of the source's upright frame ``size`` (width, height), with one frame for each frame
    the conversion reads (``source_frame_times``) at the same time from the first. Returns the source time of the
    first frame (where the depth video's 0 lies); MediaError saying how they differ otherwise."""
    depth = read_depth_video(depth_path)
    name = Path(depth_path).name
    if (depth.width, depth.height) != tuple(size):
        raise MediaError(f"{name} is {depth.width}x{depth.height}, the source's frames are {size[0]}x{size[1]}: "
                         "a depth video has the source's picture size")
    source_times = source_frame_times(source, window, max_fps)
    if not source_times:
        raise MediaError(f"{Path(source).name} has no video frames in the requested time window")
    origin = source_times[0]
    relative = [float(t - origin) for t in source_times]
    part = "the part converted" if window != (None, None) or max_fps else "the source"
    if len(depth.times) != len(relative):
        raise MediaError(f"{name} has {len(depth.times)} frames, {part} has {len(relative)}: a depth video has one "
                         "frame for each frame converted (make it with the same --start, --duration and --max-fps)")
    for index, (mine, theirs) in enumerate(zip(depth.times, relative, strict=True)):
        if abs(mine - theirs) > TIME_TOLERANCE_SECONDS:
            source_fps = (len(relative) - 1) / relative[-1] if relative[-1] > 0 else 0.0
            raise MediaError(f"frame {index} of {name} is at {mine:.3f} s, that of {part} at {theirs:.3f} s: the "
                             f"timing differs ({depth.fps:.4g} fps against {source_fps:.4g} fps); a depth video "
                             "keeps the source's frame times")
    return float(origin)


class DepthFrames:
    """Depth frames of a depth video for source frames named by their time: the frame at the same time from the
    start (``origin``: the source time of the depth video's first frame, what ``check_fits`` returns). Reads
    forward and seeks when asked for an earlier frame or one far ahead, so a segment and its warm-up read only
    their own stretch."""

    _READ_AHEAD = 64  # frames decoded to reach a later one rather than seeking

    def __init__(self, path: Path, origin: float) -> None:
        self.path = Path(path)
        self.origin = float(origin)
        self._container = open_input(self.path)
        self._stream = require_video_stream(self._container, self.path)
        stamps = sorted({p.pts for p in self._container.demux(self._stream) if p.size and p.pts is not None})
        if not stamps:
            self.close()
            raise MediaError(f"{self.path.name} has no frames")
        self._stamps = stamps
        self._times = [float((pts - stamps[0]) * self._stream.time_base) for pts in stamps]
        self._index_of = {pts: index for index, pts in enumerate(stamps)}
        self._decoded = None  # the decoder's frames from the last seek on
        self._position = -1  # index of the last frame decoded
        self._last: np.ndarray | None = None

    def covers(self, seconds: float) -> bool:
        """Whether the source frame at ``seconds`` lies within the depth video's span (a segment's warm-up may
        reach back before the converted part, where the depth video has nothing)."""
        wanted = seconds - self.origin
        return -TIME_TOLERANCE_SECONDS <= wanted <= self._times[-1] + TIME_TOLERANCE_SECONDS

    def index_for(self, seconds: float) -> int:
        """The index of the depth frame for the source frame at ``seconds`` (source timeline)."""
        wanted = seconds - self.origin
        at = bisect.bisect_left(self._times, wanted)
        near = min((i for i in (at - 1, at) if 0 <= i < len(self._times)), key=lambda i: abs(self._times[i] - wanted))
        if abs(self._times[near] - wanted) > TIME_TOLERANCE_SECONDS:
            raise MediaError(f"{self.path.name} has no frame at {wanted:.3f} s (the nearest is at "
                             f"{self._times[near]:.3f} s): it does not fit this source")
        return near

    def frames_at(self, seconds: Sequence[float]) -> np.ndarray:
        """uint16 [N,H,W] depth frames for source frames at ``seconds`` (increasing)."""
        return np.stack([self._frame(self.index_for(s)) for s in seconds])

    def _frame(self, index: int) -> np.ndarray:
        if self._decoded is None or index <= self._position - 1 or index > self._position + self._READ_AHEAD:
            self._seek(index)
        if index == self._position and self._last is not None:
            return self._last
        try:
            for frame in self._decoded:
                if frame.pts is None or frame.pts not in self._index_of:
                    continue
                self._position = self._index_of[frame.pts]
                if self._position < index:
                    continue
                self._last = frame.to_ndarray(format=PIX_FMT)
                if self._position == index:
                    return self._last
                break
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.path.name} cannot be decoded (its data is damaged): {exc}") from exc
        raise MediaError(f"{self.path.name} ends before its frame {index}")

    def _seek(self, index: int) -> None:
        self._container.seek(self._stamps[index], stream=self._stream, backward=True)
        self._decoded = iter(self._container.decode(self._stream))
        self._position = -1
        self._last = None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> DepthFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
