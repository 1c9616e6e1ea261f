"""Depth Pro by name (``depth-pro`` = apple/DepthPro-hf) through transformers' ``DepthProForDepthEstimation``.

The checkpoint is a small random-weight DepthPro (the sizes of transformers' own DepthProModelTester,
tests/models/depth_pro/test_modeling_depth_pro.py, with the field-of-view network) and the preprocessor_config.json
of ``DepthProImageProcessor``'s defaults at a smaller square (transformers, models/depth_pro/
image_processing_depth_pro.py: bilinear, ImageNet-standard mean/std 0.5, no aspect ratio kept). That processor
needs torchvision, which this project does not install, so the reference preprocessing is written here as its
``_preprocess`` does it: rescale and normalise first, then resize bilinearly with ``antialias=False``; the
reference output is transformers' own model call on it.

What the tests catch (each seen red): the DPT processor's bicubic filter used for DepthPro, the aspect ratio
kept where the processor squashes to its square, a checkpoint licence that prints no non-commercial notice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stereo_spot import hub_models
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.depth import create_depth_estimator
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.synthetic import parallax_clip
from tests.fake_hub import serving

pytest.importorskip("transformers")
SIDE = 64  # the processor's square (1536 in the published checkpoint)
W, H = 96, 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from transformers import DepthProConfig, DepthProForDepthEstimation

    folder = tmp_path_factory.mktemp("depth-pro") / "DepthPro-hf"
    torch.manual_seed(0)
    config = DepthProConfig(
        patch_size=16, fusion_hidden_size=16, intermediate_hook_ids=[1, 0], intermediate_feature_dims=[10, 8],
        scaled_images_ratios=[0.5, 1.0], scaled_images_overlap_ratios=[0.0, 0.2], scaled_images_feature_dims=[12, 12],
        image_model_config={"model_type": "dinov2", "num_hidden_layers": 2, "hidden_size": 16,
                            "num_attention_heads": 1, "patch_size": 4},
        patch_model_config={"model_type": "vit", "num_hidden_layers": 2, "hidden_size": 24,
                            "num_attention_heads": 2, "patch_size": 6},
        fov_model_config={"model_type": "vit", "num_hidden_layers": 2, "hidden_size": 32,
                          "num_attention_heads": 4, "patch_size": 8},
        use_fov_model=True)
    DepthProForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DepthProImageProcessor", "do_resize": True, "do_rescale": True,
        "do_normalize": True, "rescale_factor": 1 / 255, "resample": 2, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "size": {"height": SIDE, "width": SIDE}}))
    return folder


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
    yield from serving({"apple/DepthPro-hf": checkpoint}, tmp_path / "hf-cache", monkeypatch)


def test_depth_pro_by_name_agrees_with_transformers(hub, checkpoint):
    from transformers import AutoModelForDepthEstimation

    clip, _ = parallax_clip(W, H, 2, seed=7)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    estimator = create_depth_estimator("depth-pro", device="cpu")
    # the head's raw output is inverse depth: post_process_depth_estimation turns it into metres as 1 / (it ×
    # width / focal length), so it is used as it is, like a relative Depth Anything
    assert not estimator.loaded.metric
    model = AutoModelForDepthEstimation.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        pixels = F.interpolate((frames - 0.5) / 0.5, size=(SIDE, SIDE), mode="bilinear", align_corners=False,
                               antialias=False)
        reference = model(pixel_values=pixels).predicted_depth
    got = estimator.predict(frames)[:, 0]
    assert got.shape == reference.shape
    relative_error = float((got - reference).abs().max() / reference.abs().mean())
    assert relative_error < 1e-4, relative_error
    assert float(reference.std()) > 0.05 * float(reference.abs().mean())
    converted = StereoEngine(ConversionSettings(depth_model="depth-pro"), device="cpu").convert_batch(clip)
    assert converted.shape == (2, H, 2 * W, 3) and not np.array_equal(converted[:, :, W:], clip)


def test_depth_pro_is_listed_as_research_only():
    model = hub_models.CATALOG["depth-pro"]
    assert model.repo_id == "apple/DepthPro-hf" and model.licence == "Apple-AMLR" and not model.commercial_use
    assert "Apple-AMLR" in hub_models.licence_notice("depth-pro")
