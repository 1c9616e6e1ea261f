"""Depth models by name, through huggingface_hub and its cache, against a fake hub on 127.0.0.1 (never the
network).

What each test is there to catch: a name that does not reach the hub repository it stands for, a second run that
downloads again, an offline run that tries the network or fails with a traceback, a revision pin that is
ignored, and a damaged cache that `models verify` does not notice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot import hub_models
from stereo_spot.cli.main import app
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.depth import create_depth_estimator, known_depth_estimators
from stereo_spot.stereo.engine import StereoEngine, check_model_choice
from tests.fake_hub import serving
from tests.test_neural_depth import save_tiny_depth_anything

pytest.importorskip("transformers")
SMALL = hub_models.CATALOG["depth-anything-v2-small"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_depth_anything(tmp_path_factory.mktemp("hub") / "small")


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
    yield from serving({SMALL.repo_id: checkpoint}, tmp_path / "hf-cache", monkeypatch)


def _go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_models.snapshot_for_process.cache_clear()


def test_a_name_is_downloaded_once_into_the_hub_cache(hub, checkpoint):
    first = hub_models.resolve("depth-anything-v2-small")
    assert (first / "config.json").read_bytes() == (checkpoint / "config.json").read_bytes()
    assert "models--depth-anything--Depth-Anything-V2-Small-hf" in str(first)
    downloads = hub.downloads()
    assert downloads == len([p for p in checkpoint.rglob("*") if p.is_file()])
    assert hub_models.resolve("depth-anything-v2-small") == first
    assert hub.downloads() == downloads  # cached: nothing fetched again


def test_the_named_model_loads_through_the_real_code_and_matches_its_folder(hub, checkpoint):
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    by_name = StereoEngine(ConversionSettings(depth_model="depth-anything-v2-small"), device="cpu")
    by_folder = StereoEngine(ConversionSettings(depth_model="depth-anything", depth_weights=str(checkpoint)),
                             device="cpu")
    assert np.array_equal(by_name.convert_batch(frames), by_folder.convert_batch(frames))
    assert "depth-anything-v2-small" in known_depth_estimators()


def test_offline_uses_the_cache_and_says_in_one_line_what_is_missing(hub, monkeypatch):
    hub_models.resolve("depth-anything-v2-small")
    requests = sum(hub.requests.values())
    _go_offline(monkeypatch)
    assert hub_models.resolve("depth-anything-v2-small").is_dir()
    create_depth_estimator("depth-anything-v2-small", device="cpu")
    assert sum(hub.requests.values()) == requests  # offline: the hub is not asked
    with pytest.raises(hub_models.HubModelError, match="not in the model cache and the hub is offline"):
        check_model_choice(ConversionSettings(depth_model="depth-anything-v2-base"))


def test_a_revision_pin_is_what_is_asked_for(hub):
    commit = hub.commits[SMALL.repo_id]
    path = hub_models.resolve(f"depth-anything-v2-small@{commit}")
    assert path.name == commit
    assert not any("/revision/main" in key for key in hub.requests)  # a commit needs no branch lookup


def test_verify_notices_a_damaged_file(hub):
    snapshot = hub_models.resolve("depth-anything-v2-small")
    assert len(hub_models.verify("depth-anything-v2-small")) >= 3
    blob = (snapshot / "config.json").resolve()
    blob.write_text(blob.read_text().replace("}", ', "x": 1}', 1))
    with pytest.raises(hub_models.HubModelError, match="config.json of depth-anything-v2-small is damaged"):
        hub_models.verify("depth-anything-v2-small")


def test_the_models_commands(hub, home):
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "depth-anything-v2-large" in listed.output
    fetched = runner.invoke(app, ["models", "download", "depth-anything-v2-small"])
    assert fetched.exit_code == 0, fetched.output
    verified = runner.invoke(app, ["models", "verify", "depth-anything-v2-small"])
    assert verified.exit_code == 0 and "intact" in verified.output
    unknown = runner.invoke(app, ["models", "download", "depth-anything-v9"])
    assert unknown.exit_code == 1 and "not a model name" in unknown.output and "Traceback" not in unknown.output


def test_a_named_model_takes_no_weights_and_converts_from_the_cli(hub, home, tmp_path):
    from stereo_spot.sample import write_sample

    clip = write_sample(tmp_path / "clip.mp4", seconds=0.5, size=(96, 64), fps=12, gop=6)
    runner = CliRunner()
    both = runner.invoke(app, ["convert", str(clip), "--depth-model", "depth-anything-v2-small", "--depth-weights",
                               str(tmp_path)])
    assert both.exit_code != 0 and "brings its own weights" in both.output
    with pytest.raises(hub_models.HubModelError, match="brings its own weights"):
        create_depth_estimator("depth-anything-v2-small", str(tmp_path), "cpu")
    done = runner.invoke(app, ["convert", str(clip), "--depth-model", "depth-anything-v2-small", "--workers", "1"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "clip-3d_LRF_Full_SBS.mp4").is_file()
