"""``-v`` tells the story of a run, ``-vv`` adds the decisions, and the default level shows neither.

A real three-segment conversion runs as a user runs it (its own process, segments converted in spawned worker
processes), with JSON log lines so each line's fields can be read. What the tests catch: worker processes that
never set up logging (their segment lines vanish) or set it up at their own level instead of the command's (the
default run shows them), a segment line without its timing, and a story line moved below ``-v``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from stereo_spot.sample import write_sample

SEGMENT = re.compile(r"segment (\d) of 3: (\d+\.\d+)-(\d+\.\d+) s, 5 frames in \d+\.\d+ s \((\d+\.\d) fps\)")


@pytest.fixture
def clip(tmp_path):
    # 1.5 s at 10 fps with a keyframe every 5 frames: three 0.5 s segments
    return write_sample(tmp_path / "clip.mp4", seconds=1.5, size=(64, 48), fps=10, gop=5)


def _convert(home, tmp_path, clip, *flags: str, workers: int = 2) -> list[dict]:
    env = {**os.environ, "STEREO_SPOT_HOME": str(home), "STORAGE_ADAPTER": "local",
           "STEREO_SPOT_WORKDIR": str(tmp_path / "work"), "STEREO_SPOT_LOG_FORMAT": "json"}
    env.pop("STEREO_SPOT_LOG_LEVEL", None)
    result = subprocess.run([sys.executable, "-m", "stereo_spot", *flags, "convert", str(clip), "--segment-seconds",
                             "0.5", "--workers", str(workers), "--fresh"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def _messages(lines: list[dict], level: str | None = None) -> list[str]:
    return [line["message"] for line in lines if level is None or line["level"] == level]


@pytest.mark.slow  # worker processes start torch: 10-20 s on a busy machine
def test_v_tells_the_story_of_a_three_segment_run(home, tmp_path, clip):
    lines = _convert(home, tmp_path, clip, "-v")
    text = "\n".join(_messages(lines))
    assert re.search(r"source 64x48, 10 fps, 1\.50 s, 15 frames, h264, audio aac 48000 Hz 2 ch; split into 3 "
                     r"segment\(s\)", text), text
    assert "converting 3 segment(s) with 2 worker(s) on cpu" in text, text
    segments = {}
    for line in lines:
        found = SEGMENT.search(line["message"])
        if found:
            segments[int(found[1])] = (float(found[2]), float(found[3]), float(found[4]))
            assert line["segment"] == int(found[1])  # the log context says which segment, as in a pod's log
    assert sorted(segments) == [0, 1, 2], text
    # segments finish in any order (two workers): each is placed by its index
    assert [segments[i][0] for i in range(3)] == pytest.approx([0.0, 0.5, 1.0])
    assert [segments[i][1] for i in range(3)] == pytest.approx([0.5, 1.0, 1.5])
    assert all(fps > 0 for _start, _end, fps in segments.values())
    assert re.search(r"joined 3 segments into jobs/\S+/final\.mp4: 15 frames, 1\.50 s, 1 audio stream", text), text
    assert re.search(r"delivered \S+clip-3d_LRF_Full_SBS\.mp4: moved out of the store", text), text
    assert re.search(r"comfort report written to jobs/\S+/report\.json", text), text
    assert not _messages(lines, "debug"), "-v shows no decisions"


def test_vv_adds_the_decisions_of_each_segment(home, tmp_path, clip):
    lines = _convert(home, tmp_path, clip, "-vv", workers=1)
    decisions = [line for line in lines if line["message"].startswith("decisions:")]
    assert sorted(line["segment"] for line in decisions) == [0, 1, 2], lines
    for line in decisions:
        for part in ("device cpu", "encoder libx264", "batches of 8 frames", "time window the whole segment",
                     "convergence 0.50", "floating window on"):
            assert part in line["message"], line["message"]
    assert len([m for m in _messages(lines) if SEGMENT.search(m)]) == 3  # and the story of -v


@pytest.mark.slow
def test_the_default_level_shows_none_of_it(home, tmp_path, clip):
    lines = _convert(home, tmp_path, clip)
    assert not [line for line in lines if line["level"] in ("info", "debug")], lines
