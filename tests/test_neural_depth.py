"""Depth Anything through the real loading code, with tiny randomly initialised models (no download).

The models have Depth Anything V2's own config classes (``DepthAnythingConfig`` with a ``Dinov2Config``
backbone, the -Small-hf structure scaled down: four backbone stages feeding the DPT neck, patch 14) and are saved
with ``save_pretrained`` next to the image processor exactly as the ``-hf`` repositories hold it
(``DPTImageProcessor``: size 518 → here a smaller square, keep_aspect_ratio, ensure_multiple_of 14, bicubic,
ImageNet mean/std); relative and metric (``depth_estimation_type="metric"``, ``max_depth``) checkpoints.
They load from a folder and from an ``s3://`` prefix on a moto server.

What each test is there to catch (each breakage was made on purpose and the test went red):

* ``test_preprocessing_matches_the_image_processor`` — the tensor resize + normalisation against
  ``AutoImageProcessor``'s own ``pixel_values`` (tolerance below: PIL's bicubic on uint8 vs torch's on float):
  normalisation removed, mean/std swapped or ignored, RGB fed as BGR, the size rule broken.
* ``test_raw_prediction_matches_transformers_on_the_processor_output`` — the project's raw prediction against
  ``model(**processor(images))`` for relative and metric checkpoints: the model's output replaced by zeros or a
  constant, the metric inversion dropped or applied to a relative model, the output not the model's.
* ``test_depth_order_follows_the_checkpoint_type`` — a model whose output is known (a hook turns the real
  model's input brightness into its prediction: bright = near, as disparity for a relative checkpoint, as metres
  for a metric one) on a scene with a known order: near and far inverted in the normalisation, a metric model's
  depth not inverted (near = small metres), a relative model's output inverted, a constant output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot.cli.main import app
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


#: Depth-Anything-V2-*-hf's preprocessor_config.json (with a smaller size for the tiny models)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_tiny_depth_anything(folder: Path, input_size: int = 56, metric: bool = False, max_depth: int = 20
                             ) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    # The default initialiser (std 0.02) makes a network this small output an almost constant map; 0.1 keeps
    # its activations at a useful scale; the last layer is scaled up and biased so that the final ReLU keeps a
    # map that varies over the picture.
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=input_size, patch_size=14, out_indices=[1, 2, 3, 4],
                            reshape_hidden_states=False, initializer_range=0.1)
    kind = {"depth_estimation_type": "metric", "max_depth": max_depth} if metric else {}
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 reassemble_factors=[4, 2, 1, 0.5], initializer_range=0.1, **kind)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():
        if metric:  # sigmoid × max_depth: keep the head's output in the sigmoid's varying range
            model.head.conv3.weight.mul_(60.0)
            model.head.conv3.bias.fill_(0.0)
        else:
            model.head.conv3.weight.mul_(20.0)
            model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": input_size, "width": input_size}, resample=3,
                      keep_aspect_ratio=True, ensure_multiple_of=14, do_rescale=True, do_normalize=True,
                      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_pad=False).save_pretrained(folder)
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


@pytest.fixture(scope="module")
def metric_weights(tmp_path_factory) -> Path:
    return save_tiny_depth_anything(tmp_path_factory.mktemp("models") / "depth-anything-metric-tiny", metric=True)


@pytest.fixture(scope="module")
def large_input_weights(tmp_path_factory) -> Path:
    """A processor size between the test frames' sizes: one frame is upscaled, the others downscaled."""
    return save_tiny_depth_anything(tmp_path_factory.mktemp("models") / "depth-anything-126", input_size=126)


def _pixel_values_fed(estimator, frames: torch.Tensor) -> torch.Tensor:
    """The ``pixel_values`` the project hands to the real model."""
    captured = {}
    hook = estimator.loaded.model.register_forward_pre_hook(lambda _m, _a, kwargs: captured.update(kwargs),
                                                            with_kwargs=True)
    try:
        estimator.predict(frames)
    finally:
        hook.remove()
    return captured["pixel_values"]


#: Tolerance against the image processor, in normalised units (1 unit = one ImageNet std, ~0.23 of the 0..1
#: range). PIL resizes the uint8 image and rounds to uint8, torch resizes floats; both bicubic, but PIL's cubic
#: kernel has a = -0.5 and torch's a = -0.75, which shows when upscaling. Measured: mean 0.020 / 99th percentile
#: 0.066 upscaling 96x64 to 126x84, under 0.02 downscaling; without normalisation the difference is above 1.
PREPROCESS_MEAN_TOLERANCE = 0.03
PREPROCESS_P99_TOLERANCE = 0.1


@pytest.mark.parametrize("size", [(64, 96), (180, 320), (360, 200)])
def test_preprocessing_matches_the_image_processor(large_input_weights, size):
    from transformers import AutoImageProcessor

    height, width = size
    clip, _ = parallax_clip(width, height, 1, seed=3)
    processor = AutoImageProcessor.from_pretrained(large_input_weights)
    expected = processor(images=clip[0], return_tensors="pt")["pixel_values"]
    estimator = create_depth_estimator("depth-anything", str(large_input_weights), "cpu")
    got = _pixel_values_fed(estimator, torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0)
    assert got.shape == expected.shape
    difference = (got - expected).abs()
    assert float(difference.mean()) < PREPROCESS_MEAN_TOLERANCE, float(difference.mean())
    assert float(difference.quantile(0.99)) < PREPROCESS_P99_TOLERANCE, float(difference.quantile(0.99))


@pytest.mark.parametrize("kind", ["relative", "metric"])
def test_raw_prediction_matches_transformers_on_the_processor_output(weights, metric_weights, frames, kind):
    """``predict`` returns the checkpoint's inverse depth: the relative model's output as it is, the metric
    model's metres inverted. Compared with the real model run on the image processor's ``pixel_values``."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = weights if kind == "relative" else metric_weights
    estimator = create_depth_estimator("depth-anything", str(folder), "cpu")
    assert estimator.loaded.metric is (kind == "metric")
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    images = [(f.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for f in frames[:2]]
    with torch.no_grad():
        reference = model(**processor(images=images, return_tensors="pt")).predicted_depth
    if kind == "metric":
        assert float(reference.min()) > 0 and float(reference.max()) < 20.0  # metres, below max_depth
        reference = 1.0 / reference
    got = estimator.predict(frames[:2])[:, 0]
    assert got.shape == reference.shape
    relative_error = float((got - reference).abs().mean() / reference.abs().mean())
    assert relative_error < 0.05, relative_error
    assert float(reference.std()) > 0.05 * float(reference.abs().mean())  # the reference itself varies


def _known_scene(height: int = 64, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright square (the near object) on a dark textured wall: frames [2,3,H,W] and the square's mask."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    from stereo_spot.stereo.synthetic import texture

    wall = texture(1, xs, ys) * 0.35
    near = np.zeros((height, width), bool)
    near[16:44, 30:70] = True
    image = np.where(near[..., None], 0.75 + 0.25 * texture(2, xs, ys), wall)
    frames = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float()
    return frames, torch.from_numpy(near)


@pytest.mark.parametrize("kind", ["relative", "metric"])
def test_depth_order_follows_the_checkpoint_type(weights, metric_weights, kind):
    folder = weights if kind == "relative" else metric_weights
    estimator = da.DepthAnythingDepth(str(folder), "cpu")
    p = estimator.loaded.preprocessing
    mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)

    def known_output(_module, _args, kwargs, output):
        brightness = (kwargs["pixel_values"].float() * std + mean).mean(dim=1)  # [N,h,w], 0..1
        # relative checkpoints predict inverse depth (bright = near = large); metric ones metres (near = small)
        predicted = 10.0 * brightness if kind == "relative" else 1.0 + 9.0 * (1.0 - brightness)
        return type(output)(predicted_depth=predicted.to(output.predicted_depth.dtype))

    hook = estimator.loaded.model.register_forward_hook(known_output, with_kwargs=True)
    try:
        frames, near = _known_scene()
        depth = estimator.estimate(frames)[:, 0]
    finally:
        hook.remove()
    inner = torch.zeros_like(near)
    inner[20:40, 34:66] = True  # away from the square's edge (upsampling blurs it)
    outer = ~torch.nn.functional.max_pool2d(near[None, None].float(), 9, stride=1, padding=4)[0, 0].bool()
    assert float(depth[:, inner].mean()) > 0.8, float(depth[:, inner].mean())  # near = 1
    assert float(depth[:, outer].mean()) < 0.2, float(depth[:, outer].mean())  # far = 0


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
    warmed = da.DepthAnythingDepth(str(weights), "cpu", memory=2, steady_frames=3)
    continuous = da.DepthAnythingDepth(str(weights), "cpu", memory=2, steady_frames=3)
    assert warmed.memory_frames == 4  # the pooled range's 2 frames and the steadying filter's 2 earlier ones
    expected = continuous.estimate(frames)[-1]
    warmed.estimate(frames[-5:-1])  # the last `memory_frames` frames before the one compared
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
    assert engine.warmup_frames == engine.depth.memory_frames == 16 + 11  # the range's, the steadying filter's
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
