"""The number format of the neural models: one decision (``devices.inference_dtype``) for both neural paths, the
job's ``--precision`` travelling with its settings, and the tiny models running in bf16 on the CPU with outputs
close to fp32's.

What each test catches: a device/model/request combination that gets the wrong dtype (fp16 on the CPU, fp16 for
a VAE that overflows, bf16 on a GPU that only emulates it), a model path that ignores the decision (its own
hard-coded dtype), a request that does not reach the models, and bf16 arithmetic that breaks a model's output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot import steps
from stereo_spot.models import ConversionSettings, JobStatus, Precision
from stereo_spot.stereo import devices
from stereo_spot.stereo.devices import dtype_for, inference_dtype

fp32, fp16, bf16 = torch.float32, torch.float16, torch.bfloat16


def test_the_decision_per_device_model_and_request() -> None:
    expected = {
        # requested: (CPU, CUDA, CUDA for a model that overflows in fp16, CUDA without bf16, that model there)
        "auto": (fp32, fp16, bf16, fp16, fp32),
        "fp32": (fp32, fp32, fp32, fp32, fp32),
        "fp16": (fp32, fp16, bf16, fp16, fp32),
        "bf16": (bf16, bf16, bf16, fp32, fp32),
    }
    for requested, (cpu, cuda, overflowing, old_gpu, old_gpu_overflowing) in expected.items():
        got = (inference_dtype("cpu", requested), inference_dtype("cuda", requested),
               inference_dtype("cuda", requested, overflows_in_fp16=True),
               inference_dtype("cuda", requested, bf16=False),
               inference_dtype("cuda", requested, bf16=False, overflows_in_fp16=True))
        assert got == (cpu, cuda, overflowing, old_gpu, old_gpu_overflowing), requested
    assert inference_dtype("cpu", "auto", overflows_in_fp16=True) == fp32
    assert inference_dtype("cuda", Precision.BF16) == bf16  # the settings' enum is the same request
    with pytest.raises(ValueError, match="fp8"):
        inference_dtype("cuda", "fp8")


def test_the_machine_facts_feed_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dtype_for("cpu") == fp32 and dtype_for("cpu", "bf16") == bf16 and devices.bf16_supported("cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    assert not devices.bf16_supported("cuda:0") and dtype_for("cuda:0", "bf16") == fp32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # an H100
    assert devices.bf16_supported("cuda:0") and dtype_for("cuda:0", overflows_in_fp16=True) == bf16


# --- the tiny models in bf16 on the CPU --------------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_weights(tmp_path_factory) -> Path:
    from tests.test_neural_depth import save_tiny_depth_anything

    return save_tiny_depth_anything(tmp_path_factory.mktemp("models") / "depth")


@pytest.fixture(scope="module")
def inpaint_weights(tmp_path_factory) -> Path:
    import json

    from stereo_spot.stereo import inpaint_diffusion
    from tests.test_neural_inpaint import save_tiny_stereo_inpainter

    folder = save_tiny_stereo_inpainter(tmp_path_factory.mktemp("models") / "inpaint")
    (folder / inpaint_diffusion.OPTIONS_FILE).write_text(json.dumps({"steps": 2, "frames_per_chunk": 4,
                                                                      "overlap": 1}))
    return folder


W, H = 64, 48


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    from stereo_spot.stereo.synthetic import parallax_clip

    frames, _ = parallax_clip(W, H, 5, seed=4)
    return frames


def test_depth_anything_runs_in_bf16_on_the_cpu_close_to_fp32(depth_weights: Path, clip: np.ndarray) -> None:
    from stereo_spot.stereo.depth import create_depth_estimator

    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    full = create_depth_estimator("depth-anything", str(depth_weights), "cpu")
    half = create_depth_estimator("depth-anything", str(depth_weights), "cpu", precision="bf16")
    assert full.loaded.dtype == fp32 and half.loaded.dtype == bf16
    assert {p.dtype for p in half.loaded.model.parameters()} == {bf16}  # the weights themselves, not a cast
    assert full.loaded.model is not half.loaded.model
    raw_full, raw_half = full.predict(frames), half.predict(frames)
    assert raw_half.dtype == fp32  # handed back in fp32, whatever the model computed in
    assert not torch.equal(raw_full, raw_half)  # bf16 arithmetic did run
    scale = float(raw_full.abs().max())
    assert float((raw_full - raw_half).abs().max()) < 0.05 * scale
    correlation = torch.corrcoef(torch.stack([raw_full.flatten(), raw_half.flatten()]))[0, 1]
    assert float(correlation) > 0.99
    depth_full, depth_half = full.estimate(frames), half.estimate(frames)
    assert float((depth_full - depth_half).abs().mean()) < 0.02  # the normalised depth the engine uses


def _warped(clip: np.ndarray):
    from stereo_spot.stereo.warp import forward_warp

    left = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    disparity = torch.zeros((len(clip), 1, H, W))
    disparity[..., 12:36, 20:44] = 6.0
    right, holes, warped_disparity = forward_warp(left, disparity)
    return left, right.clone(), holes.clone(), warped_disparity.clone()


def test_the_diffusion_inpainter_runs_in_bf16_on_the_cpu_close_to_fp32(inpaint_weights: Path,
                                                                        clip: np.ndarray) -> None:
    from stereo_spot.stereo.fill import create_inpainter

    full = create_inpainter("diffusion", str(inpaint_weights), "cpu")
    half = create_inpainter("diffusion", str(inpaint_weights), "cpu", precision="bf16")
    assert (full.models.dtype, full.models.vae_dtype) == (fp32, fp32)
    assert (half.models.dtype, half.models.vae_dtype) == (bf16, bf16)
    for module in (half.models.unet, half.models.vae, half.models.image_encoder):
        assert {p.dtype for p in module.parameters()} == {bf16}
    left, right, holes, warped_disparity = _warped(clip)
    out_full = full.inpaint(right.clone(), holes, warped_disparity, left)
    out_half = half.inpaint(right.clone(), holes, warped_disparity, left)
    assert out_half.dtype == fp32 and torch.isfinite(out_half).all()
    inside = holes.expand_as(out_full)
    difference = (out_full - out_half)[inside].abs()
    assert float(difference.mean()) < 0.03 and float(difference.max()) > 0  # close, and really computed in bf16
    assert float(out_half[inside].mean()) > 0.02  # the holes were filled


# --- the request travels with the job ----------------------------------------------------------------------


def test_precision_travels_with_the_job_to_the_models(backend, depth_weights: Path, tmp_path: Path) -> None:
    from stereo_spot.runner import run_job
    from stereo_spot.sample import write_sample
    from stereo_spot.stereo.depth import depth_anything

    source = write_sample(tmp_path / "clip.mp4", seconds=0.5, size=(W, H), fps=12, audio=False)
    weights = shutil.copytree(depth_weights, tmp_path / "weights")  # a folder no other test has loaded
    settings = ConversionSettings(depth_model="depth-anything", depth_weights=str(weights),
                                  precision=Precision.BF16)
    job = steps.create_job(backend, settings, "clip")
    assert backend.jobs.get(job.job_id).settings.precision is Precision.BF16  # stored with the job
    steps.store_source(backend, job.job_id, source)
    before = set(depth_anything._MODELS)
    run_job(backend, job.job_id, workers=1)
    assert backend.jobs.get(job.job_id).status == JobStatus.COMPLETED
    loaded = set(depth_anything._MODELS) - before
    assert [(key[0], key[2]) for key in loaded] == [(str(weights), bf16)]


def test_the_cli_takes_the_choice_and_refuses_an_unknown_one(home, tmp_path: Path) -> None:
    from stereo_spot.choices import InvalidChoice, conversion_settings
    from stereo_spot.cli.main import app

    assert conversion_settings(precision="fp16").precision is Precision.FP16
    with pytest.raises(InvalidChoice, match="--precision"):
        conversion_settings(precision="fp8")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "missing.mp4"), "--precision", "fp8"])
    assert result.exit_code != 0 and "fp8" in result.output and "Traceback" not in result.output


def test_a_model_whose_factory_takes_no_precision_is_still_created() -> None:
    from stereo_spot.stereo.depth import DEPTH_MODELS, create_depth_estimator
    from stereo_spot.stereo.depth.heuristic import HeuristicDepth

    asked: list[str] = []
    DEPTH_MODELS.register("plain", lambda weights=None, device=None: HeuristicDepth(device=device))
    DEPTH_MODELS.register("precise", lambda weights=None, device=None, precision="auto": (
        asked.append(precision), HeuristicDepth(device=device))[1])
    try:
        assert isinstance(create_depth_estimator("plain", None, "cpu", precision="bf16"), HeuristicDepth)
        create_depth_estimator("precise", None, "cpu", precision=Precision.BF16)
        assert asked == ["bf16"]
    finally:
        DEPTH_MODELS.unregister("plain")
        DEPTH_MODELS.unregister("precise")
