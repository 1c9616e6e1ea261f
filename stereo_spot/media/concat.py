"""Join converted segments by stream copy and put the source's audio back."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.stream import Stream
from av.video.stream import VideoStream

from stereo_spot.media.containers import exact_timing_options, open_input, open_output, require_video_stream
from stereo_spot.media.errors import MediaError

log = logging.getLogger(__name__)

# Audio codecs an mp4 carries as they are; anything else (PCM, Vorbis, ...) is re-encoded to AAC.
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
_AAC_BITRATE_PER_CHANNEL = 64_000
_AAC_MAX_CHANNELS = 8
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# Audio is read past the end of a window by this much before giving up on in-window packets of the
# other streams (streams in a file are interleaved within about a second of each other).
_INTERLEAVE_SLACK_SECONDS = 2.0


@dataclass
class ConcatResult:
    frames: int
    duration_seconds: float  # of the joined video stream
    audio_streams: int


def concat_segments(
    segments: list[Path],
    source: Path | None,
    out: Path,
    start: float | None = None,
    duration: float | None = None,
    metadata: dict[str, str] | None = None,
) -> ConcatResult:
    """Join ``segments`` (same codec parameters) into ``out`` by stream copy, with every audio stream of ``source``.

    Segments carry the source's timestamps; the output is shifted to start at 0 and stays continuous (a
    segment that starts before the previous one ends, e.g. one rebased to 0, is moved to follow it). Audio is
    copied when mp4 can carry its codec, otherwise re-encoded to AAC, and shifted by the same amount as the
    video so the two stay in sync. With ``start``/``duration`` the audio is trimmed to the video's span.
    Video and audio packets are written interleaved by time, and the index is moved to the front
    (``+faststart``), so the file plays while it downloads. The output appears atomically at ``out``.

    ``source`` None: no audio (the depth video). A ``.mkv`` ``out`` is Matroska, with ``metadata`` as its tags.
    """
    segments = [Path(s) for s in segments]
    if not segments:
        raise MediaError("there are no converted segments to join")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.stem + ".partial" + out.suffix)
    windowed = start is not None or duration is not None
    try:
        with ExitStack() as stack:
            first = stack.enter_context(open_input(segments[0]))
            template = require_video_stream(first, segments[0])
            matroska = out.suffix.lower() == ".mkv"
            options = {} if matroska else {"movflags": "+faststart", **exact_timing_options(template.time_base)}
            output = stack.enter_context(open_output(partial, options))
            output.metadata.update(metadata or {})
            video_out = output.add_stream_from_template(template, opaque=True)
            # an MV-HEVC stream stays marked multilayer, so the muxer writes its second layer's lhvC box
            video_out.disposition = template.disposition
            video = _SegmentVideo(segments, first, template, video_out)
            audio = _NoAudio() if source is None else \
                _SourceAudio(stack.enter_context(open_input(source)), output, video.offset, windowed)
            _interleave(output, video, audio)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ConcatResult(frames=video.frames, duration_seconds=video.duration_seconds, audio_streams=audio.count)


def _interleave(output: OutputContainer, video: _SegmentVideo, audio: _SourceAudio | _NoAudio) -> None:
    """Write video and audio in time order, so the muxer never buffers more than a moment of either."""
    audio_packets = audio.packets()
    pending = next(audio_packets, None)
    for video_time, packet in video.packets():
        while pending is not None and pending[0] <= video_time:
            output.mux_one(pending[1])
            pending = next(audio_packets, None)
        output.mux_one(packet)
    if audio.windowed:
        audio.end_seconds = video.end_seconds
    while pending is not None:
        time, packet = pending
        if audio.end_seconds is None or time < audio.end_seconds:
            output.mux_one(packet)
        pending = next(audio_packets, None)


class _SegmentVideo:
    """The video packets of all segments in order, shifted so the output starts at 0."""

    def __init__(
        self, segments: list[Path], first: InputContainer, template: VideoStream, out_stream: Stream
    ) -> None:
        self.segments = segments
        self.first = first
        self.template = template
        self.out_stream = out_stream
        self.time_base: Fraction = template.time_base
        start = template.start_time if template.start_time is not None else _first_pts(first, template)
        self.offset_ticks = start
        self.offset = Fraction(start) * self.time_base  # seconds: the source time that becomes 0
        self.frames = 0
        self._min_pts: int | None = None
        self._end_ticks = 0  # max(pts + duration) written, output ticks

    @property
    def end_seconds(self) -> float:
        return float(self._end_ticks * self.time_base)

    @property
    def duration_seconds(self) -> float:
        return float((self._end_ticks - (self._min_pts or 0)) * self.time_base)

    def packets(self) -> Iterator[tuple[float, Packet]]:
        tb_seconds = float(self.time_base)
        last_dts: int | None = None
        last_pts: int | None = None  # latest shown frame so far (output ticks)
        last_duration = 0
        for index, path in enumerate(self.segments):
            with ExitStack() as stack:
                container = self.first if index == 0 else stack.enter_context(open_input(path))
                stream = self.template if index == 0 else require_video_stream(container, path)
                if index:
                    _check_same_codec(self.template, stream, self.segments[0], path)
                shift = self._shift_for(container, stream, last_pts, last_duration)
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    pts, dts = packet.pts, packet.dts
                    if pts is None or dts is None:
                        raise MediaError(f"{path.name} has a video packet without a timestamp")
                    pts -= shift
                    dts -= shift
                    if last_dts is not None and dts <= last_dts:
                        # Encoders pick each segment's first decode timestamps on their own: nudge them
                        # forward so decode order stays strictly increasing across the joint.
                        dts = last_dts + 1
                        if dts > pts:
                            raise MediaError(
                                f"{path.name} overlaps the previous segment in time; convert it again"
                            )
                    packet.pts, packet.dts = pts, dts
                    packet.stream = self.out_stream
                    last_dts = dts
                    if last_pts is None or pts > last_pts:
                        last_pts, last_duration = pts, packet.duration or last_duration
                    if self._min_pts is None or pts < self._min_pts:
                        self._min_pts = pts
                    end = pts + (packet.duration or 0)
                    if end > self._end_ticks:
                        self._end_ticks = end
                    self.frames += 1
                    yield dts * tb_seconds, packet
        if self.frames == 0:
            raise MediaError("the converted segments contain no video frames")

    def _shift_for(
        self, container: InputContainer, stream: VideoStream, last_pts: int | None, last_duration: int
    ) -> int:
        """Ticks to subtract from this segment's timestamps (segments must share the time base)."""
        if stream.time_base != self.time_base:
            raise MediaError(
                f"segment time bases differ ({stream.time_base} vs {self.time_base}); convert them again"
            )
        shift = self.offset_ticks
        if last_pts is None:
            return shift
        start = stream.start_time if stream.start_time is not None else _first_pts(container, stream)
        if start - shift <= last_pts:  # rebased or overlapping: put it right after the previous segment
            shift = start - (last_pts + max(1, last_duration))
        return shift


def _first_pts(container: InputContainer, stream: VideoStream) -> int:
    """Smallest pts among the first packets (B-frames put the first shown frame after the first packet)."""
    found: list[int] = []
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            found.append(packet.pts)
        if len(found) >= 16:
            break
    container.seek(0, stream=stream, backward=True)
    if not found:
        raise MediaError(f"{Path(container.name).name} has no video frames")
    return min(found)


def _check_same_codec(reference: VideoStream, stream: VideoStream, ref_path: Path, path: Path) -> None:
    a, b = reference.codec_context, stream.codec_context
    left = (a.name, a.width, a.height, a.pix_fmt, bytes(a.extradata or b""))
    right = (b.name, b.width, b.height, b.pix_fmt, bytes(b.extradata or b""))
    if left != right:
        raise MediaError(
            f"{path.name} was encoded differently from {ref_path.name} "
            f"({b.name} {b.width}x{b.height} {b.pix_fmt} vs {a.name} {a.width}x{a.height} {a.pix_fmt}); "
            "convert the segments again with the same settings"
        )


class _AudioTrack:
    """One source audio stream and how it reaches the output: copied, or re-encoded to AAC."""

    def __init__(self, stream: AudioStream, output: OutputContainer) -> None:
        self.stream = stream
        self.copy = stream.codec_context.codec.canonical_name in MP4_AUDIO_CODECS
        if self.copy:
            try:
                self.out = output.add_stream_from_template(stream, opaque=True)
            except ValueError:  # this FFmpeg's mp4 muxer refuses the codec after all
                self.copy = False
        if not self.copy:
            ctx = stream.codec_context
            self.out = output.add_stream("aac", rate=ctx.sample_rate, layout=_aac_layout(ctx.layout.name, ctx.channels))
            self.out.bit_rate = _AAC_BITRATE_PER_CHANNEL * min(ctx.channels, _AAC_MAX_CHANNELS)
        for key in ("language", "title", "handler_name"):
            if key in stream.metadata:
                self.out.metadata[key] = stream.metadata[key]


def _aac_layout(name: str, channels: int) -> str:
    """A layout the AAC encoder takes: the source's, or the usual one for its channel count when the source
    does not name its speakers (e.g. PCM in Matroska: "2 channels"); more than 8 channels become stereo."""
    if channels > _AAC_MAX_CHANNELS:
        return "stereo"
    if name.endswith("channels"):
        return _DEFAULT_LAYOUTS.get(channels, "stereo")
    return name


class _NoAudio:
    """A join without audio."""

    windowed = False
    end_seconds = None
    count = 0

    def packets(self) -> Iterator[tuple[float, Packet]]:
        return iter(())


class _SourceAudio:
    """All audio streams of the source, in file order, shifted by the video's offset."""

    def __init__(self, source: InputContainer, output: OutputContainer, offset: Fraction, windowed: bool):
        self.source = source
        self.offset = offset
        self.windowed = windowed
        self.end_seconds: float | None = None  # set once the video is written (windowed only)
        self.tracks = {s.index: _AudioTrack(s, output) for s in source.streams.audio}
        self.count = len(self.tracks)

    def packets(self) -> Iterator[tuple[float, Packet]]:
        if not self.tracks:
            return
        offset = float(self.offset)
        streams = [t.stream for t in self.tracks.values()]
        if self.windowed and offset > _INTERLEAVE_SLACK_SECONDS:
            first = streams[0]
            target = int((self.offset - _INTERLEAVE_SLACK_SECONDS) / first.time_base)
            try:
                self.source.seek(target, stream=first, backward=True)
            except av.error.FFmpegError:
                pass  # read from the beginning instead
        shifts = {i: round(self.offset / t.stream.time_base) for i, t in self.tracks.items()}
        flushed: set[int] = set()
        try:
            for packet in self.source.demux(streams):
                track = self.tracks[packet.stream.index]
                if not packet.size:  # end of this stream: drain the decoder and encoder of a re-encode
                    if not track.copy:
                        flushed.add(packet.stream.index)
                        yield from self._encode(track, packet.decode(), final=True)
                    continue
                tb = float(packet.time_base)
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    continue
                start = pts * tb - offset
                if self.windowed and start + (packet.duration or 0) * tb <= 0:
                    continue  # before the window
                if self.end_seconds is not None and start >= self.end_seconds:
                    if start >= self.end_seconds + _INTERLEAVE_SLACK_SECONDS:
                        break
                    continue
                if track.copy:
                    shift = shifts[packet.stream.index]
                    packet.pts = pts - shift
                    if packet.dts is not None:
                        packet.dts -= shift
                    packet.stream = track.out
                    yield (packet.dts if packet.dts is not None else packet.pts) * tb, packet
                else:
                    yield from self._encode(track, packet.decode(), final=False)
        except av.error.FFmpegError as exc:
            log.warning("%s: audio stops early at a damaged packet (%s)", self.source.name, exc)
        for index, track in self.tracks.items():
            if not track.copy and index not in flushed:
                yield from self._encode(track, [], final=True)

    def _encode(self, track: _AudioTrack, frames, final: bool) -> Iterator[tuple[float, Packet]]:
        """Re-encode decoded frames to AAC (shifted like the video); encoder failures are MediaError, so they
        are not mistaken for a damaged source."""
        rate = track.out.codec_context.sample_rate
        out_tb = Fraction(1, rate)
        offset = float(self.offset)
        for frame in frames:
            if frame.pts is None:
                continue
            start = float(frame.pts * frame.time_base) - offset
            if self.windowed and start + frame.samples / frame.sample_rate <= 0:
                continue
            if self.end_seconds is not None and start >= self.end_seconds:
                continue
            frame.pts = round(start * rate)
            frame.time_base = out_tb
            yield from self._timed(track, frame)
        if final:
            yield from self._timed(track, None)

    def _timed(self, track: _AudioTrack, frame: av.AudioFrame | None) -> Iterator[tuple[float, Packet]]:
        try:
            packets = track.out.encode(frame)
        except av.error.FFmpegError as exc:
            name = Path(self.source.name).name
            raise MediaError(
                f"cannot re-encode audio stream {track.stream.index} of {name} "
                f"({track.stream.codec_context.codec.canonical_name}) to AAC: {exc}"
            ) from exc
        for packet in packets:
            yield packet.dts * float(packet.time_base), packet
