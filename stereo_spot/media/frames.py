"""Decoding video to RGB arrays and encoding RGB arrays back to video, keeping the source's timestamps."""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from av.video.stream import VideoStream

from stereo_spot.media.containers import (
    EncodingWriter,
    exact_timing_options,
    frame_ticks,
    open_input,
    open_output,
    require_video_stream,
    seconds_to_ticks,
)
from stereo_spot.media.encode import BITSTREAMS, EncodeSettings, with_sei
from stereo_spot.media.errors import MediaError

log = logging.getLogger(__name__)

# AVColorSpace values (what decoded frames carry) -> the swscale matrix that undoes them.
_AVCOL_SPC_BT709, _AVCOL_SPC_UNSPECIFIED, _AVCOL_RANGE_JPEG = 1, 2, 2
_MATRIX_FOR_COLORSPACE = {
    1: Colorspace.ITU709,
    4: Colorspace.FCC,
    5: Colorspace.ITU601,  # BT470BG
    6: Colorspace.SMPTE170M,
    7: Colorspace.SMPTE240M,
    9: Colorspace.BT2020,  # BT2020 non-constant luminance
    10: Colorspace.BT2020,
}
# Players treat untagged HD video as BT.709 and untagged SD video as BT.601; so do we.
_HD_HEIGHT = 720
_ROTATIONS = (0, 90, 180, 270)
# Decoded frames held to put mislabelled timestamps back in order (``in_display_time``), for codecs that reorder
# frames. Real files are off by at most a few frames (a B-pyramid of three: 3); H.264 allows up to 16.
REORDER_DEPTH = 8


@dataclass
class DecodedFrame:
    rgb: np.ndarray  # (H, W, 3) uint8, C-contiguous, already rotated upright
    pts: int  # in time_base units, as in the file the frame came from
    time_base: Fraction

    @property
    def seconds(self) -> float:
        return float(self.pts * self.time_base)


def read_frames(
    path: str | Path,
    rotation: int = 0,
    window: tuple[float | None, float | None] = (None, None),
    threads: int = 0,
    max_fps: float | None = None,
) -> Iterator[DecodedFrame]:
    """Decode every frame of the main video stream as RGB, in display order.

    ``rotation`` (0/90/180/270) turns each picture clockwise, as ``VideoStreamInfo.rotation`` asks.
    ``window`` = (start, end) in seconds of the file's timeline (pts x time_base): only frames with
    start <= time < end are yielded (either bound may be None). 10-bit and other pixel formats are converted
    to 8-bit RGB with the colour matrix the stream is tagged with. Decoding uses frame and slice threads
    (``threads=0``: FFmpeg's choice). ``max_fps`` keeps at most that many frames a second: the first frame of
    each 1/max_fps slot of the timeline (``keeps_frame``), a rule of the frame's own time, so segments decoded
    apart keep the same frames a single pass would.
    """
    if rotation not in _ROTATIONS:
        raise ValueError(f"rotation must be one of {_ROTATIONS}, got {rotation}")
    path = Path(path)
    start, end = window
    with open_input(path) as container:
        stream = require_video_stream(container, path)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        time_base: Fraction = stream.time_base
        lo = seconds_to_ticks(start, time_base) if start is not None else None
        hi = seconds_to_ticks(end, time_base) if end is not None else None
        if lo is not None and lo > (stream.start_time or 0):
            try:
                container.seek(lo, stream=stream, backward=True)  # lands on the keyframe at or before lo
            except av.error.FFmpegError:
                pass  # not seekable: decode from the start and skip
        quarter_turns = -(rotation // 90)  # np.rot90 turns counter-clockwise
        frame_seconds = 1 / float(stream.average_rate) if stream.average_rate else 0.0
        try:
            for frame, pts in in_display_time(container.decode(stream), reorder_depth(stream), path.name):
                if lo is not None and pts < lo:
                    continue
                if hi is not None and pts >= hi:
                    break  # frames leave the decoder in display order: the rest are later still
                if max_fps and not keeps_frame(float(pts * time_base), frame_seconds, max_fps):
                    continue
                rgb = frame_to_rgb(frame)
                if quarter_turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
                yield DecodedFrame(rgb=rgb, pts=pts, time_base=time_base)
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path.name} cannot be decoded (its video data is damaged): {exc}") from exc


def reorder_depth(stream: VideoStream) -> int:
    """Frames ``in_display_time`` holds for this stream: none for a codec that never reorders frames."""
    return REORDER_DEPTH if stream.codec_context.has_b_frames else 0


def in_display_time(
    frames: Iterable[av.VideoFrame], depth: int, name: str = "video", *, keep_repeats: bool = False
) -> Iterator[tuple[av.VideoFrame, int]]:
    """Decoded frames (in the order the decoder returns them) with increasing presentation timestamps.

    A decoder returns frames in display order, each labelled with the timestamp of the packet that carried it.
    Some files label them out of order: an mp4 whose muxer wrote decode times as presentation times (no
    composition offsets, B-frames in the bitstream: 0, 101, 67, 134, 34 ms, ...), or an AVI with DivX packed
    B-frames (1, 2, 3, 5, 4, ...). The frames are in the right order; only their labels are shuffled among
    near neighbours. Holding ``depth`` frames and giving the oldest the smallest label held puts the labels
    back in order (what players show: every frame at its own time, the audio in sync); a correctly labelled
    stream comes out unchanged. A label that repeats after this (two frames claiming one instant) drops the
    later frame, as FFmpeg does for variable-rate output; a frame without a label is placed one tick after
    the previous one. ``keep_repeats`` yields such a frame with its label instead (``retime_repeats`` gives it
    a time of its own).
    """
    pending: deque[av.VideoFrame] = deque()
    labels: list[int] = []
    last: int | None = None
    duplicates = 0

    def emit() -> Iterator[tuple[av.VideoFrame, int]]:
        nonlocal last, duplicates
        frame = pending.popleft()
        if labels:
            pts = heapq.heappop(labels)
        else:
            pts = 0 if last is None else last + 1
        if last is not None and pts <= last:
            if keep_repeats:
                yield frame, pts
                return
            duplicates += 1
            return
        last = pts
        yield frame, pts

    for frame in frames:
        pending.append(frame)
        if frame.pts is not None:
            heapq.heappush(labels, frame.pts)
        if len(pending) > depth:
            yield from emit()
    while pending:
        yield from emit()
    if duplicates:
        log.warning("%s: %d frame(s) repeat an earlier frame's timestamp; dropped", name, duplicates)


class RetimeCount:
    """How many frames ``retime_repeats`` gave a new time."""

    def __init__(self) -> None:
        self.frames = 0
        self.total = 0


def retime_repeats(pairs: Iterable[tuple[av.VideoFrame, int]], frame_ticks: int,
                   count: RetimeCount | None = None) -> Iterator[tuple[av.VideoFrame, int]]:
    """(frame, pts) pairs with every frame kept and times strictly increasing: a run of frames whose labels repeat
    or go back (a Matroska file with duplicate or broken timestamps) is spread evenly between the last good
    time before it and the next one after it, where the frames most likely belonged; a run at the very end
    steps on by ``frame_ticks``, the nominal frame duration. Frames are never reordered or dropped."""
    count = count or RetimeCount()
    last: int | None = None
    run: list[av.VideoFrame] = []

    def spread(until: int | None) -> Iterator[tuple[av.VideoFrame, int]]:
        nonlocal last
        base = last
        step = (until - base) / (len(run) + 1) if until is not None else frame_ticks
        for k, held in enumerate(run, 1):
            pts = max(last + 1, round(base + k * step))
            last = pts
            count.frames += 1
            yield held, pts
        run.clear()

    for frame, pts in pairs:
        count.total += 1
        if last is None:
            last = pts
            yield frame, pts
        elif pts <= last:
            run.append(frame)
        else:
            if run:
                yield from spread(pts if pts - last > len(run) else None)
            pts = max(pts, last + 1)
            last = pts
            yield frame, pts
    if run:
        yield from spread(None)


def keeps_frame(seconds: float, frame_seconds: float, max_fps: float) -> bool:
    """Whether a frame at ``seconds`` (lasting ``frame_seconds``) is the first of its 1/max_fps slot."""
    slot = math.floor(seconds * max_fps + 1e-6)
    return frame_seconds <= 0 or math.floor((seconds - frame_seconds) * max_fps + 1e-6) != slot


def read_frame_batches(path: str | Path, batch_size: int, **kwargs) -> Iterator[list[DecodedFrame]]:
    """``read_frames`` grouped into lists of ``batch_size`` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[DecodedFrame] = []
    for frame in read_frames(path, **kwargs):
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    colorspace = frame.colorspace
    if colorspace in _MATRIX_FOR_COLORSPACE:
        matrix = _MATRIX_FOR_COLORSPACE[colorspace]
    else:
        matrix = Colorspace.ITU709 if frame.height >= _HD_HEIGHT else Colorspace.ITU601
    full_range = frame.color_range == _AVCOL_RANGE_JPEG or frame.format.name.startswith("yuvj")
    return frame.to_ndarray(
        format="rgb24",
        src_colorspace=matrix,
        src_color_range=ColorRange.JPEG if full_range else ColorRange.MPEG,
        dst_color_range=ColorRange.JPEG,
    )


#: AVStereo3DType values FFmpeg puts in a frame's STEREO3D side data
_STEREO3D_TYPES = {0: "2d", 1: "side_by_side", 2: "top_bottom", 3: "frame_sequence", 4: "checkerboard",
                   5: "side_by_side_quincunx", 6: "lines", 7: "columns"}


def stereo_layout(path: str | Path, frames: int = 1) -> tuple[str, bool] | None:
    """The stereo layout signalled in the video bitstream (H.264's or HEVC's frame-packing SEI), as FFmpeg
    reports it on decoded frames: (``"side_by_side"`` | ``"top_bottom"`` | …, inverted = right view first), or
    None where the first ``frames`` frames carry none (a 2D video, or an anaglyph)."""
    from av.sidedata.sidedata import Type

    path = Path(path)
    with open_input(path) as container:
        stream = require_video_stream(container, path)
        for index, frame in enumerate(container.decode(stream)):
            for data in frame.side_data:
                if data.type == Type.STEREO3D:
                    # AVStereo3D starts with two native ints: the type and the flags (bit 0: inverted)
                    kind, flags = (int(v) for v in np.frombuffer(bytes(data)[:8], dtype=np.int32))
                    return _STEREO3D_TYPES.get(kind, f"type {kind}"), bool(flags & 1)
            if index + 1 >= frames:
                break
    return None


def frame_count(path: str | Path) -> int:
    """Number of frames of the main video stream, by reading packets (no decoding)."""
    path = Path(path)
    with open_input(path) as container:
        stream = require_video_stream(container, path)
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size:
                    count += 1
        except av.error.FFmpegError:
            pass  # a damaged tail: count what is readable
        return count


def _with_data(packet: av.Packet, data: bytes) -> av.Packet:
    """A copy of ``packet`` (timing, stream, keyframe flag) carrying ``data`` instead."""
    copy = av.Packet(data)
    copy.pts, copy.dts, copy.duration, copy.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    copy.stream = packet.stream
    copy.is_keyframe = packet.is_keyframe
    return copy


class VideoWriter(EncodingWriter):
    """Encodes RGB frames to an mp4 with the timestamps and time base of the source.

    Each ``write(rgb, pts)`` keeps ``pts`` (in ``time_base`` units), so variable frame rate and the source's
    exact timing survive. 4:2:0 and 4:2:2 need even dimensions: an odd width or height is padded by one
    pixel (at most) by repeating the last column or row. Colour is encoded as BT.709 limited range and tagged
    so players decode it the same way. ``fps`` is the nominal rate (the encoder's rate control and the
    stream's frame rate) and the length given to the last frame. A writer closed without any frame leaves no
    file (check ``frames_written``).
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        time_base: Fraction,
        fps: Fraction,
        settings: EncodeSettings,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.path = Path(path)
        self.width, self.height = width, height
        self.time_base = Fraction(time_base)
        self.settings = settings
        chroma_even = settings.pix_fmt.startswith(("yuv420", "yuv422", "nv12", "yuvj420", "yuvj422"))
        self._pad_w = width % 2 if chroma_even else 0
        self._pad_h = height % 2 if chroma_even and settings.pix_fmt.startswith(("yuv420", "nv12", "yuvj420")) else 0
        self._last_pts: int | None = None
        self._frames = 0
        # The last frame's duration is not implied by a next timestamp: give every packet the nominal one.
        self._frame_ticks = frame_ticks(fps, self.time_base)
        self._container = open_output(self.path, exact_timing_options(self.time_base))
        try:
            stream = self._container.add_stream(settings.codec, rate=Fraction(fps) if fps else None)
            stream.width, stream.height = width + self._pad_w, height + self._pad_h
            stream.pix_fmt = settings.pix_fmt
            ctx = stream.codec_context
            ctx.time_base = self.time_base
            ctx.thread_count = settings.threads
            ctx.options = {**ctx.options, **settings.codec_options()}
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _AVCOL_SPC_BT709
            ctx.color_range = int(ColorRange.MPEG)
        except (av.error.FFmpegError, ValueError) as exc:
            self._container.close()
            raise MediaError(f"cannot set up the {settings.codec} encoder: {exc}") from exc
        self._stream = stream
        # An encoder that cannot write the frame-packing SEI itself gets it on every keyframe from here.
        self._sei = settings.packet_sei()

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, rgb: np.ndarray, pts: int) -> None:
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"expected a ({self.height}, {self.width}, 3) uint8 frame, got {rgb.shape} {rgb.dtype}"
            )
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        if self._pad_w or self._pad_h:
            rgb = np.pad(rgb, ((0, self._pad_h), (0, self._pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            format=self.settings.pix_fmt,
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
        )
        frame.pts, frame.time_base = pts, self.time_base
        self._mux(self._stream.encode(frame))
        self._last_pts = pts
        self._frames += 1

    def _prepared(self, packet: av.Packet) -> av.Packet:
        if self._sei is not None and packet.is_keyframe:
            return _with_data(packet, with_sei(bytes(packet), self._sei, BITSTREAMS[self.settings.codec]))
        return packet
