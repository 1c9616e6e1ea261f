"""Video-Depth-Anything inference: the published windows, and the streaming mode.

**Windows** (the authors' ``infer_video_depth``): the clip is cut into windows of ``WINDOW`` = 32 frames that
start every ``WINDOW - OVERLAP`` = 22 frames (the last frame repeated to fill the last window). From the second
window on, its first ``OVERLAP`` = 10 inputs are replaced by the previous window's inputs at ``KEYFRAMES``: slot 0
carries the clip's first frame through every window (a fixed reference), slot 1 the previous window's 12th frame,
slots 2–9 the frames the two windows share. Each window's depth is brought into the first window's units by a
least-squares scale and shift fitted on the two reference slots (``window_scale_shift``; metric checkpoints are
not rescaled), negative values clipped, and the ``INTERP_LEN`` = 8 shared frames are cross-faded linearly from
the previous window's depth to the new one's.

**Streaming** (the authors' ``infer_video_depth_one``): one frame at a time against the cached inputs of the
temporal attentions of ``WINDOW - 1`` earlier frames; the first frame's cache stands in for the frames before it.
``StreamState(keep_first=True)`` keeps the authors' choice of cached frames (the shot's first frame for ever, one
frame about 41 back, the 29 latest); ``keep_first=False`` (the engine's) keeps the latest ``WINDOW - 1``, so that
what a frame's depth depends on ends ``memory_frames(window)`` frames back and a segment that first runs that
many frames of the previous one continues exactly as a single run would.

The frames are resized as the authors' ``Resize(lower_bound, ensure_multiple_of=14)`` with cubic interpolation
(OpenCV's INTER_CUBIC is the a = -0.75 kernel torch's bicubic uses) and normalised with ImageNet's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stereo_spot.stereo.depth.vda_net import VideoDepthNet

WINDOW = 32
OVERLAP = 10
KEYFRAMES = (0, 12, 24, 25, 26, 27, 28, 29, 30, 31)
INTERP_LEN = 8
#: the reference slots the windows are aligned on: the first ``OVERLAP - INTERP_LEN`` keyframes
ALIGN_SLOTS = KEYFRAMES[:OVERLAP - INTERP_LEN]
#: the authors' streaming keeps one cached frame this far back besides the first and the latest
STREAM_GAP = (WINDOW - OVERLAP) * 2 - 1 - (OVERLAP - INTERP_LEN)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def input_size_for(height: int, width: int, input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """The network's input size: both sides at least ``input_size`` (the short side at it), multiples of 14;
    wider than 16:9 the target shrinks so that the long side stays what 16:9 would give."""
    ratio = max(height, width) / min(height, width)
    if ratio > 1.78:
        input_size = round(int(input_size * 1.777 / ratio) / multiple) * multiple
    scale = max(input_size / height, input_size / width)

    def side(value: float) -> int:
        rounded = int(np.round(value / multiple) * multiple)
        return rounded if rounded >= input_size else int(np.ceil(value / multiple) * multiple)

    return side(scale * height), side(scale * width)


def preprocess(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N,3,H,W] 0..1 → the network's normalised input [N,3,h,w]."""
    frames = frames.float()
    if tuple(frames.shape[-2:]) != tuple(size):
        frames = F.interpolate(frames, size=size, mode="bicubic", align_corners=False)
    mean = torch.tensor(MEAN, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=frames.device).view(1, 3, 1, 1)
    return (frames - mean) / std


def window_scale_shift(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Least squares ``target ≈ scale * prediction + shift`` over every pixel (the windows' alignment)."""
    x, y = prediction.double().flatten(), target.double().flatten()
    a00, a01, a11 = float((x * x).sum()), float(x.sum()), float(x.numel())
    b0, b1 = float((x * y).sum()), float(y.sum())
    det = a00 * a11 - a01 * a01
    if det == 0:
        return 1.0, 0.0
    return (a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det


def _upsample(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[T,h,w] → [T,H,W] (bilinear, corners aligned, as the authors)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth.unsqueeze(1), size=size, mode="bilinear", align_corners=True)[:, 0]


def cross_fade(previous: list[torch.Tensor], following: list[torch.Tensor]) -> list[torch.Tensor]:
    """Linear blend from ``previous`` (weight 1 on the first) to ``following`` (weight 1 on the last)."""
    steps = len(previous) - 1
    return [p * (1 - i / steps) + f * (i / steps) for i, (p, f) in enumerate(zip(previous, following, strict=True))]


def carried_over(previous: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The first ``OVERLAP`` inputs of ``window``: the previous window's inputs at ``KEYFRAMES``."""
    return previous[list(KEYFRAMES)]


@torch.inference_mode()
def infer_windows(net: VideoDepthNet, inputs: torch.Tensor, size: tuple[int, int], metric: bool = False
                  ) -> torch.Tensor:
    """Depth [N,H,W] (``size``) for a whole clip of normalised inputs [N,3,h,w], window by window."""
    if net.config.num_frames != WINDOW:
        raise ValueError(f"the published windows are {WINDOW} frames; this checkpoint's temporal window is "
                         f"{net.config.num_frames} (stream it instead)")
    count = inputs.shape[0]
    step = WINDOW - OVERLAP
    padding = (step - count % step) % step + OVERLAP
    padded = torch.cat([inputs, inputs[-1:].expand(padding, -1, -1, -1)])
    dtype = next(net.parameters()).dtype
    raw: list[torch.Tensor] = []  # every window's 32 depths, as the windows gave them
    previous = None
    for start in range(0, count, step):
        window = padded[start:start + WINDOW].clone()
        if previous is not None:
            window[:OVERLAP] = carried_over(previous, window)
        depth = net(window.unsqueeze(0).to(dtype))[0].float()
        raw.extend(_upsample(depth, size))
        previous = window
    aligned: list[torch.Tensor] = list(raw[:WINDOW])
    references = [raw[k] for k in ALIGN_SLOTS]
    fade_from = OVERLAP - INTERP_LEN
    for first in range(WINDOW, len(raw), WINDOW):
        if metric:
            scale, shift = 1.0, 0.0
        else:
            scale, shift = window_scale_shift(torch.cat(raw[first:first + len(ALIGN_SLOTS)]),
                                              torch.cat(references))

        rescaled = [(depth * scale + shift).clamp_min(0.0) for depth in raw[first:first + WINDOW]]
        aligned[-INTERP_LEN:] = cross_fade(aligned[-INTERP_LEN:], rescaled[fade_from:OVERLAP])
        aligned.extend(rescaled[OVERLAP:])
        references = references[:1] + [rescaled[k] for k in ALIGN_SLOTS[1:]]
    return torch.stack(aligned[:count])


def memory_frames(window: int = WINDOW) -> int:
    """How far back a streamed frame's depth reaches with ``keep_first=False``: each of the three chained
    temporal modules (the 4th feature's, then the two fusion stages') holds two attentions that each look
    ``window - 1`` frames back."""
    return 3 * 2 * (window - 1)


@dataclass
class StreamState:
    """The cached temporal-attention inputs of the frames a streamed frame attends to."""

    keep_first: bool = True
    window: int = WINDOW
    caches: list[list[torch.Tensor]] = field(default_factory=list)
    frames_seen: int = 0

    def context(self) -> list[torch.Tensor] | None:
        if not self.caches:
            return None
        if self.keep_first:
            chosen = self.caches[0:2] + self.caches[-(self.window - 3):]
        else:
            chosen = self.caches[-(self.window - 1):]
        return [torch.cat([cache[i] for cache in chosen], dim=1) for i in range(len(chosen[0]))]

    def add(self, cache: list[torch.Tensor]) -> None:
        if not self.caches:
            self.caches = [cache] * self.window  # the first frame stands in for the frames before it
        else:
            self.caches.append(cache)
            if self.keep_first:
                if self.frames_seen + self.window > STREAM_GAP + 1:
                    del self.caches[1]
            else:
                del self.caches[:-(self.window - 1)]
        self.frames_seen += 1


@torch.inference_mode()
def infer_stream(net: VideoDepthNet, inputs: torch.Tensor, state: StreamState, size: tuple[int, int]
                 ) -> torch.Tensor:
    """Depth [N,H,W] (``size``) of consecutive normalised inputs [N,3,h,w], continuing ``state``: the encoder
    runs on all of them at once, the head frame after frame."""
    dtype = next(net.parameters()).dtype
    tokens = net.encode(inputs.to(dtype))
    depths = []
    for i in range(inputs.shape[0]):
        depth, cache = net.forward_stream([t[i:i + 1] for t in tokens], inputs.shape[-2:], state.context())
        state.add(cache)
        depths.append(depth.float())
    return _upsample(torch.cat(depths), size)
