"""probe(): what a file holds, and a one-line MediaError for files that cannot be used."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stereo_spot.media.errors import MediaError
from stereo_spot.media.probe import is_image, probe, require_video
from tests.media_fixtures import (
    make_audio_only,
    make_clip,
    make_empty,
    make_text,
    make_truncated,
)


def test_probe_reads_video_and_audio(tmp_path: Path) -> None:
    info = probe(make_clip(tmp_path / "clip.mp4", seconds=1.0, fps=30, size=(160, 96), audio_streams=2))
    video = require_video(info)
    assert (video.width, video.height) == (160, 96)
    assert video.fps == Fraction(30)
    assert video.frame_count == 30
    assert video.codec == "h264"
    assert video.pix_fmt == "yuv420p"
    assert video.bit_depth == 8
    assert video.rotation == 0
    assert video.display_size == (160, 96)
    assert video.time_base.numerator == 1
    assert info.duration_seconds == pytest.approx(1.0, abs=1 / 30)
    assert info.size_bytes == (tmp_path / "clip.mp4").stat().st_size
    assert "mp4" in info.format_name
    assert info.has_audio
    assert [(a.codec, a.sample_rate, a.channels) for a in info.audio] == [("aac", 48_000, 2)] * 2
    assert len({a.index for a in info.audio}) == 2


def test_video_without_audio(tmp_path: Path) -> None:
    info = probe(make_clip(tmp_path / "silent.mp4", audio=False))
    assert info.video is not None
    assert not info.has_audio and info.audio == []


def test_audio_only_has_no_video(tmp_path: Path) -> None:
    info = probe(make_audio_only(tmp_path / "song.m4a"))
    assert info.video is None
    assert info.has_audio
    with pytest.raises(MediaError, match=r"^song\.m4a has no video stream$"):
        require_video(info)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_from_display_matrix(tmp_path: Path, rotation: int) -> None:
    video = require_video(probe(make_clip(tmp_path / "phone.mp4", size=(160, 96), rotation=rotation)))
    assert video.rotation == rotation
    assert (video.width, video.height) == (160, 96)  # coded size is unchanged
    assert video.display_size == ((96, 160) if rotation in (90, 270) else (160, 96))


def test_ten_bit(tmp_path: Path) -> None:
    video = require_video(probe(make_clip(tmp_path / "hdr.mp4", pix_fmt="yuv420p10le")))
    assert video.pix_fmt == "yuv420p10le"
    assert video.bit_depth == 10


def test_odd_size_and_one_frame(tmp_path: Path) -> None:
    odd = require_video(probe(make_clip(tmp_path / "odd.mp4", size=(161, 97), pix_fmt="yuv444p")))
    assert (odd.width, odd.height) == (161, 97)
    single = require_video(probe(make_clip(tmp_path / "one.mp4", seconds=1 / 30, audio=False)))
    assert single.frame_count == 1


def test_variable_frame_rate(tmp_path: Path) -> None:
    video = require_video(probe(make_clip(tmp_path / "vfr.mp4", seconds=2.0, fps=30, vfr=True)))
    # durations cycle 1, 2, 1, 3 periods: 4 frames every 7/30 s
    assert float(video.fps) == pytest.approx(30 * 4 / 7, rel=0.05)
    assert video.time_base == Fraction(1, 90_000)


def test_zero_byte_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^input\.mp4 is empty \(0 bytes\)$"):
        probe(make_empty(tmp_path / "input.mp4"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^gone\.mp4 does not exist"):
        probe(tmp_path / "gone.mp4")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="is not a file"):
        probe(tmp_path)


def test_text_file_named_mp4(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^notes\.mp4 is not a video file FFmpeg can read$"):
        probe(make_text(tmp_path / "notes.mp4"))


def test_truncated_without_index(tmp_path: Path) -> None:
    path = make_truncated(tmp_path / "clip.mp4", keep=0.6, moov_at_end=True)
    with pytest.raises(MediaError, match=r"^clip\.mp4 is truncated: ") as caught:
        probe(path)
    assert "\n" not in str(caught.value)


def test_truncated_with_index_up_front_still_probes(tmp_path: Path) -> None:
    info = probe(make_truncated(tmp_path / "clip.mp4", keep=0.6, moov_at_end=False))
    assert info.video is not None and info.video.frame_count == 60  # the index still lists every frame


def test_is_image(tmp_path: Path) -> None:
    picture = np.zeros((16, 24, 3), np.uint8)
    for suffix, codec in ((".png", "png"), (".jpg", "mjpeg"), (".bmp", "bmp"), (".tif", "tiff")):
        path = tmp_path / f"still{suffix}"
        _write_image(path, picture, codec)
        assert is_image(path), suffix
    renamed = tmp_path / "picture.dat"
    renamed.write_bytes((tmp_path / "still.png").read_bytes())
    assert is_image(renamed)  # content wins over the name
    assert not is_image(make_clip(tmp_path / "clip.mp4", audio=False))
    assert not is_image(make_text(tmp_path / "notes.png"))
    assert is_image(tmp_path / "not-yet-written.webp")  # by name when there is nothing to read


def _write_image(path: Path, rgb: np.ndarray, codec: str) -> None:
    pix_fmt = {"mjpeg": "yuvj444p", "png": "rgb24", "bmp": "bgr24", "tiff": "rgb24"}[codec]
    with av.open(str(path), "w", format="image2") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], pix_fmt
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_the_size_of_a_stream_in_an_unknown_codec_is_unknown_not_a_crash(tmp_path):
    """A FourCC no decoder claims leaves the stream without codec parameters: the frame-size guard passes such
    a file on to the conversion (which names the codec problem) instead of failing on it."""
    import av
    import numpy as np

    from stereo_spot.media.errors import MediaError
    from stereo_spot.media.probe import frame_size

    mjpeg = tmp_path / "mj.avi"
    with av.open(str(mjpeg), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    assert frame_size(mjpeg) == (64, 48)
    unknown = tmp_path / "odd.avi"
    unknown.write_bytes(mjpeg.read_bytes().replace(b"MJPG", b"QQQQ"))
    assert frame_size(unknown, required=False) is None
    with pytest.raises(MediaError, match="not one FFmpeg knows"):
        frame_size(unknown)
