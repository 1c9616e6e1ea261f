"""Video-Depth-Anything: ``--depth-model video-depth-anything --depth-weights FOLDER|s3://…``, or by name
(``video-depth-anything-small``, ``-base``, ``-large``, ``metric-video-depth-anything-*``: ``hub_models``).

The weights are a folder holding one official checkpoint file as the authors' Hugging Face repositories hold it
(``depth-anything/Video-Depth-Anything-{Small,Base,Large}``: ``video_depth_anything_{vits,vitb,vitl}.pth``;
the metric ones ``metric_video_depth_anything_*.pth``): a plain state dict for the authors' module, loaded into the
project's own network (``vda_net.VideoDepthNet``) with every key matched. The configuration (encoder, head widths,
temporal window) is read from the tensors' shapes; ``metric_`` in the file name marks a metric checkpoint, whose
depth (metres) is inverted like Depth Anything's metric one. An optional ``stereo_spot_depth.json`` beside it,
``{"input_size": N}``, sets the short side the frames are resized to (default 518, the authors').

In a conversion the model streams (``vda_inference``: one frame at a time against the cached temporal features of
the frames before, the latest ``WINDOW - 1``), so batches of any size continue one another and a segment that
first runs ``memory_frames`` frames of the previous one starts where a single run would be. Its depth is made 0..1
by the pooled range of the last ``memory`` frames (``temporal.TemporalRange`` with alignment, as Depth Anything's);
no steadying filter: the model is consistent over time by training. A scene cut (``cuts.SceneCuts``) starts the
stream and the range afresh. ``predict_clip`` runs the published windowed inference on a whole clip.

What the tests catch (tests/test_video_depth_anything.py against the independent reference in
tests/vda_reference.py; each breakage was planted and turned a test red):

* temporal attention disabled (a motion module returning its input) — the windowed and streamed depth no longer
  agree with the reference;
* window overlap dropped (the keyframe inputs not fed into the next window) — the second window disagrees;
* alignment skipped (scale 1, shift 0 between windows) — the second window disagrees;
* a checkpoint key renamed or a shape changed — strict loading and the key-set test fail;
* streaming: the cached context not passed (each frame alone), the authors' choice of cached frames replaced by
  the latest ones, the position table indexed from its end;
* ``memory_frames`` shorter than the stream's reach — a warm-up of that length no longer reproduces a continuous
  run (the unit test; on the slow pan of the 1-s segment test it still gave 59.7 dB);
* the engine's stream keeping the first frame for ever — the 1-s segments differ from one run (38.5 dB);
* a scene cut inside a batch not restarting the stream or the range.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from stereo_spot.stereo.depth.base import ShotEstimator
from stereo_spot.stereo.depth.cuts import SceneCuts
from stereo_spot.stereo.depth.temporal import TemporalRange
from stereo_spot.stereo.depth.vda_inference import (
    StreamState,
    infer_stream,
    infer_windows,
    input_size_for,
    memory_frames,
    preprocess,
)
from stereo_spot.stereo.depth.vda_net import VideoDepthNet, config_for_state_dict
from stereo_spot.stereo.devices import dtype_for
from stereo_spot.stereo.guided import luma
from stereo_spot.stereo.loading import load_on_device, loading_error
from stereo_spot.weights import WeightsError, fetch_weights

#: The authors' input size (the short side, before the 16:9 rule).
INPUT_SIZE = 518
#: Optional, beside the checkpoint: {"input_size": N} (a smaller input for speed, as the authors' --input_size).
OPTIONS_FILE = "stereo_spot_depth.json"
#: Predictions are ranged at about this long side (as Depth Anything's).
_FIT_LONG_SIDE = 64
CHECKPOINT_GLOB = "*video_depth_anything_*.pth"


@dataclass
class LoadedVda:
    net: VideoDepthNet
    dtype: torch.dtype
    metric: bool
    path: Path
    input_size: int = INPUT_SIZE


_MODELS: dict[tuple[str, str, torch.dtype], LoadedVda] = {}
_LOCK = threading.Lock()


def checkpoint_in(folder: Path) -> Path:
    found = sorted(folder.glob(CHECKPOINT_GLOB))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise WeightsError(f"{folder} must hold one Video-Depth-Anything checkpoint "
                           f"(video_depth_anything_vits|vitb|vitl.pth or metric_…): found {what}")
    return found[0]


def load_vda(weights: str, device: torch.device, precision: str = "auto") -> LoadedVda:
    """The network for ``weights`` on ``device``, loaded once per process, device and number format."""
    folder = fetch_weights(weights, "depth model")
    path = checkpoint_in(folder)
    dtype = dtype_for(device, precision)
    key = (str(path), str(device), dtype)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_on_device("depth model", folder, device, lambda: _load(path, device, dtype))
        return _MODELS[key]


def _load(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedVda:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = VideoDepthNet(config_for_state_dict(state))
        net.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line naming the folder
        raise loading_error("depth model", path.parent, exc) from exc
    input_size = _input_size_option(path.parent)
    net.to(device=device, dtype=dtype).eval()
    # the last convolutions stay in fp32 as the authors run them (autocast off there): a depth head's final
    # values are where half precision's range and steps show
    net.head.scratch.output_conv2.float()
    return LoadedVda(net=net, dtype=dtype, metric=path.name.startswith("metric_"), path=path,
                     input_size=input_size)


def _input_size_option(folder: Path) -> int:
    path = folder / OPTIONS_FILE
    if not path.is_file():
        return INPUT_SIZE
    try:
        value = json.loads(path.read_text()).get("input_size", INPUT_SIZE)
    except (ValueError, AttributeError) as exc:
        raise WeightsError(f"{path} is not a JSON object ({exc})") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 14 <= value <= 4096:
        raise WeightsError(f"{path}: input_size must be a whole number of pixels from 14 to 4096, not {value!r}")
    return value


def _as_inverse_depth(depth: torch.Tensor, metric: bool) -> torch.Tensor:
    return 1.0 / depth.clamp_min(1e-3) if metric else depth


class VideoDepthAnythingDepth(ShotEstimator):
    name = "video-depth-anything"

    def __init__(self, weights: str | None, device: str | torch.device | None = None, *, memory: int = 16,
                 min_span: float = 0.05, precision: str = "auto", input_size: int | None = None) -> None:
        if not weights:
            raise WeightsError("--depth-model video-depth-anything needs --depth-weights: a folder or an s3:// "
                               "prefix holding video_depth_anything_vits|vitb|vitl.pth, or use a name such as "
                               "--depth-model video-depth-anything-small")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.loaded = load_vda(weights, self.device, precision)
        self.input_size = input_size or self.loaded.input_size
        self.min_span = min_span
        self.window = self.loaded.net.config.num_frames
        self._stream = StreamState(keep_first=False, window=self.window)
        self._range = TemporalRange(memory, align=True)
        self._cuts = SceneCuts()
        #: the stream's reach back, then the pooled range's frames (each with its own reach)
        self.memory_frames = memory_frames(self.window) + memory

    def _start_shot(self) -> None:
        self._stream = StreamState(keep_first=False, window=self.window)
        self._range.reset()

    def _size(self, frames: torch.Tensor) -> tuple[int, int]:
        return input_size_for(frames.shape[-2], frames.shape[-1], self.input_size)

    @torch.inference_mode()
    def predict_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """The published windowed inference on a whole clip [N,3,H,W] 0..1: inverse depth [N,H,W], in the first
        window's units."""
        inputs = preprocess(frames.to(self.device), self._size(frames))
        depth = infer_windows(self.loaded.net, inputs, tuple(frames.shape[-2:]), metric=self.loaded.metric)
        return _as_inverse_depth(depth, self.loaded.metric)

    @torch.inference_mode()
    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"depth estimation wants frames [N,3,H,W], got {tuple(frames.shape)}")
        size = self._size(frames)
        inputs = preprocess(frames.to(self.device), size)
        gray = luma(frames.to(self.device, torch.float32))
        count = frames.shape[0]
        cuts = [self._cuts.update(gray[i]) for i in range(count)]  # in order: each compares with the one before
        # a scene cut splits the batch: the frames from it on stream from a fresh state
        edges = sorted({0, count, *(i for i in range(count) if cuts[i])})
        raws = []
        for first, end in zip(edges[:-1], edges[1:], strict=True):
            if cuts[first]:
                self._stream = StreamState(keep_first=False, window=self.window)
            raws.append(infer_stream(self.loaded.net, inputs[first:end], self._stream, size))
        raw = _as_inverse_depth(torch.cat(raws), self.loaded.metric).unsqueeze(1)
        h, w = raw.shape[-2:]
        scale = min(1.0, _FIT_LONG_SIDE / max(h, w))
        small = F.interpolate(raw, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
        out = []
        for i in range(count):
            if cuts[i]:
                self._range.reset()
            lo, hi = self._range.update(small[i, 0])
            span = max(hi - lo, self.min_span * max(abs(hi), abs(lo), 1e-6))
            out.append(((raw[i:i + 1] - lo) / span).clamp_(0.0, 1.0))
        depth = F.interpolate(torch.cat(out), size=frames.shape[-2:], mode="bilinear", align_corners=False)
        return depth.clamp_(0.0, 1.0).to(frames.dtype)
