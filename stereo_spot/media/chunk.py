"""Split a video into mp4 segments: by stream copy at keyframes (no decoding, no re-encoding) where mp4 can
carry the source's codec, else by re-encoding the source losslessly to H.264."""

from __future__ import annotations

import io
import logging
import math
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.stream import Stream
from av.video.frame import PictureType
from av.video.reformatter import ColorRange, Colorspace
from av.video.stream import VideoStream

from stereo_spot.media.containers import (
    EncodingWriter,
    exact_seconds,
    exact_timing_options,
    frame_ticks,
    open_input,
    open_output,
    require_video_stream,
)
from stereo_spot.media.errors import MediaError
from stereo_spot.media.frames import RetimeCount, in_display_time, reorder_depth, retime_repeats

log = logging.getLogger(__name__)


def segment_name(index: int) -> str:
    return f"{index:05d}.mp4"


def chunk_video(
    src: Path,
    out_dir: Path,
    segment_seconds: float,
    start: float | None = None,
    duration: float | None = None,
) -> list[Path]:
    """Split the video stream of ``src`` into ``out_dir/00000.mp4, 00001.mp4, ...`` by stream copy.

    A new segment starts at the first keyframe at or after each multiple of ``segment_seconds`` (counted
    from the first kept keyframe), so every segment decodes on its own and every source frame lands in
    exactly one segment. Packets keep their source timestamps, so convert can reproduce the source timing
    exactly (VFR too) and concat puts the segments back edge to edge. Only video is written: concat takes
    the audio from the source. Packets stream straight from the demuxer to the muxer: memory does not
    grow with the length of the input.

    With ``start``/``duration`` (seconds in the source's timeline, pts x time_base; ``start=None`` means
    the first frame), packets are kept from the keyframe at or before ``start`` up to the first keyframe at
    or after the window's end: convert drops the frames outside the window.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be positive, got {duration}")
    out_dir.mkdir(parents=True, exist_ok=True)

    with open_input(src) as container:
        copies = segment_copies(require_video_stream(container, src))
    if not copies:
        return _transcode_window(src, out_dir, segment_seconds, start, duration)
    for use_seek in (True, False):
        with open_input(src) as container:
            stream = require_video_stream(container, src)
            window = _Window.of(stream, start, duration)
            writer = _SegmentWriter(out_dir, stream, segment_seconds)
            try:
                done = _copy_window(container, stream, writer, src, window, use_seek)
            except _BrokenTiming:
                # Copied packets keep their labels: timestamps that repeat or go back cannot be kept. Decode the
                # frames instead and give each one a time of its own.
                writer.discard()
                return _transcode_window(src, out_dir, segment_seconds, start, duration, retime=True)
            finally:
                writer.close()
            if done:
                return writer.paths
            # The seek landed after the keyframe we need (a sparse or odd index): read from the beginning.
            writer.discard()
    raise AssertionError("unreachable: the second pass never seeks")


def segment_copies(stream: VideoStream) -> bool:
    """Whether ``stream``'s packets can be stream-copied into an mp4 segment: FFmpeg's own mp4 muxer is asked
    (on an in-memory file). This is the one decision between copying and re-encoding a source: an AVI's
    MS-MPEG4 or Cinepak, say, has no mp4 form, so ``chunk_video`` re-encodes such a source."""
    try:
        with av.open(io.BytesIO(), "w", format="mp4") as trial:
            trial.add_stream_from_template(stream, opaque=True)
            trial.start_encoding()
    except (ValueError, av.error.FFmpegError):
        return False
    return True


# A segment that cannot be a stream copy is re-encoded losslessly (x264 at qp 0): the conversion then sees exactly
# the source's pixels, as with a copy, and the codecs this applies to (MS-MPEG4, Cinepak, Indeo, ... in AVI) are
# old, small-picture ones, so the larger intermediate costs little; "veryfast" keeps the extra pass cheap.
INTERMEDIATE_CODEC = "libx264"
_INTERMEDIATE_OPTIONS = {"qp": "0", "preset": "veryfast"}
# Pixel formats x264 encodes as they are; anything else (RGB, yuv410p, ...) becomes yuv444p, which keeps every
# chroma sample and has no even-size rule (an odd-sized 4:2:0 source goes to it too).
_X264_PIX_FMTS = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le", "gray"})
_AVCOL_SPC_BT709 = 1


def _transcode_window(
    src: Path, out_dir: Path, segment_seconds: float, start: float | None, duration: float | None,
    retime: bool = False,
) -> list[Path]:
    """``chunk_video`` for a source whose codec mp4 cannot carry, or (``retime``) whose timestamps repeat or go
    back: decode the window's frames and encode them into segments of about ``segment_seconds`` (each starts
    with a keyframe), with the source's timestamps, repaired by ``retime_repeats`` where they are broken."""
    with open_input(src) as container:
        stream = require_video_stream(container, src)
        codec = stream.codec_context.name
        if not retime:
            log.info("%s: its %s video cannot be copied into mp4 segments; re-encoding them losslessly with %s",
                     src.name, codec, INTERMEDIATE_CODEC)
        window = _Window.of(stream, start, duration)
        rate = stream.average_rate or stream.guessed_rate
        one_frame = frame_ticks(rate, stream.time_base)
        retimed = RetimeCount()
        stream.thread_type = "AUTO"
        if window.start is not None:
            try:
                container.seek(window.start, stream=stream, backward=True)
            except av.error.FFmpegError:
                pass  # not seekable: decode from the start and skip
        writer = _TranscodeWriter(out_dir, stream, segment_seconds)
        decoded = 0

        def counted(frames):
            nonlocal decoded
            for frame in frames:
                decoded += 1
                yield frame

        try:
            pairs = in_display_time(counted(container.decode(stream)), reorder_depth(stream), src.name,
                                    keep_repeats=retime)
            if retime:
                pairs = retime_repeats(pairs, one_frame, retimed)
            for frame, pts in pairs:
                if window.start is not None and pts < window.start:
                    continue
                if window.end is not None and pts >= window.end:
                    break
                writer.write(frame, pts)
        except av.error.FFmpegError as exc:
            if writer.frames == 0:
                raise MediaError(f"{src.name} cannot be decoded (its {codec} video data is damaged): {exc}") from exc
            log.warning("%s: stopped at a damaged frame after %d frames", src.name, writer.frames)
        finally:
            writer.close()
    if retimed.total > 1 and retimed.frames == retimed.total - 1:
        raise untimed(src, retimed.total)  # not a few broken labels: no timing at all to repair
    if retimed.frames:
        log.warning("%s: %d of %d video frames had duplicate or out-of-order timestamps; converted with times "
                    "spread between their neighbours", src.name, retimed.frames, retimed.total)
    if writer.frames == 0:
        if window.start is not None:
            begin = float(window.start * stream.time_base)
            raise MediaError(f"{src.name}: the start time {begin:g} s is past the end of the video")
        raise MediaError(f"{src.name} has no readable video frames")
    if writer.frames == 1 and decoded > 1 and window.end is None:
        raise untimed(src, decoded)
    return writer.paths


def untimed(src: Path, frames: int) -> MediaError:
    """A file whose frames all carry one timestamp has no timing to keep: no player can show it as a video."""
    return MediaError(f"{src.name} has no frame timing: all {frames} video frames carry the same timestamp "
                      "(re-encode it with timestamps, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")


class _TranscodeWriter(EncodingWriter):
    """Encodes decoded frames into numbered mp4 files; a frame past the next boundary opens the next file."""

    def __init__(self, out_dir: Path, template: VideoStream, segment_seconds: float) -> None:
        self.out_dir = out_dir
        self.template = template
        self.time_base: Fraction = template.time_base
        self.segment_ticks = exact_seconds(segment_seconds) / self.time_base
        rate = template.average_rate or template.guessed_rate
        self.rate = Fraction(rate) if rate else None
        self._frame_ticks = frame_ticks(self.rate, self.time_base)
        self.paths: list[Path] = []
        self.frames = 0
        self._origin = 0
        self._next_boundary = 0
        self._container: OutputContainer | None = None
        self._stream: VideoStream | None = None
        self._pix_fmt = ""
        self._from_rgb = False

    def write(self, frame: av.VideoFrame, pts: int) -> None:
        if self._container is None:
            self._origin = pts
            self._open_next(1, frame)
        elif pts >= self._next_boundary:
            self._open_next(math.floor((pts - self._origin) / self.segment_ticks) + 1, frame)
        if self._from_rgb:
            frame = frame.reformat(format=self._pix_fmt, dst_colorspace=Colorspace.ITU709,
                                   dst_color_range=ColorRange.MPEG)
        elif frame.format.name != self._pix_fmt:
            frame = frame.reformat(format=self._pix_fmt)
        frame.pts, frame.time_base = pts, self.time_base
        frame.pict_type = PictureType.NONE  # the encoder chooses; the source's frame types mean nothing here
        self._mux(self._stream.encode(frame))
        self.frames += 1

    def _open_next(self, boundary_number: int, frame: av.VideoFrame) -> None:
        self.close()
        self._next_boundary = math.ceil(self._origin + boundary_number * self.segment_ticks)
        path = self.out_dir / segment_name(len(self.paths))
        self._container = open_output(path, exact_timing_options(self.time_base))
        stream = self._container.add_stream(INTERMEDIATE_CODEC, rate=self.rate)
        source_fmt = frame.format.name
        odd = frame.width % 2 or frame.height % 2
        self._from_rgb = frame.format.is_rgb
        if source_fmt in _X264_PIX_FMTS and not (odd and source_fmt.startswith(("yuv420", "yuv422"))):
            self._pix_fmt = source_fmt
        else:
            self._pix_fmt = "yuv444p"
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, self._pix_fmt
        ctx = stream.codec_context
        ctx.time_base = self.time_base
        ctx.options = dict(_INTERMEDIATE_OPTIONS)
        if self._from_rgb:
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _AVCOL_SPC_BT709
            ctx.color_range = int(ColorRange.MPEG)
        else:  # the same samples as the source: the same colour tags, so they decode to the same RGB
            ctx.colorspace, ctx.color_range = frame.colorspace, frame.color_range
            ctx.color_primaries, ctx.color_trc = frame.color_primaries, frame.color_trc
        self._stream = stream
        self.paths.append(path)



class _Window:
    """The part of the stream to keep, in the stream's ticks. None bounds are open."""

    def __init__(self, start: int | None, end: int | None) -> None:
        self.start = start
        self.end = end

    @classmethod
    def of(cls, stream: VideoStream, start: float | None, duration: float | None) -> _Window:
        time_base: Fraction = stream.time_base
        first = stream.start_time or 0
        begin = exact_seconds(start) if start is not None else first * time_base
        start_ticks = math.ceil(begin / time_base) if start is not None else None
        if start_ticks is not None and start_ticks <= first:
            start_ticks = None  # the window opens at or before the first frame: nothing to skip
        end_ticks = math.ceil((begin + exact_seconds(duration)) / time_base) if duration else None
        return cls(start_ticks, end_ticks)


class _BrokenTiming(Exception):
    """A packet whose timestamp repeats or goes back: a stream copy would drop it and what follows."""


class _SegmentWriter:
    """Writes packets into numbered mp4 files; a keyframe past the next boundary opens the next file."""

    def __init__(self, out_dir: Path, template: VideoStream, segment_seconds: float) -> None:
        self.out_dir = out_dir
        self.template = template
        self.segment_ticks = exact_seconds(segment_seconds) / template.time_base
        self.options = exact_timing_options(template.time_base)
        self.paths: list[Path] = []
        self.packets = 0
        self.end_ticks = -math.inf  # latest pts + duration written: to tell whether the window was reached
        self.timestamps: set[int] = set()  # up to two distinct ones: to tell a file with no frame timing at all
        self._origin = 0
        self._next_boundary = 0
        self._container: OutputContainer | None = None
        self._stream: Stream | None = None
        self._last_dts: int | None = None
        self._seen: set[int] = set()  # every pts written: a repeat is broken timing (an int each: bounded)

    def write(self, packet: Packet) -> None:
        pts = packet.pts if packet.pts is not None else packet.dts
        if packet.dts is not None:
            if self._last_dts is not None and packet.dts <= self._last_dts:
                raise _BrokenTiming()
            self._last_dts = packet.dts
        if pts is not None:
            if pts in self._seen:
                raise _BrokenTiming()
            self._seen.add(pts)
        if self._container is None:
            self._origin = pts or 0
            self._open_next(1)
        elif packet.is_keyframe and pts is not None and pts >= self._next_boundary:
            self._open_next(math.floor((pts - self._origin) / self.segment_ticks) + 1)
        packet.stream = self._stream
        self._container.mux_one(packet)
        self.packets += 1
        if pts is not None and len(self.timestamps) < 2:
            self.timestamps.add(pts)
        if pts is not None and pts + (packet.duration or 0) > self.end_ticks:
            self.end_ticks = pts + (packet.duration or 0)

    def _open_next(self, boundary_number: int) -> None:
        self.close()
        self._next_boundary = math.ceil(self._origin + boundary_number * self.segment_ticks)
        path = self.out_dir / segment_name(len(self.paths))
        self._container = open_output(path, self.options)
        # opaque: no encoder needed, only the source's codec parameters (display matrix included).
        self._stream = self._container.add_stream_from_template(self.template, opaque=True)
        self.paths.append(path)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def discard(self) -> None:
        self.close()
        for path in self.paths:
            path.unlink(missing_ok=True)
        self.paths.clear()
        self.packets = 0


def _copy_window(
    container: InputContainer,
    stream: VideoStream,
    writer: _SegmentWriter,
    src: Path,
    window: _Window,
    use_seek: bool,
) -> bool:
    """Copy the window's packets into segments. False when a seek overshot and a rescan is needed."""
    waiting = window.start is not None  # before the window: hold the current GOP only (bounded memory)
    seeked = False
    if waiting and use_seek:
        try:
            container.seek(window.start, stream=stream, backward=True)
            seeked = True
        except av.error.FFmpegError:
            pass  # not seekable: read from the beginning
    gop: list[Packet] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if waiting:
                pts = packet.pts if packet.pts is not None else packet.dts
                if packet.is_keyframe and pts is not None and pts > window.start:
                    if not gop and seeked:
                        return False
                    waiting = False  # `gop` holds the GOP containing the window start: write it first
                    for held in gop:
                        writer.write(held)
                    gop = []
                else:
                    if packet.is_keyframe:
                        gop = [packet]
                    elif gop:
                        gop.append(packet)
                    # else: a frame before any keyframe after a seek cannot be decoded: skip it
                    continue
            if window.end is not None and packet.is_keyframe and writer.packets:
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is not None and pts >= window.end:
                    break
            writer.write(packet)
    except av.error.FFmpegError as exc:
        # A damaged tail: keep what was read (it decodes), say what happened.
        if writer.packets == 0 and not gop:
            raise MediaError(f"{src.name} is damaged: no video packet could be read ({exc})") from exc
        log.warning("%s: stopped at a damaged packet after %d frames", src.name, writer.packets + len(gop))
    for held in gop:  # the window starts in the last GOP
        writer.write(held)

    if writer.packets == 0:
        raise MediaError(f"{src.name} has no readable video frames")
    if writer.packets > 1 and len(writer.timestamps) < 2:
        raise untimed(src, writer.packets)
    if window.start is not None and writer.end_ticks <= window.start:
        end = float(writer.end_ticks * stream.time_base)
        start = float(window.start * stream.time_base)
        raise MediaError(f"{src.name}: the start time {start:g} s is past the end of the video ({end:.3f} s)")
    if window.start is None and window.end is None and stream.frames and writer.packets < stream.frames:
        log.warning(
            "%s is truncated: %d of %d frames are readable; using those", src.name, writer.packets, stream.frames
        )
    return True
