"""The video diffusion inpainter through the real loading code, with tiny random weights (no download).

The checkpoint has the SVD/StereoCrafter layout: ``unet/`` (a ``UNetSpatioTemporalConditionModel`` taking noise +
warped-view latents + mask = 9 channels), ``vae/`` (``AutoencoderKLTemporalDecoder``), ``scheduler/`` (SVD's Euler
scheduler), ``image_encoder/`` (``CLIPVisionModelWithProjection``) and ``feature_extractor/``, each saved with
``save_pretrained``; it is loaded from that folder and from an ``s3://`` prefix on a moto server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot.cli.main import app
from stereo_spot.media.frames import read_frames
from stereo_spot.models import ConversionSettings
from stereo_spot.sample import write_sample
from stereo_spot.stereo import inpaint_diffusion as diffusion
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.fill import create_inpainter
from stereo_spot.stereo.synthetic import parallax_clip
from stereo_spot.stereo.warp import forward_warp
from stereo_spot.weights import WeightsError
from tests.moto_server import moto_endpoint  # noqa: F401

W, H = 64, 48


def save_tiny_stereo_inpainter(folder: Path, in_channels: int = 9) -> Path:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        layers_per_block=1, cross_attention_dim=16, num_attention_heads=(2, 4), num_frames=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
                                 down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                 ).save_pretrained(folder / "vae")
    # Stable Video Diffusion's scheduler configuration
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
                           sigma_max=700.0, timestep_type="continuous", interpolation_type="linear",
                           steps_offset=1, timestep_spacing="leading").save_pretrained(folder / "scheduler")
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16)).save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = save_tiny_stereo_inpainter(tmp_path_factory.mktemp("models") / "stereo-inpaint-tiny")
    (folder / diffusion.OPTIONS_FILE).write_text(json.dumps({"steps": 2, "frames_per_chunk": 4, "overlap": 1}))
    return folder


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    frames, _ = parallax_clip(W, H, 5, seed=4)
    return frames


def _warped(clip: np.ndarray, disparity_px: float = 6.0):
    left = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    disparity = torch.zeros((len(clip), 1, H, W))
    disparity[..., 12:36, 20:44] = disparity_px  # a near box: disocclusions on its right side
    right, holes, warped_disparity = forward_warp(left, disparity)
    return left, right.clone(), holes.clone(), warped_disparity.clone()


def test_fills_only_the_holes_with_a_feather(weights, clip):
    inpainter = create_inpainter("diffusion", str(weights), "cpu")
    assert (inpainter.frames_per_call, inpainter.context_frames) == (3, 1)  # 4 frames per chunk, 1 shared
    assert inpainter.models.dtype == torch.float32 and inpainter.models.multiple == 4
    left, right, holes, warped_disparity = _warped(clip)
    assert holes.any()
    out = inpainter.inpaint(right.clone(), holes, warped_disparity, left)
    assert out.shape == right.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    far = torch.nn.functional.max_pool2d(holes.float(), 2 * 2 + 1, stride=1, padding=2) == 0  # beyond feather
    torch.testing.assert_close(out * far, right * far)
    assert float(out[holes.expand_as(out)].mean()) > 0.02  # the holes (black before) were filled
    assert inpainter.tiles_run >= 2  # 5 frames in chunks of 3 new frames


def test_is_reproducible_and_continues_across_calls(weights, clip):
    left, right, holes, warped_disparity = _warped(clip)
    first = create_inpainter("diffusion", str(weights), "cpu")
    second = create_inpainter("diffusion", str(weights), "cpu")
    torch.testing.assert_close(first.inpaint(right.clone(), holes, warped_disparity, left),
                               second.inpaint(right.clone(), holes, warped_disparity, left))
    # the context (last inpainted frames) carries into the next call, and reset forgets it
    assert first._context is not None and len(first._context) == 1
    first.reset()
    assert first._context is None


def test_skips_tiles_without_holes(weights, clip):
    options = diffusion.DiffusionOptions(steps=2, frames_per_chunk=4, overlap=1, tile=32, tile_short=32,
                                         tile_overlap=8)
    inpainter = diffusion.DiffusionInpainter(str(weights), "cpu", options=options)
    left = torch.from_numpy(clip[:2]).permute(0, 3, 1, 2).float() / 255.0
    right = left.clone()
    holes = torch.zeros((2, 1, H, W), dtype=torch.bool)
    holes[..., 2:6, 3:7] = True  # one small hole in the top-left corner
    right[holes.expand_as(right)] = 0.0
    assert diffusion.tile_starts(W, 32, 8) == [0, 16, 32] and diffusion.tile_starts(H, 32, 8) == [0, 16]
    out = inpainter.inpaint(right, holes, torch.zeros_like(holes, dtype=torch.float32), left)
    assert inpainter.tiles_run == 1  # of 3 x 2 tiles
    assert float(out[holes.expand_as(out)].mean()) > 0.02
    torch.testing.assert_close(out[..., 20:, 20:], left[..., 20:, 20:])


def test_loads_once_and_from_s3(weights, clip, moto_endpoint, tmp_path, monkeypatch):  # noqa: F811
    import boto3

    create_inpainter("diffusion", str(weights), "cpu")
    count = diffusion.loaded_models()
    create_inpainter("diffusion", str(weights), "cpu")
    assert diffusion.loaded_models() == count
    monkeypatch.setenv("STEREO_SPOT_MODEL_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="models-inpaint")
    for path in weights.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "models-inpaint", f"stereocrafter/tiny/{path.relative_to(weights)}")
    from_s3 = create_inpainter("diffusion", "s3://models-inpaint/stereocrafter/tiny", "cpu")
    assert from_s3.models.folder.is_relative_to(tmp_path / "cache")
    assert diffusion.loaded_models() == count + 1
    left, right, holes, warped_disparity = _warped(clip)
    local = create_inpainter("diffusion", str(weights), "cpu")
    torch.testing.assert_close(from_s3.inpaint(right.clone(), holes, warped_disparity, left),
                               local.inpaint(right.clone(), holes, warped_disparity, left))


def test_checkpoint_errors_say_what_is_wrong(weights, tmp_path):
    with pytest.raises(WeightsError, match="needs --inpaint-weights"):
        create_inpainter("diffusion", None, "cpu")
    broken = tmp_path / "no-vae"
    shutil.copytree(weights, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(WeightsError, match="has no vae/ folder"):
        create_inpainter("diffusion", str(broken), "cpu")
    plain = save_tiny_stereo_inpainter(tmp_path / "svd", in_channels=8)  # an image-to-video UNet, not inpainting
    with pytest.raises(WeightsError, match="takes 8 input channels; a stereo inpainting UNet takes .* 9"):
        create_inpainter("diffusion", str(plain), "cpu")
    (weights / diffusion.OPTIONS_FILE).write_text(json.dumps({"steps": 2, "colour": 1}))
    try:
        with pytest.raises(WeightsError, match="unknown options colour"):
            diffusion.DiffusionOptions.from_folder(weights)
    finally:
        (weights / diffusion.OPTIONS_FILE).write_text(json.dumps({"steps": 2, "frames_per_chunk": 4,
                                                                  "overlap": 1}))


def test_the_engine_and_the_cli_convert_with_the_diffusion_inpainter(home, weights, tmp_path):
    settings = ConversionSettings(divergence=6.0, inpaint="diffusion", inpaint_weights=str(weights))
    engine = StereoEngine(settings, device="cpu")
    assert engine.batch_frames == 8  # at least the usual batch, and at least one chunk of new frames
    clip = write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(W, H), fps=6, gop=3)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--divergence", "6", "--inpaint",
                                      "diffusion", "--inpaint-weights", str(weights), "--segment-seconds", "0.5",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert np.stack([f.rgb for f in read_frames(out)]).shape == (6, H, 2 * W, 3)


@pytest.mark.parametrize("width, height", [(1920, 1080), (1280, 720), (1080, 1920), (3840, 2160), (1024, 576)])
def test_tiles_are_at_most_svds_1024x576_and_cover_little_more_than_the_frame(width, height):
    """SVD's UNet works at 1024x576: the fewest tiles of at most that size with at least 64 pixels of overlap,
    on SVD's grid (VAE 8 x UNet 8 = 64 pixels), the long side along the frame's."""
    plan = diffusion.tile_plan(height, width, diffusion.DiffusionOptions(), multiple=64, quantum=8)
    long_side, short_side = max(plan.tile_width, plan.tile_height), min(plan.tile_width, plan.tile_height)
    assert long_side <= 1024 and short_side <= 576 and (plan.tile_width >= plan.tile_height) == (width >= height)
    assert plan.tile_width % 64 == 0 and plan.tile_height % 64 == 0
    for starts, tile, size in ((plan.ys, plan.tile_height, plan.height), (plan.xs, plan.tile_width, plan.width)):
        assert starts[0] == 0 and starts[-1] + tile == size  # covered to the edge
        assert all(b - a <= tile - 64 for a, b in zip(starts, starts[1:], strict=False))  # >= 64 shared
        assert all(s % 8 == 0 for s in starts)  # on the latent grid
    ratio = plan.tiled_area / (width * height)
    if (width, height) in ((1920, 1080), (1080, 1920)):
        assert (long_side, short_side) == (1024, 576) and len(plan.xs) * len(plan.ys) == 4
        assert ratio <= 1.15, ratio  # 1.14
    assert ratio <= 1.4, ratio
