"""Opening media files with PyAV: readable errors for bad input, and mp4 options that keep exact timing."""

from __future__ import annotations

import logging
import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.container import InputContainer, OutputContainer
from av.stream import Disposition
from av.video.stream import VideoStream

from stereo_spot.media.errors import MediaError

log = logging.getLogger(__name__)

# mp4 track timescales below this are multiplied by 2 until they reach it (FFmpeg's movenc does the same).
_MIN_TRACK_TIMESCALE = 10_000


def check_readable_file(path: Path) -> int:
    """Size of ``path`` in bytes, or MediaError when it is missing, not a file or empty."""
    if not path.exists():
        raise MediaError(f"{path.name} does not exist ({path})")
    if not path.is_file():
        raise MediaError(f"{path.name} is not a file ({path})")
    size = path.stat().st_size
    if size == 0:
        raise MediaError(f"{path.name} is empty (0 bytes)")
    return size


# The containers a source may be (FFmpeg demuxer names). FFmpeg picks a demuxer from the file's content, and some
# demuxers open other files: an uploaded HLS playlist (.m3u8) or ffconcat list naming ``/etc/passwd`` or another
# user's video would be read. So only these demuxers, and only the ``file`` protocol (no http, no pipe, no
# nested "concat:"/"subfile:" URLs), are allowed. Audio containers are here so that an audio-only upload gets
# "has no video stream" rather than a vaguer message.
ALLOWED_CONTAINERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpegts", "mpeg", "asf", "flv", "ogg",
                      "mp3", "wav", "aac", "flac")
# Decoders skip every frame while the streams are probed; PyAV gives stream i the i-th entry (streams past the
# list probe as usual).
_PARAMETERS_ONLY = {"skip_frame": "all"}
_MAX_STREAMS = 64
_INPUT_OPTIONS = {"format_whitelist": ",".join(ALLOWED_CONTAINERS), "protocol_whitelist": "file"}


def open_input(path: str | Path, *, parameters_only: bool = False) -> InputContainer:
    """Open a media file for reading (the allowed containers only, from a local file); every failure becomes a
    one-line MediaError.

    ``parameters_only``: the streams' parameters (picture size, codec) without decoding a frame. Opening a file
    normally decodes its first frames (FFmpeg's avformat_find_stream_info does, e.g. to learn H.264's decode
    delay), which for a 15360×15360 picture costs hundreds of MB before anything could check its size."""
    path = Path(path)
    check_readable_file(path)
    stream_options = [_PARAMETERS_ONLY] * _MAX_STREAMS if parameters_only else None
    try:
        container = av.open(str(path), metadata_errors="replace", options=dict(_INPUT_OPTIONS),
                            stream_options=stream_options)
    except av.error.ArgumentError as exc:  # EINVAL: FFmpeg's answer for a demuxer that is not on the whitelist
        raise MediaError(f"{path.name} is not a video file this app converts (allowed containers: mp4/mov, "
                         "mkv/webm, avi, mpeg-ts, mpeg-ps, wmv, flv, ogg)") from exc
    except av.error.FFmpegError as exc:
        truncation = mp4_truncation(path)
        if truncation:
            raise MediaError(f"{path.name} is truncated: {truncation}") from exc
        raise MediaError(f"{path.name} is not a video file FFmpeg can read") from exc
    except OSError as exc:
        raise MediaError(f"{path.name} cannot be read: {exc.strerror or exc}") from exc
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise MediaError(f"{path.name} is not a video file FFmpeg can read (it has no audio or video)")
    return container


def first_video_stream(container: InputContainer) -> VideoStream | None:
    """The main video stream: the first one that is not cover art (an m4a's picture is not a video)."""
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    return None


def require_video_stream(container: InputContainer, path: str | Path) -> VideoStream:
    stream = first_video_stream(container)
    if stream is None:
        raise MediaError(f"{Path(path).name} has no video stream")
    require_decoder(stream, path)
    return stream


def require_decoder(stream: VideoStream, path: str | Path) -> None:
    """MediaError when FFmpeg has no decoder for the stream's codec (an AVI's unknown FourCC, say): PyAV then
    gives the stream no codec context at all."""
    if stream.codec_context is None:
        raise MediaError(f"{Path(path).name} cannot be decoded: its video codec is not one FFmpeg knows")


def mp4_truncation(path: Path) -> str | None:
    """Why an ISO-BMFF (mp4/mov) file that FFmpeg cannot open looks cut short, or None if it does not.

    A recorder or copy that stops early leaves the top-level boxes (``ftyp``, ``mdat``) without the
    ``moov`` index that normally comes last, or with a box whose declared size runs past the end of the file.
    """
    size = path.stat().st_size
    boxes: list[bytes] = []
    with path.open("rb") as fh:
        offset = 0
        while offset + 8 <= size:
            fh.seek(offset)
            header = fh.read(16)
            box_size, box_type = struct.unpack(">I4s", header[:8])
            if box_size == 1 and len(header) >= 16:
                box_size = struct.unpack(">Q", header[8:16])[0]
            elif box_size == 0:  # box runs to the end of the file
                box_size = size - offset
            if box_size < 8:
                break
            boxes.append(box_type)
            if offset + box_size > size:
                if not boxes or boxes[0] != b"ftyp":
                    return None
                name = box_type.decode("latin-1")
                return (
                    f"its '{name}' box needs {offset + box_size - size} more bytes than the file has "
                    "(it was not completely written or copied)"
                )
            offset += box_size
    if boxes and boxes[0] == b"ftyp" and b"moov" not in boxes:
        return "the mp4 index ('moov' box) is missing (the recording or copy did not finish)"
    return None


def mp4_track_timescale(time_base: Fraction) -> int:
    """The timescale FFmpeg's mp4 muxer gives a video track of this time base (what it uses with no option)."""
    timescale = time_base.denominator
    while timescale < _MIN_TRACK_TIMESCALE:
        timescale *= 2
    return timescale


def exact_timing_options(time_base: Fraction) -> dict[str, str]:
    """mp4 muxer options that keep a video track's timestamps exact when it does not start at zero.

    A segment that starts at 10.0333 s gets an edit list whose offset is written in the *movie* timescale
    (1000 by default): reading it back would move every timestamp by up to half a millisecond. Giving the
    movie the track's own timescale keeps the offset exact, so a segment's frames come back with their
    source timestamps.
    """
    timescale = str(mp4_track_timescale(time_base))
    return {"movie_timescale": timescale, "video_track_timescale": timescale}


def open_output(path: Path, options: dict[str, str] | None = None, fmt: str | None = None) -> OutputContainer:
    """Open an mp4 (or mov/mkv by suffix, or the muxer ``fmt`` names) for writing."""
    fmt = fmt or {".mov": "mov", ".mkv": "matroska"}.get(path.suffix.lower(), "mp4")
    try:
        return av.open(str(path), "w", format=fmt, container_options=options or {})
    except OSError as exc:
        raise MediaError(f"cannot write {path}: {exc.strerror or exc}") from exc


def exact_seconds(seconds: float) -> Fraction:
    """A float of seconds as the decimal the user wrote: 0.1 is exactly 1/10, not 0.1000000000000000055."""
    return Fraction(repr(float(seconds)))


def seconds_to_ticks(seconds: float, time_base: Fraction) -> int:
    """The first timestamp (in ``time_base`` units) at or after ``seconds``, free of float rounding error
    (0.1 s at 1/15360 is tick 1536, not 1537)."""
    return math.ceil(exact_seconds(seconds) / time_base)


def frame_ticks(fps: Fraction | float | None, time_base: Fraction) -> int:
    """One frame's length at the nominal rate, in ``time_base`` ticks (1 where the rate is unknown)."""
    return max(1, round(1 / (Fraction(fps) * time_base))) if fps else 1


class EncodingWriter:
    """The part every encoding writer shares: packets go to ``_container``, each with a duration, and closing
    flushes ``_stream``'s encoder. The last frame's duration is implied by no next timestamp, so a packet the
    encoder leaves without one gets the nominal ``_frame_ticks``. A writer whose packets need more (the
    frame-packing SEI) changes them in ``_prepared``."""

    _container: OutputContainer | None = None
    _stream: VideoStream | None = None
    _frame_ticks: int = 1

    def _prepared(self, packet: av.Packet) -> av.Packet:
        return packet

    def _mux(self, packets: list[av.Packet]) -> None:
        for index, packet in enumerate(packets):
            packets[index] = packet = self._prepared(packet)
            if not packet.duration:
                packet.duration = self._frame_ticks
        self._container.mux(packets)

    def close(self) -> None:
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
