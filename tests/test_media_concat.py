"""concat_segments(): chunk -> (convert) -> concat gives back every frame, the source timing and all audio."""

from __future__ import annotations

import struct
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import pytest

from stereo_spot.media.chunk import chunk_video
from stereo_spot.media.concat import concat_segments
from stereo_spot.media.encode import EncodeSettings
from stereo_spot.media.errors import MediaError
from stereo_spot.media.frames import VideoWriter, read_frames
from stereo_spot.media.probe import probe
from tests.media_fixtures import audio_packet_times, decoded_video, make_clip, synthetic_frame

_FAST = EncodeSettings(preset="ultrafast")


def _video_times(path: Path) -> list[Fraction]:
    pts, time_base = decoded_video(path)
    return sorted(p * time_base for p in pts)


def _video_duration(path: Path) -> float:
    """The video stream's duration as the container reports it (what a player shows)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


def _convert(segments: list[Path], out_dir: Path, window=(None, None)) -> list[Path]:
    """A stand-in for the stereo step that really re-encodes: decode, invert colours, encode with source pts."""
    out_dir.mkdir()
    converted = []
    for segment in segments:
        video = probe(segment).video
        out = out_dir / segment.name
        with VideoWriter(out, video.width, video.height, video.time_base, video.fps, _FAST) as writer:
            for frame in read_frames(segment, window=window):
                writer.write(255 - frame.rgb, frame.pts)
        if writer.frames_written:
            converted.append(out)
        else:
            out.unlink()
    return converted


def _assert_monotonic(path: Path) -> None:
    with av.open(str(path)) as container:
        last: dict[int, int] = {}
        for packet in container.demux():
            if not packet.size:
                continue
            index = packet.stream.index
            assert packet.dts > last.get(index, -(2**62)), "decode timestamps must increase"
            assert packet.pts >= packet.dts
            last[index] = packet.dts


@pytest.mark.parametrize("audio_streams", [1, 2])
def test_round_trip_by_stream_copy(tmp_path: Path, audio_streams: int) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=30, gop=15, audio_streams=audio_streams)
    segments = chunk_video(source, tmp_path / "segments", 1.0)
    out = tmp_path / "final.mp4"
    result = concat_segments(segments, source, out)
    assert result.frames == 90 and result.audio_streams == audio_streams
    assert result.duration_seconds == pytest.approx(3.0, abs=1 / 30)
    assert _video_times(out) == _video_times(source)  # every frame, same times, starting at 0
    assert _video_duration(out) == pytest.approx(_video_duration(source), abs=1 / 30)
    info = probe(out)
    assert [a.codec for a in info.audio] == ["aac"] * audio_streams
    for n in range(audio_streams):
        assert audio_packet_times(out, n) == audio_packet_times(source, n)  # copied, same timing
    _assert_monotonic(out)


def test_round_trip_through_a_real_re_encode_with_variable_frame_rate(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "vfr.mp4", seconds=2.0, fps=30, gop=8, vfr=True)
    segments = chunk_video(source, tmp_path / "segments", 0.5)
    converted = _convert(segments, tmp_path / "converted")
    out = tmp_path / "final.mp4"
    result = concat_segments(converted, source, out)
    assert result.frames == 35
    assert _video_times(out) == _video_times(source)  # exact VFR timing through decode/encode/join
    # the last frame's own length is not stored in the source: it ends within the longest frame (3/30 s)
    assert _video_duration(out) == pytest.approx(_video_duration(source), abs=3 / 30)
    assert probe(out).has_audio
    _assert_monotonic(out)
    frames = list(read_frames(out))
    assert abs(int(frames[5].rgb.mean()) - int(255 - synthetic_frame(5, 160, 96).mean())) < 4  # converted


def test_output_is_continuous_from_zero(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=10, audio=False)
    converted = _convert(chunk_video(source, tmp_path / "segments", 0.5), tmp_path / "converted")
    out = tmp_path / "final.mp4"
    result = concat_segments(converted, source, out)
    times = _video_times(out)
    assert times[0] == 0
    assert {b - a for a, b in pairwise(times)} == {Fraction(1, 30)}  # no gap, no overlap at joints
    assert result.audio_streams == 0 and not probe(out).has_audio


def test_segments_rebased_to_zero_are_placed_one_after_another(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=1.0, fps=30, audio=False)
    parts = []
    for n in range(3):
        part = tmp_path / f"{n:05d}.mp4"
        with VideoWriter(part, 160, 96, Fraction(1, 15360), Fraction(30), _FAST) as writer:
            for i in range(10):
                writer.write(synthetic_frame(10 * n + i, 160, 96), 512 * i)  # every part starts at 0
        parts.append(part)
    out = tmp_path / "final.mp4"
    concat_segments(parts, source, out)
    assert _video_times(out) == [Fraction(i, 30) for i in range(30)]


def test_interleaved_and_index_first(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=30, gop=15, audio_streams=2)
    out = tmp_path / "final.mp4"
    concat_segments(chunk_video(source, tmp_path / "segments", 1.0), source, out)
    with av.open(str(out)) as container:
        latest, kinds = float("-inf"), set()
        for packet in container.demux():
            if packet.size:
                time = float(packet.dts * packet.time_base)
                assert time > latest - 0.5, "file order must follow time (video and audio interleaved)"
                latest = max(latest, time)
                kinds.add(packet.stream.type)
        assert kinds == {"video", "audio"}
    boxes = _top_level_boxes(out)
    assert boxes.index(b"moov") < boxes.index(b"mdat")  # +faststart


def _top_level_boxes(path: Path) -> list[bytes]:
    data, boxes, offset = path.read_bytes(), [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append(kind)
        offset += size if size else len(data)
    return boxes


def test_window_trims_audio_to_the_video(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=30, gop=15)
    start, duration = 1.2, 0.9
    segments = chunk_video(source, tmp_path / "segments", 0.5, start=start, duration=duration)
    converted = _convert(segments, tmp_path / "converted", window=(start, start + duration))
    out = tmp_path / "final.mp4"
    result = concat_segments(converted, source, out, start=start, duration=duration)
    assert result.frames == 27  # frames 36..62 (1.2 s <= t < 2.1 s)
    assert _video_times(out) == [Fraction(i, 30) for i in range(27)]
    assert result.duration_seconds == pytest.approx(duration, abs=1 / 30)
    audio = audio_packet_times(out)
    aac_packet = 1024 / 48_000
    assert audio[0][0] <= 0 < audio[0][1]  # starts with the video
    assert audio[-1][1] == pytest.approx(duration, abs=aac_packet)  # and ends with it
    _assert_monotonic(out)


def test_audio_mp4_cannot_carry_is_re_encoded_to_aac(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mkv", seconds=2.0, fps=30, gop=15, audio_codec="pcm_s16le")
    out = tmp_path / "final.mp4"
    result = concat_segments(chunk_video(source, tmp_path / "segments", 1.0), source, out)
    assert result.audio_streams == 1
    info = probe(out)
    assert [(a.codec, a.sample_rate, a.channels) for a in info.audio] == [("aac", 48_000, 2)]
    audio = audio_packet_times(out)
    assert audio[-1][1] - max(0.0, audio[0][0]) == pytest.approx(2.0, abs=0.05)
    assert result.frames == 60


def test_mismatched_segments_are_refused(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=1.0, audio=False)
    a = make_clip(tmp_path / "a.mp4", seconds=0.5, size=(160, 96), audio=False)
    b = make_clip(tmp_path / "b.mp4", seconds=0.5, size=(128, 96), audio=False)
    out = tmp_path / "final.mp4"
    with pytest.raises(MediaError, match=r"^b\.mp4 was encoded differently from a\.mp4"):
        concat_segments([a, b], source, out)
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_no_segments(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no converted segments"):
        concat_segments([], make_clip(tmp_path / "clip.mp4"), tmp_path / "final.mp4")


def test_one_frame_video(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "one.mp4", seconds=1 / 30)
    out = tmp_path / "final.mp4"
    result = concat_segments(chunk_video(source, tmp_path / "segments", 5.0), source, out)
    assert result.frames == 1 and result.audio_streams == 1
    assert len(list(read_frames(out))) == 1


@pytest.mark.parametrize(
    ("name", "encoder", "codec"),
    [("clip.mp4", "libmp3lame", "mp3"), ("clip.mkv", "libopus", "opus"), ("clip.mkv", "flac", "flac"),
     ("clip.ts", "aac", "aac")],
)
def test_audio_mp4_can_carry_is_copied(tmp_path: Path, name: str, encoder: str, codec: str) -> None:
    source = make_clip(tmp_path / name, seconds=2.0, fps=30, gop=15, audio_codec=encoder)
    out = tmp_path / "final.mp4"
    result = concat_segments(chunk_video(source, tmp_path / "segments", 1.0), source, out)
    assert [a.codec for a in probe(out).audio] == [codec]
    assert result.frames == 60
    source_times = _video_times(source)  # Matroska: whole ms; MPEG-TS: starts at 1.4 s
    assert _video_times(out) == [t - source_times[0] for t in source_times]  # starts at 0
    audio = audio_packet_times(out)
    assert audio[-1][1] - max(0.0, audio[0][0]) == pytest.approx(2.0, abs=0.05)
