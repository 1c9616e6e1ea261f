"""ZoeDepth by name (``zoedepth-nyu-kitti`` = Intel/zoedepth-nyu-kitti) through transformers'
``ZoeDepthForDepthEstimation``.

The checkpoint is a small random-weight ZoeDepth (the sizes of transformers' own ZoeDepthModelTester,
tests/models/zoedepth/test_modeling_zoedepth.py, on a DINOv2 backbone) with a ``ZoeDepthImageProcessor`` at a
small size. The reference is transformers' own: the processor's ``pixel_values`` (reflection padding, bilinear
resize with aligned corners, normalisation) and the model's call on them; the processor's
``post_process_depth_estimation`` needs torchvision, which the project does not install, so its two steps are
written out here as it does them (models/zoedepth/image_processing_pil_zoedepth.py): the prediction resized
bicubically to the padded frame, the padding cropped off. ZoeDepth predicts metres, so the project's raw output
(inverse depth) is compared with its inverse.

What the tests catch (each seen red): no reflection padding (or its crop missing), corners not aligned in the
resize, ZoeDepth's metres taken for inverse depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereo_spot import hub_models
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.depth import create_depth_estimator
from stereo_spot.stereo.depth.depth_anything import reflect_padding
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.synthetic import parallax_clip
from tests.fake_hub import serving

pytest.importorskip("transformers")
W, H = 96, 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, ZoeDepthConfig, ZoeDepthForDepthEstimation
    from transformers.models.zoedepth.image_processing_pil_zoedepth import ZoeDepthImageProcessorPil

    folder = tmp_path_factory.mktemp("zoedepth") / "zoedepth-nyu-kitti"
    torch.manual_seed(0)
    # initializer_range 0.3 (not the default 0.02, which gives a flat map) so the depth varies over the picture
    backbone = Dinov2Config(image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=8, out_features=["stage1", "stage2"], reshape_hidden_states=False,
                            initializer_range=0.3)
    config = ZoeDepthConfig(backbone_config=backbone, backbone=None, neck_hidden_sizes=[2, 2], fusion_hidden_size=6,
                            bottleneck_features=6, num_out_features=[6, 6, 6, 6], initializer_range=0.3)
    ZoeDepthForDepthEstimation(config).save_pretrained(folder)
    # Intel/zoedepth-*'s processor (pad, keep the aspect ratio, bilinear, mean/std 0.5) at a small size
    ZoeDepthImageProcessorPil(size={"height": 48, "width": 64}, keep_aspect_ratio=True, ensure_multiple_of=16,
                              do_pad=True).save_pretrained(folder)
    return folder


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
    yield from serving({"Intel/zoedepth-nyu-kitti": checkpoint}, tmp_path / "hf-cache", monkeypatch)


def test_zoedepth_by_name_agrees_with_transformers(hub, checkpoint):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    clip, _ = parallax_clip(W, H, 2, seed=8)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    estimator = create_depth_estimator("zoedepth-nyu-kitti", device="cpu")
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = AutoModelForDepthEstimation.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        metres = model(**processor(images=list(clip), return_tensors="pt")).predicted_depth.unsqueeze(1)
    pad_h, pad_w = reflect_padding(H, W)
    metres = F.interpolate(metres, size=(H + 2 * pad_h, W + 2 * pad_w), mode="bicubic",
                           align_corners=False)[:, 0, pad_h:-pad_h, pad_w:-pad_w]
    reference = 1.0 / metres.clamp_min(1e-3)
    got = estimator.predict(frames)[:, 0]
    assert got.shape == reference.shape == (2, H, W)
    relative_error = float((got - reference).abs().max() / reference.abs().mean())
    assert relative_error < 1e-4, relative_error
    assert float(reference.std()) > 0.01 * float(reference.abs().mean())  # not a constant map
    assert estimator.loaded.metric and estimator.loaded.preprocessing.reflect_pad
    converted = StereoEngine(ConversionSettings(depth_model="zoedepth-nyu-kitti"), device="cpu").convert_batch(clip)
    assert converted.shape == (2, H, 2 * W, 3)


def test_zoedepth_catalog_entry():
    model = hub_models.CATALOG["zoedepth-nyu-kitti"]
    assert model.repo_id == "Intel/zoedepth-nyu-kitti" and model.licence == "MIT" and model.commercial_use
    assert np.isclose(model.parameters_m, 345.0)
