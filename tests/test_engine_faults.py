"""Faults on the conversion path: a CUDA out-of-memory halves the batch and converts the segment again, then fails
the job naming the resolution and batch; a GPU too full to take a model's weights frees the cache and loads once
more, then fails the job naming the device, the model and the free memory; weights that cannot be loaded fail
with the folder (or file) and the reason.

The out-of-memory is the real exception type (``torch.cuda.OutOfMemoryError``): during a batch it is raised by a
forward pre-hook on a model inside a depth estimator whenever the batch it is given is larger than what "fits";
while loading, by the model class's ``from_pretrained`` (the real loading code around it runs on the CPU).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from stereo_spot import keys, steps
from stereo_spot.errors import UserError
from stereo_spot.media.frames import read_frames
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.sample import write_sample
from stereo_spot.stereo.depth import DEPTH_MODELS, DepthEstimator
from stereo_spot.stereo.devices import GpuMemoryError
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.segment import convert_segment
from stereo_spot.weights import WeightsError

W, H = 96, 64


class _LimitedDepth(DepthEstimator):
    """A depth estimator whose model "runs out of GPU memory" above ``fits`` frames per call (after its first
    ``lucky`` calls: memory that fragments as a segment goes on)."""

    def __init__(self, fits: int, lucky: int = 0) -> None:
        self.model = torch.nn.Conv2d(3, 1, 3, padding=1)
        self.batches: list[int] = []

        def out_of_memory(_module, inputs):
            self.batches.append(inputs[0].shape[0])
            if inputs[0].shape[0] > fits and len(self.batches) > lucky:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {inputs[0].shape[0]} frames")

        self.model.register_forward_pre_hook(out_of_memory)

    def reset(self) -> None:
        pass

    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(frames))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0, size=(W, H), fps=24, audio=False)


def _gpu_like_engine(depth: DepthEstimator) -> StereoEngine:
    engine = StereoEngine(ConversionSettings(), device="cpu", depth=depth)
    engine.chunk_frames = 1_000_000  # the whole batch at once, as on a GPU
    return engine


def test_out_of_memory_halves_the_batch_and_converts_the_segment_again(clip: Path, tmp_path: Path) -> None:
    depth = _LimitedDepth(fits=2, lucky=1)
    progress: list[int] = []
    stats = convert_segment(clip, tmp_path / "out.mp4", ConversionSettings(), engine=_gpu_like_engine(depth),
                            batch_size=8, progress=progress.append)
    assert stats.batch_size == 2  # 8 → 4 → 2
    assert depth.batches[:4] == [8, 8, 4, 2]  # the first batch fit, the second did not: the segment restarts
    assert stats.frames == 24 == len(list(read_frames(tmp_path / "out.mp4")))
    assert sum(progress) == 24  # frames of failed attempts are taken back


def test_out_of_memory_at_one_frame_fails_naming_resolution_and_batch(clip: Path, tmp_path: Path) -> None:
    depth = _LimitedDepth(fits=0)
    with pytest.raises(GpuMemoryError, match=rf"{W}x{H}\).*batch of 1 frame") as failure:
        convert_segment(clip, tmp_path / "out.mp4", ConversionSettings(), engine=_gpu_like_engine(depth),
                        batch_size=4)
    assert depth.batches == [4, 2, 1]
    assert "\n" not in str(failure.value)


def test_the_job_fails_with_that_reason(backend, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    DEPTH_MODELS.register("runs-out-of-memory", lambda weights=None, device=None: _LimitedDepth(fits=0))
    try:
        job = steps.create_job(backend, ConversionSettings(depth_model="runs-out-of-memory"), "clip")
        steps.store_source(backend, job.job_id, clip)
        with pytest.raises(GpuMemoryError):
            run_job(backend, job.job_id, workers=1)
    finally:
        DEPTH_MODELS.unregister("runs-out-of-memory")
    failed = backend.jobs.get(job.job_id)
    assert failed.status == JobStatus.FAILED
    assert "out of GPU memory" in failed.failure_reason and f"{W}x{H}" in failed.failure_reason
    assert "batch of 1" in failed.failure_reason and "internal error" not in failed.failure_reason
    assert backend.objects.exists(backend.input_bucket, keys.input_key(job.job_id))  # the source is kept


# --- weights that do not load ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_weights(tmp_path_factory) -> Path:
    from tests.test_neural_depth import save_tiny_depth_anything

    return save_tiny_depth_anything(tmp_path_factory.mktemp("models") / "good")


def _damaged(good: Path, tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / damage
    shutil.copytree(good, folder)
    if damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "other-architecture":
        config = json.loads((folder / "config.json").read_text())
        config["fusion_hidden_size"] = 24
        (folder / "config.json").write_text(json.dumps(config))
    elif damage == "config-not-json":
        (folder / "config.json").write_text("{not json")
    elif damage == "no-weights-file":
        (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize(("damage", "reason"), [
    ("truncated", "damaged or incomplete"),
    ("other-architecture", "do not fit the architecture"),
    ("config-not-json", "not a valid JSON"),
    ("no-weights-file", "no file named model.safetensors"),
])
def test_depth_weights_that_do_not_load_name_the_folder_and_the_reason(depth_weights: Path, tmp_path: Path,
                                                                       damage: str, reason: str,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from stereo_spot.stereo.depth import create_depth_estimator

    folder = _damaged(depth_weights, tmp_path, damage)
    with pytest.raises(WeightsError, match=reason) as failure:
        create_depth_estimator("depth-anything", str(folder), "cpu")
    message = str(failure.value)
    assert isinstance(failure.value, UserError) and str(folder) in message and "\n" not in message
    assert len(message) < 600
    assert "MISMATCH" not in capsys.readouterr().err  # no page of library warnings either


def test_a_job_with_damaged_weights_fails_with_one_line(backend, depth_weights: Path, clip: Path,
                                                        tmp_path: Path) -> None:
    folder = _damaged(depth_weights, tmp_path, "truncated")
    job = steps.create_job(backend, ConversionSettings(depth_model="depth-anything", depth_weights=str(folder)),
                           "clip")
    steps.store_source(backend, job.job_id, clip)
    with pytest.raises(WeightsError):
        run_job(backend, job.job_id, workers=1)
    reason = backend.jobs.get(job.job_id).failure_reason
    assert str(folder) in reason and "damaged or incomplete" in reason and "internal error" not in reason


def test_diffusion_weights_that_do_not_load_name_the_file_and_the_reason(tmp_path: Path,
                                                                         capfd: pytest.CaptureFixture) -> None:
    from stereo_spot.stereo.fill import create_inpainter
    from tests.test_neural_inpaint import save_tiny_stereo_inpainter

    good = save_tiny_stereo_inpainter(tmp_path / "good")
    capfd.readouterr()
    damages = {
        "truncated": (lambda f: _truncate(next((f / "unet").glob("*.safetensors"))), "damaged or incomplete"),
        "vae-config-not-json": (lambda f: (f / "vae" / "config.json").write_text("{not json"),
                                "vae/config.json is not valid JSON"),
        "no-unet-weights": (lambda f: next((f / "unet").glob("*.safetensors")).unlink(),
                            "unet has no weights file (diffusion_pytorch_model.safetensors"),
    }
    for damage, (spoil, reason) in damages.items():
        folder = tmp_path / damage
        shutil.copytree(good, folder)
        spoil(folder)
        with pytest.raises(WeightsError, match=reason.replace("(", r"\(")) as failure:
            create_inpainter("diffusion", str(folder), "cpu")
        message = str(failure.value)
        assert str(folder) in message and "\n" not in message and len(message) < 600, damage
        assert "An error occurred" not in capfd.readouterr().err, damage  # no library error on the terminal


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


# --- a GPU too full to take the weights --------------------------------------------------------------------


class _FullGpu:
    """``from_pretrained`` of a model class that raises CUDA's out-of-memory for its first ``failures`` calls
    (another process holding the GPU's memory), then loads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model_class, failures: int) -> None:
        self.calls = 0
        real = model_class.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):
            self.calls += 1
            if self.calls <= failures:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.7 "
                                                  "GiB total capacity; 15.5 GiB already allocated)")
            return real(cls, *args, **kwargs)

        monkeypatch.setattr(model_class, "from_pretrained", classmethod(from_pretrained))


@pytest.fixture
def freed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from stereo_spot.stereo import loading

    calls: list[str] = []
    real = loading._free_cached_memory
    monkeypatch.setattr(loading, "_free_cached_memory", lambda device: (calls.append(str(device)), real(device)))
    monkeypatch.setattr(loading, "memory_info", lambda device: (int(0.4 * 2**30), 16 * 2**30))
    return calls


def test_out_of_memory_while_loading_frees_the_cache_and_loads_again(depth_weights: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     freed: list[str]) -> None:
    from transformers import AutoModelForDepthEstimation

    from stereo_spot.stereo.depth import create_depth_estimator

    full = _FullGpu(monkeypatch, AutoModelForDepthEstimation, failures=1)
    folder = shutil.copytree(depth_weights, tmp_path / "weights")  # not loaded by another test of this process
    estimator = create_depth_estimator("depth-anything", str(folder), "cpu")
    assert full.calls == 2 and freed == ["cpu"]
    assert estimator.estimate(torch.rand(2, 3, H, W)).shape == (2, 1, H, W)


def test_out_of_memory_while_loading_twice_names_device_model_and_free_memory(depth_weights: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch,
                                                                              freed: list[str]) -> None:
    from transformers import AutoModelForDepthEstimation

    from stereo_spot.stereo.depth import create_depth_estimator

    full = _FullGpu(monkeypatch, AutoModelForDepthEstimation, failures=2)
    folder = shutil.copytree(depth_weights, tmp_path / "weights")
    with pytest.raises(GpuMemoryError) as failure:
        create_depth_estimator("depth-anything", str(folder), "cpu")
    message = str(failure.value)
    assert full.calls == 2 and len(freed) == 2  # one retry, after freeing the cache; freed again before failing
    assert message.startswith(f"out of GPU memory on cpu loading the depth model from {folder}")
    assert "0.4 GiB free of 16.0 GiB" in message and "GiB of weights on disk" in message
    assert "Tried to allocate 20.00 MiB" in message and "\n" not in message
    assert not isinstance(failure.value, WeightsError)  # the weights are fine: not reported as damaged


def test_the_message_for_a_model_that_does_not_fit() -> None:
    from stereo_spot.stereo.loading import load_memory_message

    message = load_memory_message("inpainting model", Path("/models/svd"), "cuda:1", (3 * 2**29, 24 * 2**30),
                                  int(4.4 * 2**30), "CUDA out of memory.\n Tried to allocate 2 GiB")
    assert message == ("out of GPU memory on cuda:1 loading the inpainting model from /models/svd (4.40 GiB of "
                       "weights on disk; 1.5 GiB free of 24.0 GiB): another process may be holding the GPU's "
                       "memory: free it, choose another GPU with --device cuda:N, or a smaller model (CUDA out "
                       "of memory. Tried to allocate 2 GiB)")
    assert "free memory unknown" in load_memory_message("depth model", Path("/m"), "cuda:0", None, 0)


def test_a_job_whose_model_does_not_fit_fails_with_that_reason(backend, clip: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               freed: list[str]) -> None:
    from diffusers import UNetSpatioTemporalConditionModel

    from tests.test_neural_inpaint import save_tiny_stereo_inpainter

    weights = save_tiny_stereo_inpainter(tmp_path / "inpaint")
    _FullGpu(monkeypatch, UNetSpatioTemporalConditionModel, failures=10)
    job = steps.create_job(backend, ConversionSettings(inpaint="diffusion", inpaint_weights=str(weights)), "clip")
    steps.store_source(backend, job.job_id, clip)
    with pytest.raises(GpuMemoryError):
        run_job(backend, job.job_id, workers=1)
    failed = backend.jobs.get(job.job_id)
    assert failed.status == JobStatus.FAILED
    reason = failed.failure_reason
    assert reason.startswith(f"out of GPU memory on cpu loading the inpainting model from {weights}")
    assert "GiB free" in reason and "internal error" not in reason
    assert backend.objects.exists(backend.input_bucket, keys.input_key(job.job_id))  # the source is kept
