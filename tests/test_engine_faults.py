"""Faults on the conversion path: a CUDA out-of-memory halves the batch and converts the segment again, then fails
the job naming the resolution and batch; weights that cannot be loaded fail with the folder and the reason.

The out-of-memory is the real exception type (``torch.cuda.OutOfMemoryError``), raised by a forward pre-hook on
a model inside a depth estimator whenever the batch it is given is larger than what "fits".
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
