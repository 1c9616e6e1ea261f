"""Output names and the layout tokens players read.

A name given with ``-o`` is written as given (scripts and other tools rely on ``-o`` meaning exactly that), and a
video name without a token players take the layout from gets one warning naming the file that would carry it.
What the tests catch: a warning that never fires (or fires for a name that has a token, or at ``-q``), and a
token test that matches inside words ("ballroom" is not "lr").
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.models import OutputFormat
from stereo_spot.naming import names_layout, output_file_name
from stereo_spot.sample import write_sample


@pytest.mark.parametrize(("name", "output_format", "named"), [
    ("holiday-3d_LRF_Full_SBS.mp4", OutputFormat.SBS, True),
    ("holiday.SBS.mp4", OutputFormat.HSBS, True),
    ("holiday-3d.mp4", OutputFormat.SBS, False),
    ("ballroom.mp4", OutputFormat.SBS, False),
    ("holiday_OU.mkv", OutputFormat.TB, True),
    ("holiday_SBS.mp4", OutputFormat.TB, False),
    ("holiday.mp4", OutputFormat.ANAGLYPH, True),
    ("holiday-3d_180_LR.mp4", OutputFormat.VR180, True),
])
def test_names_layout(name, output_format, named):
    assert names_layout(name, output_format) is named


def test_every_default_name_carries_its_layout():
    for output_format in OutputFormat:
        assert names_layout(output_file_name("clip", output_format), output_format), output_format


@pytest.fixture
def clip(tmp_path):
    return write_sample(tmp_path / "clip.mp4", seconds=0.5, size=(64, 48), fps=10, gop=5)


def test_a_name_without_the_layout_is_written_as_given_with_a_warning(home, tmp_path, clip):
    out = tmp_path / "clip-3d.mp4"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "clip-3d.mp4 has none" in result.output and "clip-3d_LRF_Full_SBS.mp4" in result.output
    quiet = CliRunner().invoke(app, ["-q", "convert", str(clip), "-o", str(tmp_path / "again.mp4")])
    assert quiet.exit_code == 0 and "has none" not in quiet.output


def test_a_name_with_the_layout_gets_no_warning(home, tmp_path, clip):
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(tmp_path / "clip_SBS.mp4")])
    assert result.exit_code == 0 and "has none" not in result.output
