"""The diffusion inpainter against an independent implementation of StereoCrafter's inference.

``stereocrafter_inpaint`` below is written from StereoCrafter's published code (``inpainting_inference.py``:
the chunk loop and ``spatial_tiled_process``; ``pipelines/stereo_video_inpainting.py``: the denoising call)
with diffusers' and transformers' building blocks loaded straight from the checkpoint folder — not through the
project's loader. It runs with the same tiny random weights (the real configurations' structure: a 9-channel
spatio-temporal UNet with temporal layers, the temporal-decoder VAE, SVD's Euler scheduler, a CLIP image
encoder) and the same noise: both draw every tile's and chunk's initial latents, in the same order, from one
``torch.Generator`` seeded once (StereoCrafter passes no generator, so its noise is not reproducible at all; the
pipeline's noise-augmentation draw is skipped because its strength is 0). Two things are scaled down with the
models: CLIP's 224-pixel input follows the tiny encoder's image size, and the 128-pixel tile overlap becomes
8 pixels.

Where the project follows StereoCrafter (``DiffusionOptions`` with ``STEREOCRAFTER``'s values) the outputs agree
within ``TOLERANCE``; every deliberate difference is an option, and a test shows what it changes.

What each test is there to catch (each breakage was made on purpose and the test went red):

* ``test_follows_stereocrafter_with_its_options`` — the model's output replaced by zeros or a constant, the
  conditioning channels permuted (mask before latents, or latents and noise swapped), the mask not passed,
  the CLIP embedding dropped or taken from another frame, the wrong micro-conditioning (fps not minus 1), the
  guidance formula, the Euler steps skipped, the overlap frames not fed back, the latent tile blend wrong.
* ``test_each_difference_from_stereocrafter_changes_the_result`` — an option that is read but has no effect.
* ``test_the_unet_sees_noise_then_condition_latents_then_the_mask`` — the channel order of the UNet input
  (independently of the reference): channels 4..7 are the VAE latents of the warped view, channel 8 the mask.
* ``test_max_pooling_keeps_thin_holes_that_nearest_sampling_loses`` — the mask downsampling (the reason
  ``mask_downsample`` defaults to "max": a one-pixel hole at an odd column never reaches the model otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stereo_spot.stereo import inpaint_diffusion as diffusion
from tests.test_neural_inpaint import save_tiny_stereo_inpainter

N, H, W = 8, 32, 56  # 8 frames: chunks [0,4) [3,7) and StereoCrafter's last chunk reaching back, [5,8)
CHUNK, OVERLAP, STEPS, TILE_OVERLAP, SEED = 4, 1, 2, 8, 3
#: max absolute difference on 0..1 frames allowed between the project and the reference (float32 on CPU; the
#: same operations in a different grouping differ by rounding only — measured 2.5e-5)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = save_tiny_stereo_inpainter(tmp_path_factory.mktemp("models") / "stereocrafter-tiny")
    (folder / diffusion.OPTIONS_FILE).write_text(json.dumps({"steps": STEPS}))
    return folder


@pytest.fixture(scope="module")
def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Warped right views (holes black) and hole masks [N,1,H,W]: a hole in each tile, moving over time."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand((1, 3, H // 4, W // 4), generator=gen)
    frames = F.interpolate(base, size=(H, W), mode="bilinear", align_corners=False).repeat(N, 1, 1, 1)
    frames = frames + 0.05 * torch.rand((N, 3, H, W), generator=gen)
    holes = torch.zeros((N, 1, H, W), dtype=torch.bool)
    for i in range(N):
        holes[i, :, 6:20, 8 + i:14 + i] = True  # left tile
        holes[i, :, 14:28, 34 + i:37 + i] = True  # right tile
    return frames.clamp(0, 1).masked_fill(holes, 0.0), holes


# --- the reference --------------------------------------------------------------------------------------


def _resize_with_antialiasing(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing as resize,
    )

    return resize(image, size)


def stereocrafter_inpaint(folder: Path, warped: torch.Tensor, masks: torch.Tensor, *, frames_chunk: int,
                          overlap: int, tiles: tuple[int, int], tile_overlap: int, steps: int, seed: int,
                          guidance: float = 1.01) -> torch.Tensor:
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    unet = UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae").eval()
    scheduler = EulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder").eval()
    feature_extractor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator().manual_seed(seed)
    clip_size = image_encoder.config.image_size  # StereoCrafter: 224, CLIP ViT-H's

    def pipeline_latents(frames: torch.Tensor, frames_mask: torch.Tensor) -> torch.Tensor:
        """StableVideoDiffusionInpaintingPipeline.__call__(..., output_type="latent") for one tile."""
        n, _, h, w = frames.shape
        image = _resize_with_antialiasing(frames[0:1] * 2.0 - 1.0, (clip_size, clip_size))
        image = (image + 1.0) / 2.0
        mean = torch.tensor(feature_extractor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(feature_extractor.image_std).view(1, 3, 1, 1)
        embeddings = image_encoder((image - mean) / std).image_embeds.unsqueeze(1)
        embeddings = torch.cat([torch.zeros_like(embeddings), embeddings])
        pixels = frames * 2.0 - 1.0  # VaeImageProcessor.preprocess
        frame_latents = torch.cat([vae.encode(pixels[i:i + 5]).latent_dist.mode()
                                   for i in range(0, n, 5)]).unsqueeze(0)
        frame_latents = torch.cat([torch.zeros_like(frame_latents), frame_latents])
        binary = (frames_mask >= 0.5).float()  # the mask processor binarises
        mask_latents = F.interpolate(binary, scale_factor=1 / scale).unsqueeze(0)
        mask_latents = torch.cat([torch.zeros_like(mask_latents), mask_latents])
        added_time_ids = torch.tensor([[7 - 1, 127, 0.0]]).repeat(2, 1)
        scheduler.set_timesteps(steps)
        latents = torch.randn((1, n, unet.config.in_channels // 2, h // scale, w // scale), generator=generator)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            latent_model_input = torch.cat([latent_model_input, frame_latents, mask_latents], dim=2)
            noise_pred = unet(latent_model_input, t, encoder_hidden_states=embeddings,
                              added_time_ids=added_time_ids, return_dict=False)[0]
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance * (noise_pred_cond - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        return latents[0]

    def blend_v(a, b, size):
        weight_b = (torch.arange(size).view(1, 1, -1, 1) / size)
        b[:, :, :size, :] = (1 - weight_b) * a[:, :, -size:, :] + weight_b * b[:, :, :size, :]
        return b

    def blend_h(a, b, size):
        weight_b = (torch.arange(size).view(1, 1, 1, -1) / size)
        b[:, :, :, :size] = (1 - weight_b) * a[:, :, :, -size:] + weight_b * b[:, :, :, :size]
        return b

    def spatial_tiled_process(cond_frames, mask_frames):
        height, width = cond_frames.shape[2:]
        ny, nx = tiles
        size = (int((height + tile_overlap * (ny - 1)) / ny), int((width + tile_overlap * (nx - 1)) / nx))
        stride = (size[0] - tile_overlap, size[1] - tile_overlap)
        cols = []
        for i in range(ny):
            rows = []
            for j in range(nx):
                box = (slice(None), slice(None), slice(i * stride[0], i * stride[0] + size[0]),
                       slice(j * stride[1], j * stride[1] + size[1]))
                rows.append(pipeline_latents(cond_frames[box], mask_frames[box]))
            cols.append(rows)
        latent_stride = (stride[0] // scale, stride[1] // scale)
        latent_overlap = tile_overlap // scale
        for i, rows in enumerate(cols):
            for j, tile in enumerate(rows):
                if i > 0:
                    tile = blend_v(cols[i - 1][j], tile, latent_overlap)
                if j > 0:
                    tile = blend_h(rows[j - 1], tile, latent_overlap)
        pieces = []
        for i, rows in enumerate(cols):
            for j, tile in enumerate(rows):
                if i < len(cols) - 1:
                    tile = tile[:, :, :latent_stride[0], :]
                if j < len(rows) - 1:
                    tile = tile[:, :, :, :latent_stride[1]]
                rows[j] = tile
            pieces.append(torch.cat(rows, dim=3))
        return torch.cat(pieces, dim=2)

    def decode_latents(latents, chunk=2):
        latents = latents / vae.config.scaling_factor
        frames = [vae.decode(latents[i:i + chunk], num_frames=len(latents[i:i + chunk])).sample
                  for i in range(0, len(latents), chunk)]
        return ((torch.cat(frames) + 1.0) / 2.0).clamp(0.0, 1.0)  # VaeImageProcessor.postprocess (no uint8)

    num_frames = len(warped)
    results, generated = [], None
    with torch.no_grad():
        for i in range(0, num_frames, frames_chunk - overlap):
            if i + overlap >= num_frames:
                break
            if generated is not None and i + frames_chunk > num_frames:
                cur_i = max(num_frames + overlap - frames_chunk, 0)
                cur_overlap = i - cur_i + overlap
            else:
                cur_i, cur_overlap = i, overlap
            input_frames_i = warped[cur_i:cur_i + frames_chunk].clone()
            mask_frames_i = masks[cur_i:cur_i + frames_chunk]
            if generated is not None:
                input_frames_i[:cur_overlap] = generated[-cur_overlap:]
            video_latents = spatial_tiled_process(input_frames_i, mask_frames_i)
            generated = decode_latents(video_latents)
            if i != 0:
                generated = generated[cur_overlap:]
            results.append(generated)
    return torch.cat(results)


# --- the project's inpainter ----------------------------------------------------------------------------


def project_inpaint(folder: Path, warped: torch.Tensor, holes: torch.Tensor, **changes) -> torch.Tensor:
    options = diffusion.DiffusionOptions(steps=STEPS, frames_per_chunk=CHUNK, overlap=OVERLAP, tile=32,
                                         tile_short=32, tile_overlap=TILE_OVERLAP, seed=SEED,
                                         **{**diffusion.STEREOCRAFTER, **changes})
    inpainter = diffusion.DiffusionInpainter(str(folder), "cpu", options=options)
    assert inpainter.plan(H, W).xs == (0, 24) and inpainter.plan(H, W).ys == (0,)  # StereoCrafter's 1 x 2 tiles
    return inpainter.inpaint(warped.clone(), holes, torch.zeros_like(holes, dtype=torch.float32))


@pytest.fixture(scope="module")
def reference(weights, scene) -> torch.Tensor:
    warped, holes = scene
    return stereocrafter_inpaint(weights, warped, holes.float(), frames_chunk=CHUNK, overlap=OVERLAP,
                                 tiles=(1, 2), tile_overlap=TILE_OVERLAP, steps=STEPS, seed=SEED)


@pytest.fixture(scope="module")
def followed(weights, scene) -> torch.Tensor:
    return project_inpaint(weights, *scene)


def test_follows_stereocrafter_with_its_options(reference, followed, scene):
    warped, _ = scene
    assert reference.shape == followed.shape == warped.shape
    difference = float((followed - reference).abs().max())
    print(f"\nproject vs StereoCrafter reference: max |difference| {difference:.2e}")
    assert difference < TOLERANCE
    assert float(reference.std()) > 0.01  # the reference is a picture, not a constant


@pytest.mark.parametrize("option, value", [
    ("clear_overlap_mask", True), ("mask_downsample", "max"), ("guidance_scale", 1.0), ("composite", "holes"),
    ("tile_blend", "pixel"), ("last_chunk", "short"), ("noise", "shared"),
])
def test_each_difference_from_stereocrafter_changes_the_result(weights, scene, followed, option, value):
    warped, holes = scene
    changed = project_inpaint(weights, warped, holes, **{option: value})
    difference = (changed - followed).abs()
    assert float(difference.max()) > 1e-3, option
    if option == "composite":  # outside the holes and their feather the warped view is kept exactly
        far = F.max_pool2d(holes.float(), 5, stride=1, padding=2) == 0
        torch.testing.assert_close(changed * far, warped * far)
    if option == "last_chunk":  # only the last, short chunk differs
        assert float(difference[:7].max()) < TOLERANCE and float(difference[7:].max()) > 1e-3


def _unet_inputs(weights: Path, warped: torch.Tensor, holes: torch.Tensor, **changes) -> list[torch.Tensor]:
    inpainter = diffusion.DiffusionInpainter(str(weights), "cpu", options=diffusion.DiffusionOptions(
        steps=1, frames_per_chunk=CHUNK, overlap=OVERLAP, tile=64, tile_short=64, **changes))
    seen: list[torch.Tensor] = []
    hook = inpainter.models.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        inpainter.inpaint(warped.clone(), holes, torch.zeros_like(holes, dtype=torch.float32))
    finally:
        hook.remove()
    return seen, inpainter


def test_the_unet_sees_noise_then_condition_latents_then_the_mask(weights, scene):
    warped, holes = scene
    seen, inpainter = _unet_inputs(weights, warped[:CHUNK], holes[:CHUNK])
    sample = seen[0][0]  # [F, 9, h, w] of the first chunk
    assert sample.shape[:2] == (CHUNK, 9)
    vae = inpainter.models.vae
    with torch.no_grad():
        expected = vae.encode(warped[:CHUNK] * 2.0 - 1.0).latent_dist.mode()
    torch.testing.assert_close(sample[:, 4:8], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(sample[:, 8:9], F.max_pool2d(holes[:CHUNK].float(), inpainter.models.vae_factor))
    assert float(sample[:, :4].std()) > 0.5  # the noisy latents (scaled by the scheduler)


def test_max_pooling_keeps_thin_holes_that_nearest_sampling_loses(weights, scene):
    warped, _ = scene
    thin = torch.zeros((CHUNK, 1, H, W), dtype=torch.bool)
    thin[..., 4:28, 9] = True  # one pixel wide, at an odd column: nearest sampling reads the even ones
    frames = warped[:CHUNK].masked_fill(thin, 0.0)
    pooled, _ = _unet_inputs(weights, frames, thin)
    nearest, _ = _unet_inputs(weights, frames, thin, mask_downsample="nearest")
    assert float(pooled[0][0, :, 8].sum()) > 0  # the hole's cells are marked
    assert float(nearest[0][0, :, 8].sum()) == 0  # the model is never told about the hole
