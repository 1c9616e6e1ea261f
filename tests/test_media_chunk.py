"""chunk_video(): stream copy at keyframes, every frame exactly once, source timestamps kept."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from stereo_spot.media.chunk import chunk_video
from stereo_spot.media.errors import MediaError
from stereo_spot.media.frames import frame_count
from stereo_spot.media.probe import probe
from tests.media_fixtures import (
    decoded_video,
    make_audio_only,
    make_clip,
    make_empty,
    make_text,
    make_truncated,
    video_packets,
)


def _decoded_seconds(paths: list[Path]) -> list[Fraction]:
    """Presentation times of every decoded frame of every file, exactly (pts x time_base)."""
    times: list[Fraction] = []
    for path in paths:
        pts, time_base = decoded_video(path)
        times.extend(p * time_base for p in pts)
    return times


def _assert_every_frame_once(source: Path, segments: list[Path]) -> None:
    source_times = _decoded_seconds([source])
    segment_times = _decoded_seconds(segments)
    assert not [t for t, n in Counter(segment_times).items() if n > 1], "a frame is in two segments"
    assert sorted(segment_times) == sorted(source_times)
    for segment in segments:  # each segment decodes on its own: every packet gives a frame
        assert len(decoded_video(segment)[0]) == frame_count(segment)


def test_every_frame_exactly_once_with_b_frames(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=30, gop=15, bframes=2)
    packets = video_packets(source)
    assert any(pts != dts for pts, dts, _, _ in packets), "the fixture should have B-frames"
    segments = chunk_video(source, tmp_path / "segments", 1.0)
    assert [p.name for p in segments] == ["00000.mp4", "00001.mp4", "00002.mp4"]
    _assert_every_frame_once(source, segments)


def test_stream_copy_keeps_packets_and_timestamps(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=10)
    segments = chunk_video(source, tmp_path / "segments", 0.5)
    copied = [packet for segment in segments for packet in video_packets(segment)]
    assert copied == video_packets(source)  # same bytes, same pts/dts, same keyframe flags, same order
    assert {probe(s).video.time_base for s in segments} == {probe(source).video.time_base}
    for segment in segments:
        assert probe(segment).audio == []  # video only: concat takes the audio from the source


def test_segments_start_at_the_first_keyframe_after_each_boundary(tmp_path: Path) -> None:
    fps, gop, segment_seconds = 30, 12, 1.0  # keyframes every 0.4 s: boundaries 1 s, 2 s fall inside GOPs
    source = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=fps, gop=gop, audio=False)
    keyframes = [Fraction(pts, fps) for pts in range(0, 90, gop)]
    segments = chunk_video(source, tmp_path / "segments", segment_seconds)
    starts = [min(_decoded_seconds([s])) for s in segments]
    expected = [Fraction(0)] + [min(k for k in keyframes if k >= b) for b in (1, 2)]
    assert starts == expected  # 0, 1.2, 2.4
    for segment in segments:
        first_pts, _, first_is_key, _ = video_packets(segment)[0]
        assert first_is_key
    lengths = [b - a for a, b in zip(starts, starts[1:] + [Fraction(3)], strict=True)]
    assert all(abs(length - segment_seconds) <= Fraction(gop, fps) for length in lengths)


def test_exact_boundaries_give_exact_lengths(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=15, audio=False)
    segments = chunk_video(source, tmp_path / "segments", 0.5)
    assert [frame_count(s) for s in segments] == [15, 15, 15, 15]


def test_gop_longer_than_segment(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=30, audio=False)
    segments = chunk_video(source, tmp_path / "segments", 0.25)
    assert [frame_count(s) for s in segments] == [30, 30]
    _assert_every_frame_once(source, segments)


def test_variable_frame_rate_keeps_exact_times(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "vfr.mp4", seconds=2.0, fps=30, gop=8, vfr=True)
    segments = chunk_video(source, tmp_path / "segments", 0.5)
    assert len(segments) > 1
    _assert_every_frame_once(source, segments)


def test_non_mp4_source_with_another_time_base(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mkv", seconds=2.0, fps=30, gop=15)  # Matroska: 1/1000
    segments = chunk_video(source, tmp_path / "segments", 1.0)
    assert len(segments) == 2
    _assert_every_frame_once(source, segments)


def test_one_frame_video(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "one.mp4", seconds=1 / 30, audio=False)
    segments = chunk_video(source, tmp_path / "segments", 10.0)
    assert len(segments) == 1 and frame_count(segments[0]) == 1
    _assert_every_frame_once(source, segments)


def test_rotation_and_ten_bit_survive(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "phone.mp4", seconds=1.0, rotation=90, pix_fmt="yuv420p10le")
    segments = chunk_video(source, tmp_path / "segments", 0.5)
    for segment in segments:
        video = probe(segment).video
        assert video.rotation == 90 and video.pix_fmt == "yuv420p10le"
    _assert_every_frame_once(source, segments)


def test_window_keeps_the_keyframe_before_start_to_the_keyframe_after_end(tmp_path: Path) -> None:
    fps, gop = 30, 15  # keyframes every 0.5 s
    source = make_clip(tmp_path / "clip.mp4", seconds=3.0, fps=fps, gop=gop)
    segments = chunk_video(source, tmp_path / "segments", 1.0, start=1.2, duration=0.9)
    times = sorted(_decoded_seconds(segments))
    assert times[0] == Fraction(1)  # the keyframe at or before 1.2 s
    assert times[-1] == Fraction(74, 30)  # up to the keyframe at 2.5 s, the first one at or after 2.1 s
    assert times == [Fraction(i, fps) for i in range(30, 75)]
    window = [t for t in times if Fraction(12, 10) <= t < Fraction(21, 10)]
    assert len(window) == 27  # every frame of the window is there


def test_window_starting_on_a_keyframe_and_open_ended(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=15, audio=False)
    segments = chunk_video(source, tmp_path / "segments", 10.0, start=1.0)
    assert sorted(_decoded_seconds(segments)) == [Fraction(i, 30) for i in range(30, 60)]
    head = chunk_video(source, tmp_path / "head", 10.0, duration=0.5)
    assert sorted(_decoded_seconds(head)) == [Fraction(i, 30) for i in range(0, 15)]


def test_window_in_the_last_gop(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=15, audio=False)
    segments = chunk_video(source, tmp_path / "segments", 1.0, start=1.9)
    assert sorted(_decoded_seconds(segments)) == [Fraction(i, 30) for i in range(45, 60)]


def test_start_past_the_end(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=1.0, audio=False)
    with pytest.raises(MediaError, match=r"^clip\.mp4: the start time 5 s is past the end of the video"):
        chunk_video(source, tmp_path / "segments", 1.0, start=5.0)


def test_truncated_mp4_keeps_the_readable_frames(tmp_path: Path) -> None:
    source = make_truncated(tmp_path / "clip.mp4", keep=0.6, moov_at_end=False, seconds=2.0, gop=15)
    segments = chunk_video(source, tmp_path / "segments", 0.5)
    readable = frame_count(source)
    assert 0 < readable < 60
    assert sum(frame_count(s) for s in segments) == readable
    times = sorted(_decoded_seconds(segments))
    assert times[: len(times) // 2] == [Fraction(i, 30) for i in range(len(times) // 2)]  # the start is intact


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: make_empty(p / "input.mp4"), r"^input\.mp4 is empty \(0 bytes\)$"),
        (lambda p: make_text(p / "notes.mp4"), r"^notes\.mp4 is not a video file FFmpeg can read$"),
        (lambda p: make_audio_only(p / "song.m4a"), r"^song\.m4a has no video stream$"),
        (lambda p: make_truncated(p / "clip.mp4", moov_at_end=True), r"^clip\.mp4 is truncated: "),
    ],
)
def test_bad_input(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        chunk_video(make(tmp_path), tmp_path / "segments", 1.0)


def test_bad_arguments(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", audio=False)
    with pytest.raises(ValueError, match="segment_seconds"):
        chunk_video(source, tmp_path / "segments", 0)
    with pytest.raises(ValueError, match="duration"):
        chunk_video(source, tmp_path / "segments", 1.0, duration=0)
