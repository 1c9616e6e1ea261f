"""The per-frame stereo pipeline: depth → disparity → forward warp → hole fill → pack.

``StereoEngine`` holds the pieces chosen by ``ConversionSettings`` and the temporal state of one shot or segment.
Frames come in and go out as uint8 NHWC numpy batches (what decoders and encoders use); in between everything is
float torch on the engine's device. The hot path is: one upload and uint8→float conversion (as a channels-last
NCHW view, no transposing copy), depth at low resolution, warp and fill at full resolution, and packing straight
into the uint8 output buffer, whose left half is a byte copy of the source.

Threads: the engine never calls ``torch.set_num_threads``; the process that runs it decides (the runner gives
each of its worker processes a share of the cores).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.depth import DepthEstimator, create_depth_estimator
from stereo_spot.stereo.disparity import depth_to_disparity
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.fill import Inpainter, create_inpainter
from stereo_spot.stereo.pack import output_size as packed_size
from stereo_spot.stereo.pack import pack_uint8
from stereo_spot.stereo.warp import WarpWorkspace, forward_warp


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def frames_to_tensor(frames_uint8: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,H,W,3] numpy → (the uint8 batch on the device, float [N,3,H,W] 0..1, contiguous planes).

    Planar float is what the warp reads; on CPU OpenCV splits the interleaved bytes (several times faster than
    a transposing float copy), on a GPU the transpose happens there.
    """
    if frames_uint8.dtype != np.uint8 or frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
        raise StereoInputError(f"frames must be uint8 [N,H,W,3], got {frames_uint8.dtype} {frames_uint8.shape}")
    frames_uint8 = np.ascontiguousarray(frames_uint8)
    u8 = torch.from_numpy(frames_uint8).to(device, non_blocking=True)
    if device.type != "cpu":
        return u8, u8.permute(0, 3, 1, 2).contiguous().to(torch.float32).mul_(1.0 / 255.0)
    n, h, w, c = frames_uint8.shape
    planar = torch.empty((n, c, h, w), dtype=torch.float32)
    for i, frame in enumerate(frames_uint8):
        for ch, plane in enumerate(cv2.split(frame)):
            planar[i, ch].copy_(torch.from_numpy(plane))
    return u8, planar.mul_(1.0 / 255.0)


class StereoEngine:
    """Converts consecutive frames of one shot or segment to packed stereo frames.

    Holds the depth estimator and inpainter chosen by ``settings`` (or given), their temporal state, and the
    warp's reusable buffers. Not thread-safe: one engine per worker.
    """

    def __init__(
        self,
        settings: ConversionSettings,
        device: str | torch.device | None = None,
        depth: DepthEstimator | None = None,
        inpainter: Inpainter | None = None,
    ) -> None:
        self.settings = settings
        self.device = torch.device(device) if device is not None else default_device()
        self.depth = depth or create_depth_estimator(settings.depth_model, settings.depth_weights, self.device)
        self.inpainter = inpainter or create_inpainter(settings.inpaint, settings.inpaint_weights, self.device)
        # On CPU a frame at a time: the warp's buffers (one frame's worth, reused) and the temporaries stay
        # small; batches gain nothing on CPU and make every temporary a fresh, page-faulted mapping.
        # A GPU takes the whole batch at once.
        self.chunk_frames = 1 if self.device.type == "cpu" else 1_000_000
        self._warp_workspace = WarpWorkspace()

    def reset(self) -> None:
        """Start a new shot: forget the depth and inpainting state."""
        self.depth.reset()
        self.inpainter.reset()

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        return packed_size(width, height, self.settings.output_format)

    def disparity(self, frames: torch.Tensor) -> torch.Tensor:
        """Depth for float frames [N,3,H,W] → disparity in pixels [N,1,H,W] (crossed positive)."""
        depth01 = self.depth.estimate(frames)
        return depth_to_disparity(depth01, frames.shape[-1], self.settings.divergence, self.settings.convergence)

    @torch.inference_mode()
    def warm_up(self, frames_uint8: np.ndarray) -> None:
        """Feed frames that precede the segment through the depth estimator only (temporal state, no output)."""
        if len(frames_uint8) == 0:
            return
        for start in range(0, len(frames_uint8), self.chunk_frames):
            _, frames = frames_to_tensor(frames_uint8[start : start + self.chunk_frames], self.device)
            self.depth.estimate(frames)

    def render_right(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        """Right views [N,C,H,W] for float left views and disparities in pixels: warp + fill. The result may
        live in the engine's scratch buffers: use it (or clone it) before the next call."""
        right, holes, warped_disparity = forward_warp(left, disparity, workspace=self._warp_workspace)
        return self.inpainter.inpaint(right, holes, warped_disparity, left)

    @torch.inference_mode()
    def right_views(self, frames: np.ndarray | torch.Tensor, disparity: np.ndarray | torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Right views (float [N,3,H,W] 0..1, a new tensor) for uint8 NHWC or float NCHW frames; the disparity
        [N,1,H,W] or [N,H,W] in pixels is estimated when not given."""
        if isinstance(frames, np.ndarray):
            _, left = frames_to_tensor(frames, self.device)
        else:
            left = frames.to(self.device, torch.float32)
        if disparity is None:
            disp = self.disparity(left)
        else:
            disp = torch.as_tensor(disparity, dtype=torch.float32, device=self.device)
            if disp.dim() == 3:
                disp = disp.unsqueeze(1)
        return self.render_right(left, disp).clone()

    @torch.inference_mode()
    def convert_batch(self, frames_uint8: np.ndarray) -> np.ndarray:
        """Consecutive frames uint8 [N,H,W,3] → packed stereo frames uint8 [N,H2,W2,3]."""
        if frames_uint8.ndim != 4:
            raise StereoInputError(f"frames must be uint8 [N,H,W,3], got shape {frames_uint8.shape}")
        n, h, w = frames_uint8.shape[:3]
        out_w, out_h = self.output_size(w, h)
        out = np.empty((n, out_h, out_w, 3), dtype=np.uint8)
        for start in range(0, n, self.chunk_frames):
            stop = min(n, start + self.chunk_frames)
            u8, left = frames_to_tensor(frames_uint8[start:stop], self.device)
            right = self.render_right(left, self.disparity(left))
            if self.device.type == "cpu":  # pack straight into the returned array
                pack_uint8(u8, left, right, self.settings.output_format, self.settings.anaglyph,
                           out=torch.from_numpy(out[start:stop]))
            else:
                packed = pack_uint8(u8, left, right, self.settings.output_format, self.settings.anaglyph)
                out[start:stop] = packed.cpu().numpy()
        return out
