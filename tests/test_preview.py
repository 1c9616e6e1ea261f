"""`stereo-spot preview`: one converted frame, the one a job would produce at that moment.

What each test is there to catch: a preview of the wrong frame (an off-by-one in picking the picture on screen,
a window in the wrong timeline), a preview converted without the frames before it (the depth's motion cue and
range history missing, so the preview would not show what the job will), and bad times that get a traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.media.frames import read_frames
from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.preview import preview_frame

FPS = 24


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from stereo_spot.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("preview") / "clip.mp4", seconds=2.0, size=(128, 72), fps=FPS, gop=12)


def _source_frames(clip):
    return [f.rgb for f in read_frames(clip)]


def test_the_preview_is_the_frame_a_continuous_run_produces(clip):
    settings = ConversionSettings()
    frames = _source_frames(clip)
    k = 15  # 0.625 s: the warm-up reaches back to the first frame, as a run from the start does
    engine = StereoEngine(settings, device="cpu")
    engine.reset()
    continuous = engine.convert_batch(np.stack(frames[: k + 1]))[k]
    preview = preview_frame(clip, k / FPS, settings, device="cpu")
    assert preview.shape == continuous.shape == (72, 256, 3)
    # the left eye is the picture on screen at that moment (beside the floating window's mask at its left edge)
    assert np.array_equal(preview[:, 4:128], frames[k][:, 4:])
    assert np.abs(preview.astype(int) - continuous.astype(int)).max() <= 1
    # without the frames before it the depth has no motion and no history: a different right eye
    cold = StereoEngine(settings, device="cpu")
    cold.reset()
    alone = cold.convert_batch(frames[k][None])[0]
    assert np.abs(alone[:, 128:].astype(int) - continuous[:, 128:].astype(int)).mean() > 0.5


def test_the_picture_on_screen_between_two_frames_is_the_earlier_one(clip):
    frames = _source_frames(clip)
    preview = preview_frame(clip, 10.5 / FPS, ConversionSettings(), device="cpu")
    assert np.array_equal(preview[:, 4:128], frames[10][:, 4:])  # beside the floating window at the left edge


def test_the_cli_writes_a_png_in_the_chosen_layout(home, clip, tmp_path):
    out = tmp_path / "p.png"
    result = CliRunner().invoke(app, ["preview", str(clip), "--at", "1", "-o", str(out), "--format", "tb",
                                      "--divergence", "3"])
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(out))
    assert picture.shape == (144, 128, 3)
    default = CliRunner().invoke(app, ["preview", str(clip), "--at", "0.5", "--format",
                                       OutputFormat.ANAGLYPH.value])
    assert default.exit_code == 0, default.output
    assert cv2.imread(str(clip.with_name("clip-preview-0.5s.png"))).shape == (72, 128, 3)


@pytest.mark.parametrize("args,message", [(["--at", "9"], "past the end"), (["--at", "-1"], "--at")])
def test_bad_times_get_one_line(home, clip, args, message):
    result = CliRunner().invoke(app, ["preview", str(clip), *args])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


def test_python_dash_m_and_shell_completion():
    version = subprocess.run([sys.executable, "-m", "stereo_spot", "--version"], capture_output=True, text=True,
                             check=True)
    assert version.stdout.startswith("stereo-spot ")
    script = subprocess.run([sys.executable, "-m", "stereo_spot", "--show-completion", "bash"], capture_output=True,
                            text=True, check=True)
    assert "_stereo_spot_completion" in script.stdout and "complete " in script.stdout


def test_verbosity_flags_set_one_logging_level_for_every_command(home, clip, tmp_path, monkeypatch):
    monkeypatch.delenv("STEREO_SPOT_LOG_LEVEL", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["-q", "convert", str(clip), "--auto-divergence", "-o", str(tmp_path / "o.mp4"),
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger().level == logging.ERROR
    assert "automatic divergence" in result.output  # the chosen values are shown whatever the level
    assert os.environ["STEREO_SPOT_LOG_LEVEL"] == "ERROR"  # inherited by the runner's worker processes
    runner.invoke(app, ["-vv", "jobs"])
    assert logging.getLogger().level == logging.DEBUG
    monkeypatch.delenv("STEREO_SPOT_LOG_LEVEL")
    runner.invoke(app, ["jobs"])
    assert logging.getLogger().level == logging.WARNING
