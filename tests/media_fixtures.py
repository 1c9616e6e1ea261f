"""Synthetic media for tests: small clips with a known keyframe interval, audio, and deliberately bad files.

Everything is generated with PyAV at test time (no binary fixtures in the repository). Keep clips tiny: the
defaults make a 1 s, 160x96, 30 fps H.264 clip with a keyframe every 15 frames, two B-frames and a 440 Hz
AAC tone.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stereo_spot.sample import write_tone

VFR_PATTERN = (1, 2, 1, 3)  # frame durations, in nominal frame periods, repeated for variable frame rate
_VFR_TIME_BASE = Fraction(1, 90_000)


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame that differs per index: a gradient, a square moving 2 px a frame, a red top-left marker.

    The marker (8x8 pure red in the top-left corner) shows which way a picture has been rotated.
    """
    x = np.linspace(0, 200, width, dtype=np.float32)
    y = np.linspace(0, 120, height, dtype=np.float32)[:, None]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x + y) * 0.5
    frame[..., 1] = (x * 0.3 + 40).astype(np.uint8)
    frame[..., 2] = (y + 60).astype(np.uint8)
    side = max(4, min(width, height) // 4)
    left = (2 * index) % max(1, width - side)
    top = height // 2 - side // 2
    frame[top : top + side, left : left + side] = (240, 240, 240)
    frame[: min(8, height), : min(8, width)] = (255, 0, 0)
    return frame


def make_clip(
    path: Path,
    seconds: float = 1.0,
    fps: int = 30,
    size: tuple[int, int] = (160, 96),
    gop: int = 15,
    audio: bool = True,
    audio_streams: int = 1,
    vfr: bool = False,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    *,
    bframes: int = 2,
    audio_codec: str = "aac",
    sample_rate: int = 48_000,
    audio_seconds: float | None = None,
    faststart: bool = False,
    codec: str = "libx264",
) -> Path:
    """Write an H.264 clip with a keyframe exactly every ``gop`` frames (no scene-cut keyframes).

    ``seconds * fps`` frames (at least one). ``vfr`` gives frames the durations of ``VFR_PATTERN``
    (nominal periods) at a 1/90000 time base until ``seconds`` is reached. ``rotation`` writes a display
    matrix asking players to turn the picture that many degrees clockwise (what probe reports back).
    Audio: ``audio_streams`` sine tones (440 Hz, 660 Hz, ...) in ``audio_codec`` lasting ``audio_seconds``
    (default: the video's duration). The container follows the suffix (.mp4, .mov, .mkv, .ts).
    """
    path = Path(path)
    width, height = size
    timestamps = _frame_timestamps(seconds, fps, vfr)
    fmt = {".mov": "mov", ".mkv": "matroska", ".ts": "mpegts"}.get(path.suffix.lower(), "mp4")
    options = {"movflags": "+faststart"} if faststart and fmt in ("mp4", "mov") else {}
    with av.open(str(path), "w", format=fmt, container_options=options) as container:
        video = container.add_stream(
            codec,
            rate=fps,
            options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes)}
            if codec == "libx264"
            else {"g": str(gop)},
        )
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        time_base = _VFR_TIME_BASE if vfr else Fraction(1, fps)
        video.codec_context.time_base = time_base
        if codec == "libx264":
            video.codec_context.options["preset"] = "veryfast"
        if rotation % 360:
            video.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        tones = []
        for k in range(audio_streams if audio else 0):
            stream = container.add_stream(audio_codec, rate=sample_rate, layout="stereo")
            tones.append((stream, 440.0 * (k + 2) / 2))
        video_end = timestamps[-1] + (timestamps[-1] - timestamps[-2] if len(timestamps) > 1 else 1)
        for index, pts in enumerate(timestamps):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, width, height), format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            container.mux(video.encode(frame))
        container.mux(video.encode())
        length = audio_seconds if audio_seconds is not None else float(video_end * time_base)
        for stream, freq in tones:
            _write_tone(container, stream, freq, length, sample_rate)
    return path


def _frame_timestamps(seconds: float, fps: int, vfr: bool) -> list[int]:
    if not vfr:
        return list(range(max(1, round(seconds * fps))))
    period = int(_VFR_TIME_BASE.denominator / fps)
    limit = seconds * _VFR_TIME_BASE.denominator
    timestamps, pts, i = [], 0, 0
    while pts < limit or not timestamps:
        timestamps.append(pts)
        pts += VFR_PATTERN[i % len(VFR_PATTERN)] * period
        i += 1
    return timestamps


def _write_tone(container, stream, freq: float, seconds: float, sample_rate: int) -> None:
    write_tone(container, stream, seconds, hz=freq, sample_rate=sample_rate)


def make_audio_only(path: Path, seconds: float = 1.0, audio_codec: str = "aac") -> Path:
    """An audio file (e.g. song.m4a) with no video stream."""
    path = Path(path)
    fmt = {".mkv": "matroska", ".mp3": "mp3"}.get(path.suffix.lower(), "mp4")
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(audio_codec, rate=48_000, layout="stereo")
        _write_tone(container, stream, 440.0, seconds, 48_000)
    return path


def make_empty(path: Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text(path: Path) -> Path:
    """A text file with a video name (notes.mp4)."""
    path = Path(path)
    path.write_text("These are meeting notes, not a video.\n" * 40)
    return path


def make_truncated(path: Path, keep: float = 0.6, moov_at_end: bool = True, **clip_kwargs) -> Path:
    """A clip cut off after ``keep`` of its bytes, as an interrupted copy or recording leaves it.

    ``moov_at_end=True`` (the usual recorder layout) loses the mp4 index; ``False`` (``+faststart``) keeps the
    index and loses the tail of the media data, so the first frames stay readable.
    """
    path = Path(path)
    full = path.with_name(path.stem + ".full" + path.suffix)
    clip_kwargs.setdefault("seconds", 2.0)
    make_clip(full, faststart=not moov_at_end, **clip_kwargs)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# --- readers for assertions ------------------------------------------------------------------------------


def video_packets(path: Path) -> list[tuple[int | None, int | None, bool, bytes]]:
    """(pts, dts, keyframe, payload) of every video packet, in file (decode) order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            (p.pts, p.dts, p.is_keyframe, bytes(p)) for p in container.demux(stream) if p.size
        ]


def decoded_video(path: Path) -> tuple[list[int], Fraction]:
    """pts of every decoded video frame (display order) and the stream's time base."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.pts for frame in container.decode(stream)], stream.time_base


def audio_packet_times(path: Path, stream_index: int = 0) -> list[tuple[float, float]]:
    """(start, end) in seconds of every packet of the n-th audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[stream_index]
        tb = stream.time_base
        return [
            (float(p.pts * tb), float((p.pts + (p.duration or 0)) * tb))
            for p in container.demux(stream)
            if p.size
        ]


def make_decode_time_labelled_clip(path: Path, seconds: float = 1.0, fps: int = 30, size: tuple[int, int] = (160, 96),
                                   gop: int = 15, tmp: Path | None = None) -> Path:
    """An H.264 mp4 with B-frames whose container labels every frame with its *decode* time (pts = dts, no
    composition offsets), as some phone and webcam muxers write: the decoder returns the frames in display
    order labelled 0, 3, 2, 4, 1, ... periods. Players show it at the steady ``fps`` (frame k at k/fps), and so
    must the conversion. A 440 Hz tone runs alongside."""
    path = Path(path)
    plain = make_clip((tmp or path.parent) / f".{path.stem}-plain.mp4", seconds=seconds, fps=fps, size=size,
                      gop=gop, audio=False, bframes=3)
    period = 3000
    time_base = Fraction(1, period * fps)
    with av.open(str(plain)) as source, av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream_from_template(source.streams.video[0], opaque=True)
        video.time_base = time_base
        audio = out.add_stream("aac", rate=48_000, layout="stereo")
        for index, packet in enumerate(p for p in source.demux(source.streams.video[0]) if p.size):
            packet.stream = video
            packet.pts = packet.dts = index * period  # decode order, labelled as if it were display order
            packet.duration, packet.time_base = period, time_base
            out.mux(packet)
        frames = index + 1
        _write_tone(out, audio, 440.0, frames / fps, 48_000)
    plain.unlink()
    return path


def make_avi(path: Path, seconds: float = 1.0, fps: int = 10, size: tuple[int, int] = (160, 96),
             codec: str = "msmpeg4v2", gop: int = 5) -> Path:
    """An AVI in an old codec with no mp4 form (MS-MPEG4 v2 by default), with 16-bit PCM audio: what cameras
    and Windows tools of the 2000s wrote."""
    path = Path(path)
    with av.open(str(path), "w", format="avi") as container:
        video = container.add_stream(codec, rate=fps, options={"g": str(gop)})
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=48_000, layout="stereo")
        count = max(1, round(seconds * fps))
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, *size), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        _write_tone(container, audio, 440.0, count / fps, 48_000)
    return path


def make_live_matroska(path: Path, seconds: int = 60, fps: int = 10, size: tuple[int, int] = (64, 48),
                       declared_seconds: float | None = None) -> Path:
    """A Matroska clip written in live mode: no duration in its header, so only its packets say how long it is.

    ``declared_seconds``: write a normal header instead and then overwrite its Duration element (EBML id 0x4489,
    an 8-byte float in milliseconds) with this many seconds: a file whose header understates what it holds."""
    import struct

    options = {"live": "1"} if declared_seconds is None else {}
    with av.open(str(path), "w", format="matroska", container_options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": str(fps * 10)})
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for index in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, *size), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    if declared_seconds is not None:
        data = bytearray(path.read_bytes())
        at = data.index(b"\x44\x89\x88")  # Duration, size 8
        data[at + 3: at + 11] = struct.pack(">d", declared_seconds * 1000)
        path.write_bytes(bytes(data))
    return path


def make_one_frame_h264(path: Path, size: tuple[int, int] = (15360, 15360)) -> Path:
    """One flat H.264 frame of ``size`` in an mp4: under 1 MB on disk for 15360×15360, hundreds of MB once
    decoded (a few seconds and about 1.4 GB to make at that size)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1, options={"preset": "ultrafast", "crf": "51",
                                                                   "tune": "zerolatency", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            memoryview(plane)[:] = bytes(plane.buffer_size)
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def make_png_header(path: Path, size: tuple[int, int]) -> Path:
    """A PNG that declares ``size`` (its signature, header and end, no picture data): a few bytes on disk that a
    reader would size its buffers from."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size[0], size[1], 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path
