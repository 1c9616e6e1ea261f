"""Depth Anything through the real loading code, with a tiny randomly initialised model (no download).

The model has Depth Anything's own config classes (``DepthAnythingConfig`` with a small ``Dinov2Config``
backbone) and is saved with ``save_pretrained`` next to its image processor, exactly the layout of a
Depth Anything V2 checkpoint; it is loaded from that folder and from an ``s3://`` prefix on a moto server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot.cli import app
from stereo_spot.media.frames import read_frames
from stereo_spot.models import ConversionSettings
from stereo_spot.sample import write_sample
from stereo_spot.stereo.depth import create_depth_estimator
from stereo_spot.stereo.depth import depth_anything as da
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.synthetic import parallax_clip
from stereo_spot.weights import WeightsError, fetch_weights
from tests.moto_server import moto_endpoint  # noqa: F401

W, H = 96, 64


def save_tiny_depth_anything(folder: Path, input_size: int = 56) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    # The default initialiser (std 0.02) makes a network this small output an almost constant map; 0.1 keeps
    # its activations at a useful scale; the last layer is scaled up and biased so that the final ReLU keeps a
    # map that varies over the picture.
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=input_size, patch_size=14, out_indices=[1, 2, 3, 4],
                            reshape_hidden_states=False, initializer_range=0.1)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 initializer_range=0.1)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():
        model.head.conv3.weight.mul_(20.0)
        model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(folder)
    DPTImageProcessor(size={"height": input_size, "width": input_size}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, do_pad=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny_depth_anything(tmp_path_factory.mktemp("models") / "depth-anything-tiny")


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    clip, _ = parallax_clip(W, H, 6, seed=2)
    return torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0


def test_loads_from_a_folder_and_estimates_normalised_depth(weights, frames):
    estimator = create_depth_estimator("depth-anything", str(weights), "cpu")
    assert estimator.loaded.dtype == torch.float32 and not estimator.loaded.metric
    depth = estimator.estimate(frames)
    assert depth.shape == (6, 1, H, W) and depth.dtype == torch.float32
    assert float(depth.min()) >= 0.0 and float(depth.max()) <= 1.0
    assert float(depth.std()) > 0.05  # not a constant map
    # the tensor preprocessing reproduces the checkpoint's image processor
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(weights)
    for height, width in ((64, 96), (720, 1280), (1080, 1920), (300, 100)):
        image = np.zeros((height, width, 3), np.uint8)
        expected = processor(images=image, return_tensors="pt")["pixel_values"].shape[-2:]
        assert estimator.loaded.preprocessing.size_for(height, width) == tuple(expected)


def test_the_model_is_loaded_once_per_process_and_device(weights, frames):
    first = create_depth_estimator("depth-anything", str(weights), "cpu")
    count = da.loaded_models()
    second = create_depth_estimator("depth-anything", str(weights), "cpu")
    assert da.loaded_models() == count and second.loaded is first.loaded
    # separate temporal state, same weights: the same first estimate
    torch.testing.assert_close(first.estimate(frames[:1]), second.estimate(frames[:1]))


def test_batches_and_frames_agree_and_a_warm_up_reproduces_a_continuous_run(weights, frames):
    batched = create_depth_estimator("depth-anything", str(weights), "cpu")
    single = create_depth_estimator("depth-anything", str(weights), "cpu")
    together = batched.estimate(frames)
    apart = torch.cat([single.estimate(frames[i:i + 1]) for i in range(len(frames))])
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=0)
    warmed = da.DepthAnythingDepth(str(weights), "cpu", memory=3)
    continuous = da.DepthAnythingDepth(str(weights), "cpu", memory=3)
    expected = continuous.estimate(frames)[-1]
    warmed.estimate(frames[-4:-1])  # the last `memory` frames before the one compared
    torch.testing.assert_close(warmed.estimate(frames[-1:])[0], expected, atol=1e-4, rtol=0)


def test_loads_from_s3_once_into_the_cache(weights, frames, moto_endpoint, tmp_path, monkeypatch):  # noqa: F811
    import boto3

    monkeypatch.setenv("STEREO_SPOT_MODEL_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="models-depth")
    for path in weights.iterdir():
        s3.upload_file(str(path), "models-depth", f"depth/anything-tiny/{path.name}")
    uri = "s3://models-depth/depth/anything-tiny"
    estimator = create_depth_estimator("depth-anything", uri, "cpu")
    local = estimator.loaded.folder
    assert local.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in weights.iterdir())
    torch.testing.assert_close(estimator.estimate(frames[:1]),
                               create_depth_estimator("depth-anything", str(weights), "cpu").estimate(frames[:1]))
    stamp = (local / "config.json").stat().st_mtime_ns
    assert fetch_weights(uri) == local and (local / "config.json").stat().st_mtime_ns == stamp  # not again
    with pytest.raises(WeightsError, match="no depth model weights under s3://models-depth/nothing"):
        fetch_weights("s3://models-depth/nothing", "depth model")


def test_missing_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="needs --depth-weights"):
        create_depth_estimator("depth-anything", None, "cpu")
    with pytest.raises(WeightsError, match="do not exist"):
        create_depth_estimator("depth-anything", str(tmp_path / "nope"), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        create_depth_estimator("depth-anything", str(tmp_path / "empty"), "cpu")
    with pytest.raises(StereoInputError, match="unknown depth model 'midas'"):
        create_depth_estimator("midas", None, "cpu")


def test_engine_and_cli_convert_with_the_neural_depth(home, weights, tmp_path):
    clip = write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(W, H), fps=8, gop=4)
    settings = ConversionSettings(depth_model="depth-anything", depth_weights=str(weights))
    engine = StereoEngine(settings, device="cpu")
    assert engine.warmup_frames == engine.depth.memory_frames == 16
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--depth-model", "depth-anything",
                                      "--depth-weights", str(weights), "--segment-seconds", "0.5",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    converted = np.stack([f.rgb for f in read_frames(out)])
    assert converted.shape == (8, H, 2 * W, 3)
    assert np.abs(converted[:, :, W:].astype(int) - converted[:, :, :W]).mean() > 1  # the eyes differ
    bad = CliRunner().invoke(app, ["convert", str(clip), "--depth-model", "depth-anything"])
    assert bad.exit_code == 1 and "needs --depth-weights" in bad.output
