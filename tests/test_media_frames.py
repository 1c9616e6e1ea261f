"""read_frames() / VideoWriter: RGB in and out, rotation, windows, exact timestamps, odd sizes, 10-bit."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from stereo_spot.media.encode import EncodeSettings, settings_for
from stereo_spot.media.errors import MediaError
from stereo_spot.media.frames import VideoWriter, frame_count, read_frame_batches, read_frames
from stereo_spot.media.probe import probe
from stereo_spot.models import OutputFormat
from tests.media_fixtures import decoded_video, make_audio_only, make_clip, synthetic_frame

# Mean absolute error allowed after lossy H.264 (crf 18 / the fixtures' defaults) on the smooth test pattern.
_LOSSY_MAE = 6.0


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv420p10le", "yuv444p"])
def test_read_frames_gives_rgb_close_to_the_source(tmp_path: Path, pix_fmt: str) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=0.5, fps=30, pix_fmt=pix_fmt)
    frames = list(read_frames(source))
    pts, time_base = decoded_video(source)
    assert [f.pts for f in frames] == pts
    assert all(f.time_base == time_base for f in frames)
    for index, frame in enumerate(frames):
        assert frame.rgb.shape == (96, 160, 3) and frame.rgb.dtype == np.uint8
        assert _mae(frame.rgb, synthetic_frame(index, 160, 96)) < _LOSSY_MAE
    assert frames[3].seconds == pytest.approx(3 / 30)


@pytest.mark.parametrize(
    ("rotation", "corner"),
    [(0, (slice(0, 8), slice(0, 8))), (90, (slice(0, 8), slice(-8, None))), (180, (slice(-8, None), slice(-8, None))),
     (270, (slice(-8, None), slice(0, 8)))],
)
def test_rotation_turns_the_picture_clockwise(tmp_path: Path, rotation: int, corner) -> None:
    source = make_clip(tmp_path / "phone.mp4", seconds=0.1, size=(160, 96), rotation=rotation)
    info = probe(source).video
    frame = next(read_frames(source, rotation=info.rotation))
    assert frame.rgb.shape[:2] == (info.display_size[1], info.display_size[0])
    assert frame.rgb.flags["C_CONTIGUOUS"]
    red = frame.rgb[corner].reshape(-1, 3).mean(axis=0)  # the red top-left marker, after turning
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_bad_rotation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotation"):
        next(read_frames(make_clip(tmp_path / "clip.mp4", seconds=0.1), rotation=45))


def test_window_keeps_start_and_drops_end(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=2.0, fps=30, gop=15)
    frames = list(read_frames(source, window=(0.7, 1.3)))  # 0.7 s is frame 21 exactly; 1.3 s frame 39
    seconds = [f.pts * f.time_base for f in frames]
    assert seconds == [Fraction(i, 30) for i in range(21, 39)]
    assert _mae(frames[0].rgb, synthetic_frame(21, 160, 96)) < _LOSSY_MAE  # decoded from the keyframe at 0.5
    assert len(list(read_frames(source, window=(None, 0.1)))) == 3
    assert len(list(read_frames(source, window=(1.9, None)))) == 3


def test_batches(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", seconds=1.0, fps=30, audio=False)
    batches = list(read_frame_batches(source, 8, window=(0.0, 0.5)))
    assert [len(b) for b in batches] == [8, 7]
    with pytest.raises(ValueError):
        next(read_frame_batches(source, 0))


def test_frame_count(tmp_path: Path) -> None:
    assert frame_count(make_clip(tmp_path / "a.mp4", seconds=1.0, fps=30)) == 30
    assert frame_count(make_clip(tmp_path / "b.mp4", seconds=2.0, fps=30, vfr=True)) == 35
    with pytest.raises(MediaError, match="has no video stream"):
        frame_count(make_audio_only(tmp_path / "song.m4a"))


def test_writer_keeps_variable_timestamps_and_time_base(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "vfr.mp4", seconds=1.0, fps=30, vfr=True)
    info = probe(source).video
    frames = list(read_frames(source))
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 160, 96, info.time_base, info.fps, EncodeSettings(preset="ultrafast")) as writer:
        for frame in frames:
            writer.write(frame.rgb, frame.pts)
    assert writer.frames_written == len(frames)
    pts, time_base = decoded_video(out)
    assert time_base == info.time_base
    assert pts == [f.pts for f in frames]
    again = list(read_frames(out))
    assert all(_mae(a.rgb, b.rgb) < _LOSSY_MAE for a, b in zip(frames, again, strict=True))


def test_writer_keeps_timestamps_that_do_not_start_at_zero(tmp_path: Path) -> None:
    time_base = Fraction(1, 15360)
    pts = [15360 + 512 * i + 5 for i in range(6)]  # 1.0003 s: not on a millisecond
    out = tmp_path / "late.mp4"
    with VideoWriter(out, 64, 48, time_base, Fraction(30), EncodeSettings(preset="ultrafast")) as writer:
        for i, p in enumerate(pts):
            writer.write(synthetic_frame(i, 64, 48), p)
    assert decoded_video(out) == (pts, time_base)


def test_writer_pads_odd_sizes_by_one_pixel(tmp_path: Path) -> None:
    rgb = synthetic_frame(0, 161, 97)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 161, 97, Fraction(1, 30), Fraction(30), EncodeSettings(preset="ultrafast")) as writer:
        writer.write(rgb, 0)
    video = probe(out).video
    assert (video.width, video.height) == (162, 98)
    decoded = next(read_frames(out)).rgb
    assert _mae(decoded[:97, :161], rgb) < _LOSSY_MAE
    assert _mae(decoded[:97, 161], rgb[:, 160]) < _LOSSY_MAE  # the extra column repeats the last one
    assert _mae(decoded[97, :161], rgb[96]) < _LOSSY_MAE


def test_anaglyph_keeps_full_chroma(tmp_path: Path) -> None:
    settings = settings_for(OutputFormat.ANAGLYPH, threads=1)
    assert settings.pix_fmt == "yuv444p" and settings.threads == 1
    assert all(settings_for(f).pix_fmt == "yuv420p" for f in OutputFormat if f is not OutputFormat.ANAGLYPH)
    # one-pixel red/cyan stripes: 4:2:0 would blur them into grey, 4:4:4 keeps them
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, 0::2] = (255, 0, 0)
    rgb[:, 1::2] = (0, 255, 255)
    out = tmp_path / "anaglyph.mp4"
    with VideoWriter(out, 64, 48, Fraction(1, 30), Fraction(30), settings) as writer:
        writer.write(rgb, 0)
    assert probe(out).video.pix_fmt == "yuv444p"
    assert _mae(next(read_frames(out)).rgb, rgb) < 12


def test_writer_rejects_bad_frames(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "x.mp4", 64, 48, Fraction(1, 30), Fraction(30), EncodeSettings()) as writer:
        with pytest.raises(ValueError, match="expected a"):
            writer.write(np.zeros((48, 63, 3), np.uint8), 0)
        with pytest.raises(ValueError, match="expected a"):
            writer.write(np.zeros((48, 64, 3), np.float32), 0)
        writer.write(np.zeros((48, 64, 3), np.uint8), 5)
        with pytest.raises(ValueError, match="pts must increase"):
            writer.write(np.zeros((48, 64, 3), np.uint8), 5)
