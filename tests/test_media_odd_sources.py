"""Sources whose players cope with what a naive reader does not: frames labelled with decode times (B-frames in
an mp4 without composition offsets), and AVIs in codecs mp4 cannot carry. Both convert, with their timing."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.media.chunk import chunk_video, segment_copies
from stereo_spot.media.frames import read_frames
from tests.media_fixtures import make_avi, make_clip, make_decode_time_labelled_clip


def _square_left(rgb: np.ndarray) -> int:
    """Left edge of the synthetic frame's moving white square (2 px a frame) on the middle row."""
    row = rgb[rgb.shape[0] // 2]
    return int(np.argmax((row > 200).all(axis=1)))


def _facts(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        times = [float(frame.pts * video.time_base) for frame in container.decode(video)]
        return {"times": times, "codec": video.codec_context.name, "audio": len(container.streams.audio),
                "duration": float(video.duration * video.time_base)}


def test_frames_labelled_with_decode_times_come_out_at_their_display_times(tmp_path):
    clip = make_decode_time_labelled_clip(tmp_path / "phone.mp4", seconds=1.0, fps=30)
    frames = list(read_frames(clip))
    assert len(frames) == 30
    assert [f.pts for f in frames] == [3000 * k for k in range(30)]  # k/30 s, in the 1/90000 time base
    positions = [_square_left(f.rgb) for f in frames]
    assert positions == sorted(positions) and positions[-1] > positions[0]  # and in display order


def test_segment_copies_asks_the_mp4_muxer(tmp_path):
    mp4 = make_clip(tmp_path / "a.mp4", audio=False)
    avi = make_avi(tmp_path / "a.avi")
    with av.open(str(mp4)) as a, av.open(str(avi)) as b:
        assert segment_copies(a.streams.video[0])
        assert not segment_copies(b.streams.video[0])


def test_an_avi_in_a_codec_mp4_cannot_carry_is_chunked_losslessly(tmp_path):
    avi = make_avi(tmp_path / "old.avi", seconds=2.0, fps=10, gop=5)
    segments = chunk_video(avi, tmp_path / "segments", segment_seconds=0.5)
    assert len(segments) == 4  # any frame may start a re-encoded segment: exact boundaries
    source = list(read_frames(avi))
    pieces = [frame for path in segments for frame in read_frames(path)]
    assert [f.seconds for f in pieces] == [f.seconds for f in source] == [k / 10 for k in range(20)]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(source, pieces, strict=True))  # lossless
    assert {_facts(path)["codec"] for path in segments} == {"h264"}


def test_a_window_of_a_re_encoded_source(tmp_path):
    avi = make_avi(tmp_path / "old.avi", seconds=2.0, fps=10, gop=5)
    segments = chunk_video(avi, tmp_path / "segments", segment_seconds=10, start=0.3, duration=1.0)
    assert [f.seconds for path in segments for f in read_frames(path)] == [k / 10 for k in range(3, 13)]


def _convert(source: Path, out: Path, *args: str):
    return CliRunner().invoke(app, ["convert", str(source), "-o", str(out), "--segment-seconds", "0.5", *args])


@pytest.mark.parametrize("make,fps", [
    (lambda d: make_decode_time_labelled_clip(d / "phone.mp4", seconds=1.5, fps=30), 30),
    (lambda d: make_avi(d / "old.avi", seconds=1.5, fps=10), 10),
], ids=["decode-time-labels", "msmpeg4-avi"])
def test_converts_end_to_end_with_its_timing(home, tmp_path, make, fps):
    source = make(tmp_path)
    out = tmp_path / "out-3d.mp4"
    result = _convert(source, out)
    assert result.exit_code == 0, result.output
    facts = _facts(out)
    frames = round(1.5 * fps)
    assert facts["times"] == pytest.approx([k / fps for k in range(frames)], abs=1e-6)
    assert facts["duration"] == pytest.approx(1.5, abs=1e-6)
    assert facts["audio"] == 1


def test_an_unknown_codec_is_a_user_error(home, tmp_path):
    mjpeg = tmp_path / "mj.avi"
    with av.open(str(mjpeg), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * index, np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    unknown = tmp_path / "odd.avi"
    unknown.write_bytes(mjpeg.read_bytes().replace(b"MJPG", b"QQQQ"))  # a FourCC no decoder claims
    result = _convert(unknown, tmp_path / "odd-3d.mp4")
    assert result.exit_code != 0
    assert "cannot be decoded: its video codec is not one FFmpeg knows" in result.output
    assert "internal error" not in result.output
    assert unknown.exists()


def test_a_file_with_no_frame_timing_is_a_user_error(home, tmp_path):
    untimed = tmp_path / "untimed.mp4"
    with av.open(str(untimed), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = None, Fraction(1, 1_000_000)  # so every packet is written at 0
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    result = _convert(untimed, tmp_path / "untimed-3d.mp4")
    assert result.exit_code != 0
    assert "no frame timing: all 10 video frames carry the same timestamp" in " ".join(result.output.split())
