"""Depth Anything (V2) through ``transformers``: ``--depth-model depth-anything --depth-weights PATH|s3://…``.

The same loader reads every ``transformers`` depth checkpoint the catalog names (``stereo_spot.hub_models``):
Distill-Any-Depth (Depth Anything's classes), Depth Pro and ZoeDepth (their own classes, through
``AutoModelForDepthEstimation``), each with its own image processor's resizing (``Preprocessing``).

The weights are a folder as ``save_pretrained`` writes it — what the Hugging Face repositories
``depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf`` hold::

    config.json                 DepthAnythingConfig (model_type "depth_anything", a Dinov2 backbone_config)
    model.safetensors           the weights
    preprocessor_config.json    the image processor (DPTImageProcessor: size, keep_aspect_ratio,
                                ensure_multiple_of, image_mean, image_std)

The model is loaded once per process and device (``load_model``), not once per segment: a worker that converts
several segments keeps it. On CUDA it runs in fp16 on batches of frames; on the CPU in fp32
(``--precision`` chooses otherwise: ``stereo.devices.inference_dtype``).

The image processor's resizing is reproduced on the tensors (no PIL round trip per frame): the frame is scaled
to the processor's size keeping its aspect ratio, each side a multiple of ``ensure_multiple_of`` (14, the ViT
patch), bicubic, then normalised. The model predicts relative inverse depth ("disparity", larger = nearer)
for a relative checkpoint, metric depth for a metric one (inverted here); the output is upsampled to the frame.

Video consistency (``TemporalRange`` with alignment): each frame's prediction is fitted to the previous one's
by robust least squares (scale and shift), the ranges of the last ``memory`` frames are pooled in the current
frame's units, and the prediction is normalised with that range. Batches are consecutive windows of frames;
the fit across the last frame of one window and the first of the next aligns the windows, so depth does not
jump at batch boundaries (nor at segment boundaries after the warm-up). The normalised depth is then steadied
per pixel over the last frames where the picture did not change (``steady.SteadyDepth``, the same filter the
heuristic depth uses), and a scene cut (``cuts.SceneCuts``, the same rule) starts all of it afresh.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stereo_spot.stereo.depth import steady
from stereo_spot.stereo.depth.base import DepthEstimator, ShotEstimator
from stereo_spot.stereo.depth.cuts import SceneCuts
from stereo_spot.stereo.depth.temporal import TemporalRange
from stereo_spot.stereo.devices import dtype_for
from stereo_spot.stereo.guided import luma
from stereo_spot.stereo.loading import load_on_device, loading_error, quiet_loading
from stereo_spot.stereo.resample import resize
from stereo_spot.weights import WeightsError, fetch_weights

#: Predictions are fitted and ranged at about this long side (plenty for a scale and a shift).
_FIT_LONG_SIDE = 64


@dataclass(frozen=True)
class Preprocessing:
    """What the checkpoint's image processor does, applied to tensors."""

    height: int = 518
    width: int = 518
    keep_aspect_ratio: bool = True
    multiple: int = 14
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    normalize: bool = True
    #: the processor's filter: DPT's (Depth Anything, Distill-Any-Depth) is bicubic, DepthPro's and ZoeDepth's
    #: bilinear
    resample: str = "bicubic"
    #: ZoeDepth's processor: the frame is padded by reflection before it is resized (``reflect_padding``) and
    #: resized with ``align_corners=True``; its post-processing crops the padding off the prediction again
    #: (transformers, models/zoedepth/image_processing_pil_zoedepth.py: ``pad_image``, ``resize``,
    #: ``post_process_depth_estimation``)
    reflect_pad: bool = False
    align_corners: bool = False

    def antialias(self, height: int, input_height: int) -> bool:
        """DPT's processor resizes with PIL, which filters when it shrinks; DepthPro's resizes with torch and
        ``antialias=False`` (transformers, models/depth_pro/image_processing_depth_pro.py, ``_preprocess``)."""
        return self.resample == "bicubic" and input_height < height

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The model input size for a frame (DPT's ``get_resize_output_image_size``)."""
        scale_h, scale_w = self.height / height, self.width / width
        if self.keep_aspect_ratio:
            if abs(1 - scale_w) < abs(1 - scale_h):
                scale_h = scale_w
            else:
                scale_w = scale_h
        return _multiple(scale_h * height, self.multiple), _multiple(scale_w * width, self.multiple)


def reflect_padding(height: int, width: int) -> tuple[int, int]:
    """ZoeDepth's padding of a frame: int(3·√(side / 2)) rows and columns on each side (its ``pad_image``)."""
    return int(math.sqrt(height / 2) * 3), int(math.sqrt(width / 2) * 3)


def _multiple(value: float, multiple: int) -> int:
    rounded = round(value / multiple) * multiple
    return max(multiple, int(rounded if rounded > 0 else math.ceil(value / multiple) * multiple))


def preprocessing_from(folder: Path) -> Preprocessing:
    """Read the checkpoint's image processor (through ``transformers``, falling back to its JSON)."""
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder)
        settings = {name: getattr(processor, name, None) for name in (
            "size", "keep_aspect_ratio", "ensure_multiple_of", "image_mean", "image_std", "do_normalize",
            "resample", "do_pad")}
        settings["image_processor_type"] = type(processor).__name__
    except (OSError, ValueError, ImportError):
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return Preprocessing()
        settings = json.loads(path.read_text())
    size = settings.get("size") or {}
    if not isinstance(size, dict):  # transformers' SizeDict, or a bare number
        size = ({name: getattr(size, name, None) for name in ("height", "width", "shortest_edge")}
                if hasattr(size, "height") else {"height": size, "width": size})
    height = int(size.get("height") or size.get("shortest_edge") or 518)
    width = int(size.get("width") or size.get("shortest_edge") or height)
    defaults = Preprocessing()
    zoe = str(settings.get("image_processor_type") or "").startswith("ZoeDepth")
    return Preprocessing(
        height=height, width=width,
        # absent: the processor classes' own default (DPT's False; DepthPro's has no such option)
        keep_aspect_ratio=bool(settings.get("keep_aspect_ratio", False)),
        multiple=max(1, int(settings.get("ensure_multiple_of") or 1)),
        mean=tuple(float(v) for v in (settings.get("image_mean") or defaults.mean)),
        std=tuple(float(v) for v in (settings.get("image_std") or defaults.std)),
        normalize=settings.get("do_normalize") is not False,
        resample=_resample_mode(settings.get("resample")),
        reflect_pad=zoe and settings.get("do_pad") is not False,
        align_corners=zoe,
    )


def _resample_mode(value) -> str:
    """A processor's ``resample`` (PIL's code 2 or 3, a PILImageResampling, or torchvision's InterpolationMode)
    as torch's interpolation mode; bicubic, DPT's, where it says nothing."""
    name = str(getattr(value, "value", value)).lower()
    return "bilinear" if name in ("2", "bilinear") or name.endswith(".bilinear") else "bicubic"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocessing: Preprocessing
    dtype: torch.dtype
    metric: bool  # predicts metric depth (farther = larger) instead of relative inverse depth
    folder: Path


_MODELS: dict[tuple[str, str, torch.dtype], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def load_model(weights: str, device: torch.device, precision: str = "auto") -> LoadedModel:
    """The model for ``weights`` on ``device`` in the number format ``devices.dtype_for`` chooses (fp16 on CUDA,
    fp32 on the CPU unless ``precision`` asks otherwise), loaded on first use and kept for the life of the
    process."""
    folder = fetch_weights(weights, "depth model")
    dtype = dtype_for(device, precision)
    key = (str(folder), str(device), dtype)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            loaded = load_on_device("depth model", folder, device, lambda: _load(folder, device, dtype))
            _MODELS[key] = loaded
        return loaded


def loaded_models() -> int:
    """How many models this process holds (for tests and diagnostics)."""
    return len(_MODELS)


def _load(folder: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder} has no config.json: the depth weights must be a folder saved by "
                           f"save_pretrained (config.json, model.safetensors, preprocessor_config.json)")
    try:
        from transformers import AutoModelForDepthEstimation
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with quiet_loading():
            model = AutoModelForDepthEstimation.from_pretrained(folder, dtype=dtype)
    except torch.cuda.OutOfMemoryError:
        raise  # the GPU is full, the weights are fine: load_on_device says so
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line naming the folder
        raise loading_error("depth model", folder, exc) from exc
    model.to(device).eval()
    # ZoeDepth predicts metres and has no depth_estimation_type; DepthPro's raw output is inverse depth
    metric = (getattr(model.config, "depth_estimation_type", "relative") == "metric"
              or model.config.model_type == "zoedepth")
    return LoadedModel(model=model, preprocessing=preprocessing_from(folder), dtype=dtype, metric=metric,
                       folder=folder)


class DepthAnythingDepth(ShotEstimator):
    name = "depth-anything"

    def __init__(self, weights: str | None, device: str | torch.device | None = None, *,
                 batch_size: int | None = None, memory: int = 16, min_span: float = 0.05,
                 precision: str = "auto", steady_frames: int = steady.FRAMES) -> None:
        if not weights:
            raise WeightsError("--depth-model depth-anything needs --depth-weights: a folder or an s3:// prefix "
                               "holding a Depth Anything V2 checkpoint (config.json, model.safetensors, "
                               "preprocessor_config.json)")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.loaded = load_model(weights, self.device, precision)
        self.batch_size = batch_size or (16 if self.device.type == "cuda" else 4)
        #: smallest normalising span, as a share of the range's upper end (a flat scene stays flat)
        self.min_span = min_span
        self._range = TemporalRange(memory, align=True)
        self._steady = steady.SteadyDepth(steady_frames)
        self._cuts = SceneCuts()
        #: the pooled range needs the last ``memory`` frames, the steadying filter the normalised depth of the
        #: frames before (each with its own ``memory`` frames of history)
        self.memory_frames = memory + self._steady.memory_frames
        p = self.loaded.preprocessing
        self._mean = torch.tensor(p.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(p.std, device=self.device).view(1, 3, 1, 1)

    def _start_shot(self) -> None:
        self._range.reset()
        self._steady.reset()

    @torch.inference_mode()
    def predict(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw relative inverse depth [N,1,h,w] (model resolution, float32) for frames [N,3,H,W] 0..1."""
        n, _, h, w = frames.shape
        p = self.loaded.preprocessing
        pad_h, pad_w = reflect_padding(h, w) if p.reflect_pad else (0, 0)
        size = p.size_for(h + 2 * pad_h, w + 2 * pad_w)
        outputs = []
        for start in range(0, n, self.batch_size):
            batch = frames[start:start + self.batch_size].to(self.device, torch.float32)
            if pad_h or pad_w:
                batch = F.pad(batch, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
            batch = F.interpolate(batch, size=size, mode=p.resample, align_corners=p.align_corners,
                                  antialias=p.antialias(h, size[0])).clamp_(0.0, 1.0)
            if p.normalize:
                batch = (batch - self._mean) / self._std
            predicted = self.loaded.model(pixel_values=batch.to(self.loaded.dtype)).predicted_depth
            predicted = predicted.float().unsqueeze(1) if predicted.dim() == 3 else predicted.float()
            if pad_h or pad_w:  # back to the padded frame's size, the padding cropped off
                predicted = F.interpolate(predicted, size=(h + 2 * pad_h, w + 2 * pad_w), mode="bicubic",
                                          align_corners=False)[:, :, pad_h : pad_h + h, pad_w : pad_w + w]
            if self.loaded.metric:
                predicted = 1.0 / predicted.clamp_min(1e-3)
            outputs.append(predicted)
        return torch.cat(outputs)

    @torch.inference_mode()
    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"depth estimation wants frames [N,3,H,W], got {tuple(frames.shape)}")
        raw = self.predict(frames)
        _, _, h, w = raw.shape
        scale = min(1.0, _FIT_LONG_SIDE / max(h, w))
        small = F.interpolate(raw, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
        gray = resize(luma(frames.to(raw.device, torch.float32)), (h, w), area=h < frames.shape[-2])
        normalised = torch.empty_like(raw)
        for i in range(raw.shape[0]):
            if self._cuts.update(gray[i]):
                self._start_shot()
            lo, hi = self._range.update(small[i, 0])
            span = max(hi - lo, self.min_span * max(abs(hi), abs(lo), 1e-6))
            normalised[i : i + 1] = self._steady(((raw[i : i + 1] - lo) / span).clamp_(0.0, 1.0), gray[i : i + 1])
        out = F.interpolate(normalised, size=frames.shape[-2:], mode="bilinear", align_corners=False)
        return out.clamp_(0.0, 1.0).to(frames.dtype)


def _factory(weights: str | None = None, device: str | torch.device | None = None) -> DepthEstimator:
    return DepthAnythingDepth(weights, device)
