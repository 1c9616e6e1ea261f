"""Distill-Any-Depth by name: its Transformers checkpoints load through the Depth Anything loader as published.

The checkpoint here is what transformers' ``convert_distill_any_depth_to_hf.py`` writes for
``xingyang1/Distill-Any-Depth-Small-hf`` (huggingface/transformers, src/transformers/models/depth_anything/
convert_distill_any_depth_to_hf.py, ``get_dpt_config("distill-any-depth-small")`` and the ``DPTImageProcessor``
it saves): DINOv2-small (384 wide, 12 blocks, 6 heads, patch 14, 518 grid) read at blocks 3, 6, 9 and 12, a
DPT neck of 48/96/192/384 channels fused at 64, relative depth; random weights. It is served by a fake hub on
127.0.0.1 under the published repository name.

What the tests catch: a catalog entry that names the wrong repository or engine model (the name does not load),
and a loader whose prediction differs from transformers' own model call on the image processor's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stereo_spot import hub_models
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.depth import create_depth_estimator
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.synthetic import parallax_clip
from tests.fake_hub import serving
from tests.test_neural_depth import IMAGENET_MEAN, IMAGENET_STD

pytest.importorskip("transformers")
SMALL = hub_models.CATALOG["distill-any-depth-small"]
W, H = 48, 32


def save_distill_any_depth_small(folder: Path) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    # facebook/dinov2-small's config, with the converter's out_indices, apply_layernorm and reshape_hidden_states
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                            image_size=518, patch_size=14, layerscale_value=1.0, out_indices=[3, 6, 9, 12],
                            apply_layernorm=True, reshape_hidden_states=False)
    # the converter passes max_depth=None, which the DepthAnythingConfig of its day stored as 1 (a relative
    # head's scale); transformers 5 keeps None, so the default 1 stands in for what the published config holds
    config = DepthAnythingConfig(reassemble_hidden_size=384, patch_size=14, backbone_config=backbone,
                                 fusion_hidden_size=64, neck_hidden_sizes=[48, 96, 192, 384],
                                 depth_estimation_type="relative")
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # random weights at this depth give an almost flat map: scale the last layer up
        model.head.conv3.weight.mul_(4000.0)
        model.head.conv3.bias.fill_(1.0)
    model.save_pretrained(folder)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, ensure_multiple_of=14,
                      keep_aspect_ratio=True, do_rescale=True, do_normalize=True, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_distill_any_depth_small(tmp_path_factory.mktemp("distill") / "small-hf")


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
    yield from serving({"xingyang1/Distill-Any-Depth-Small-hf": checkpoint}, tmp_path / "hf-cache", monkeypatch)


def test_the_catalog_entries_say_what_the_authors_publish():
    large = hub_models.CATALOG["distill-any-depth-large"]
    assert (SMALL.repo_id, large.repo_id) == ("xingyang1/Distill-Any-Depth-Small-hf",
                                               "xingyang1/Distill-Any-Depth-Large-hf")
    assert (SMALL.parameters_m, large.parameters_m) == (24.8, 335.3)
    assert SMALL.engine_model == large.engine_model == "depth-anything" and not SMALL.video_consistent
    assert "CC-BY-NC-4.0" in large.summary  # initialised from Depth Anything V2 Large (iw3's README)


@pytest.mark.slow
def test_the_published_layout_loads_by_name_and_agrees_with_transformers(hub, checkpoint):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    clip, _ = parallax_clip(W, H, 2, seed=6)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    estimator = create_depth_estimator("distill-any-depth-small", device="cpu")
    assert hub.downloads() > 0 and not estimator.loaded.metric
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = AutoModelForDepthEstimation.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        reference = model(**processor(images=list(clip), return_tensors="pt")).predicted_depth
    got = estimator.predict(frames)[:, 0]
    assert got.shape == reference.shape
    # the tolerance of tests/test_neural_depth.py: PIL's and torch's bicubic kernels differ when upscaling
    relative_error = float((got - reference).abs().mean() / reference.abs().mean())
    assert relative_error < 0.05, relative_error
    assert float(reference.std()) > 0.05 * float(reference.abs().mean())
    converted = StereoEngine(ConversionSettings(depth_model="distill-any-depth-small"), device="cpu"
                             ).convert_batch(clip)
    assert converted.shape == (2, H, 2 * W, 3)
    assert not np.array_equal(converted[:, :, W:], clip)  # the depth moved the right view
