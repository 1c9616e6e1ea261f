"""A Matroska file whose timestamps repeat converts every decodable frame, retimed, and says how many.

What each test is there to catch: the stream copy stopping at the first repeated timestamp ("a damaged packet",
5 of 24 frames converted with exit 0), or frames with a repeated label being dropped instead of given a time of
their own (planted: ``_SegmentWriter.write`` without the timing check; ``retime_repeats`` skipping the run).
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import pytest
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.media.chunk import chunk_video
from stereo_spot.media.frames import RetimeCount, retime_repeats
from tests.media_fixtures import synthetic_frame

FPS = 12
FRAMES = 24


def _mkv_with_labels(path: Path, labels: dict[int, int], bframes: int = 0) -> Path:
    """A Matroska clip of ``FRAMES`` frames at ``FPS`` where frame i is labelled frame ``labels[i]``'s time."""
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=FPS, options={"g": "6", "bf": str(bframes), "sc_threshold": "0"})
        video.width, video.height, video.pix_fmt = 96, 64, "yuv420p"
        video.codec_context.time_base = Fraction(1, FPS)
        packets = []
        for index in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, 96, 64), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            packets += video.encode(frame)
        packets += video.encode()
        for packet in packets:
            if packet.pts in labels:
                packet.pts = labels[packet.pts]
                if packet.dts is not None and packet.dts > packet.pts:
                    packet.dts = packet.pts  # a decode time after the presentation time is refused by the muxer
            out.mux(packet)
    return path


def _segment_frames(paths: list[Path]) -> list[float]:
    times = []
    for path in paths:
        with av.open(str(path)) as container:
            times += [float(f.pts * f.time_base) for f in container.decode(video=0)]
    return times


@pytest.mark.parametrize("labels,bframes,affected", [
    ({5: 4, 6: 4, 7: 4}, 0, 3),  # three frames claim frame 4's time
    ({10: 9, 11: 9}, 2, 2),  # with B-frames: the decode order differs from the display order
])
def test_every_frame_is_chunked_with_a_time_of_its_own(tmp_path, caplog, labels, bframes, affected):
    source = _mkv_with_labels(tmp_path / "dup.mkv", labels, bframes)
    with caplog.at_level(logging.WARNING):
        paths = chunk_video(source, tmp_path / "segments", 0.5)
    times = _segment_frames(paths)
    assert len(times) == FRAMES
    assert times == sorted(times) and len(set(times)) == FRAMES
    assert all(abs(t - i / FPS) < 0.01 for i, t in enumerate(times))  # spread back where they belonged
    assert f"dup.mkv: {affected} of {FRAMES} video frames had duplicate or out-of-order timestamps" in caplog.text


def test_the_command_converts_every_frame_and_exits_0(home, tmp_path):
    source = _mkv_with_labels(tmp_path / "dup.mkv", {5: 4, 6: 4, 7: 4})
    output = tmp_path / "dup-3d.mp4"
    result = CliRunner().invoke(app, ["convert", str(source), "-o", str(output), "--segment-seconds", "0.5",
                                      "--workers", "1"], env={"COLUMNS": "500"})
    assert result.exit_code == 0, result.output
    with av.open(str(output)) as container:
        times = [f.pts for f in container.decode(video=0)]
    assert len(times) == FRAMES and times == sorted(set(times))


def test_a_run_of_repeated_or_backward_labels_is_spread_between_its_neighbours():
    count = RetimeCount()
    pairs = [(i, pts) for i, pts in enumerate([0, 10, 20, 20, 5, 20, 60, 70, 70])]
    out = list(retime_repeats(pairs, 10, count))
    assert [frame for frame, _ in out] == list(range(9))  # every frame, in order
    assert [pts for _, pts in out] == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    assert (count.frames, count.total) == (4, 9)
