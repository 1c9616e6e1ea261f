"""What is in a media file: container, the main video stream, audio streams, rotation."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.container import InputContainer
from av.video.format import VideoFormat
from av.video.stream import VideoStream

from stereo_spot.media.containers import first_video_stream, open_input, require_decoder
from stereo_spot.media.errors import MediaError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

# When a stream declares no frame rate (a lone picture), FFmpeg assumes 25 fps; so do we.
_DEFAULT_FPS = Fraction(25)
# Packets to feed the decoder while looking for the first frame's display matrix.
_ROTATION_PROBE_PACKETS = 32


@dataclass
class VideoStreamInfo:
    width: int
    height: int
    fps: Fraction  # average frame rate
    time_base: Fraction
    frame_count: int | None  # from the container's index; None when the container does not say
    codec: str
    pix_fmt: str
    bit_depth: int
    # Degrees (0/90/180/270) to rotate the decoded picture clockwise so it displays upright, from the
    # display matrix a phone writes instead of rotating the pixels.
    rotation: int = 0
    # Presentation time (pts x time_base) of the first frame. Windows (start/duration) are in this same
    # timeline; it is 0 for almost every mp4.
    start_seconds: float = 0.0

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, after rotation."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


@dataclass
class AudioStreamInfo:
    index: int  # stream index in the container
    codec: str
    sample_rate: int
    channels: int


@dataclass
class MediaInfo:
    path: Path
    size_bytes: int
    format_name: str
    duration_seconds: float  # of the video stream; of the whole file when there is no video
    video: VideoStreamInfo | None
    audio: list[AudioStreamInfo] = field(default_factory=list)

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)


def probe(path: str | Path, *, max_frame_pixels: int | None = None) -> MediaInfo:
    """Describe a media file. MediaError for a missing, empty or unreadable file; audio-only gives video=None.

    ``max_frame_pixels``: refuse (LimitExceeded) a frame larger than this from the stream's parameters, before
    a frame is decoded (reading the rotation decodes one, and a 15360×15360 frame costs hundreds of MB).
    A duration the file does not declare is measured from its packets (demuxed, not decoded)."""
    path = Path(path)
    if max_frame_pixels is not None:
        from stereo_spot.limits import check_frame_pixels

        size = frame_size(path, required=False)
        if size is not None:
            check_frame_pixels(path.name, *size, max_frame_pixels)
    with open_input(path) as container:
        stream = first_video_stream(container)
        if stream is not None:
            require_decoder(stream, path)
        video = _video_info(container, stream) if stream is not None else None
        duration = _duration_seconds(container, stream)
        if stream is not None and video is not None and duration <= 0:
            duration, frames = _measured_duration(path)
            video.frame_count = video.frame_count or frames
        audio = [
            AudioStreamInfo(
                index=a.index,
                codec=a.codec_context.codec.canonical_name,  # "mp3", not the decoder "mp3float"
                sample_rate=a.codec_context.sample_rate or 0,
                channels=a.codec_context.channels or 0,
            )
            for a in container.streams.audio
        ]
        return MediaInfo(
            path=path,
            size_bytes=path.stat().st_size,
            format_name=container.format.name,
            duration_seconds=duration,
            video=video,
            audio=audio,
        )


def frame_size(path: str | Path, *, required: bool = True) -> tuple[int, int] | None:
    """(width, height) of the main video stream as coded, or of a still image, from the stream's parameters or
    the image's header: nothing is decoded. None (or, when ``required``, MediaError) for a file without video."""
    path = Path(path)
    if is_image(path):
        from stereo_spot.media.still_size import still_size

        size = still_size(path)
        if size is None and required:
            raise MediaError(f"{path.name} is not an image whose size can be read (png, jpg, bmp, webp, tif)")
        return size
    with open_input(path, parameters_only=True) as container:
        stream = first_video_stream(container)
        if stream is None:
            if required:
                raise MediaError(f"{path.name} has no video stream")
            return None
        context = stream.codec_context
        if context is None:  # a codec FFmpeg does not know has no parameters to read (probe says so in full)
            if required:
                raise MediaError(f"{path.name} cannot be decoded: its video codec is not one FFmpeg knows")
            return None
        return context.width, context.height


def require_video(info: MediaInfo) -> VideoStreamInfo:
    if info.video is None:
        raise MediaError(f"{info.path.name} has no video stream")
    return info.video


def is_image(path: str | Path) -> bool:
    """True for a still image (png, jpg, bmp, webp, tif), by its first bytes or, failing that, its name."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError:
        return path.suffix.lower() in IMAGE_SUFFIXES
    if head:
        return _image_signature(head)
    return path.suffix.lower() in IMAGE_SUFFIXES


def _image_signature(head: bytes) -> bool:
    return (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")  # JPEG
        or head.startswith(b"BM")  # BMP
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or head.startswith((b"II*\x00", b"MM\x00*"))  # TIFF, both byte orders
    )


def _video_info(container: InputContainer, stream: VideoStream) -> VideoStreamInfo:
    ctx = stream.codec_context
    pix_fmt = ctx.pix_fmt or "unknown"
    time_base = stream.time_base or Fraction(1, 90_000)
    start = stream.start_time if stream.start_time is not None else 0
    return VideoStreamInfo(
        width=ctx.width,
        height=ctx.height,
        fps=stream.average_rate or stream.guessed_rate or stream.base_rate or _DEFAULT_FPS,
        time_base=time_base,
        frame_count=stream.frames or None,
        codec=ctx.codec.canonical_name,
        pix_fmt=pix_fmt,
        bit_depth=_bit_depth(pix_fmt),
        rotation=_rotation(container, stream),
        start_seconds=float(start * time_base),
    )


def _bit_depth(pix_fmt: str) -> int:
    try:
        return VideoFormat(pix_fmt).components[0].bits
    except (ValueError, IndexError):
        return 8


def _rotation(container: InputContainer, stream: VideoStream) -> int:
    """Clockwise display rotation, read from the first decoded frame's display matrix.

    PyAV exposes the stream's display matrix only on decoded frames, so decode one (a single keyframe:
    milliseconds). FFmpeg reports the matrix as a counter-clockwise angle; negate it.
    """
    stream.thread_type = "NONE"  # frame threading would need several packets before the first frame
    try:
        for n, packet in enumerate(container.demux(stream)):
            if n >= _ROTATION_PROBE_PACKETS:
                break
            for frame in packet.decode():
                return (-round(frame.rotation / 90) * 90) % 360
    except (av.error.FFmpegError, ValueError):
        pass  # an undecodable start is reported by whatever reads the frames; rotation stays unknown (0)
    return 0


def _duration_seconds(container: InputContainer, stream: VideoStream | None) -> float:
    if stream is not None and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _measured_duration(path: Path) -> tuple[float, int]:
    """(seconds, frames) of the main video stream from its packets' timestamps, without decoding: for a file
    that declares no duration (Matroska written live, a cut stream), which would otherwise pass every limit
    on duration and frames as 0 s. MediaError when no packet carries a timestamp."""
    first: int | None = None
    end: int | None = None
    frames = 0
    with open_input(path) as container:
        stream = first_video_stream(container)
        time_base = stream.time_base or Fraction(1, 90_000)
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet demux yields last
                    continue
                frames += 1
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    continue
                first = pts if first is None else min(first, pts)
                stop = pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
        except av.error.FFmpegError:
            pass  # a damaged tail: what was read before it counts
    if first is None or end is None or end <= first:
        if frames == 1:  # a lone picture: no length, like a still image
            return 0.0, 1
        raise MediaError(f"{path.name} declares no duration and none can be measured from its packets; "
                         "remux it (ffmpeg -i in -c copy out.mp4) and try again")
    return float((end - first) * time_base), frames
