"""A depth estimator that needs no weights: monocular cues that hold in most footage.

Cues, all computed at a low working resolution (long side ``work_long_side``):

* **Vertical position**: lower in the frame is usually nearer (the ground plane rises towards the horizon).
* **Motion parallax**: optical flow between consecutive frames (OpenCV's DIS flow: as good as Farnebäck at this
  size for a tenth of the time), minus the motion of the far part of
  the scene. When the camera moves sideways near things move faster than far ones; when the camera is still,
  things that move on their own are usually the subject. The reference ("far") motion is a robust affine fit of
  the flow, weighted towards pixels the current estimate already considers far, so a large near object that
  fills most of the frame does not become the reference.
* **Focus / texture**: local gradient energy. The subject is usually sharp and textured; sky, walls and defocused
  backgrounds are not.

Where the picture did not change between the two frames the flow is taken as noise (the solver spreads a moving
object's flow onto the still background around it), so the motion cue is gated by the luma change.

The weighted sum is carried along the flow from frame to frame (the previous estimate is warped into the current
frame and blended), which both steadies it and accumulates motion evidence over several frames. It is then
normalised to 0..1 with the robust range of the static cues pooled over the last frames (``TemporalRange``: a
finite memory, so a warmed-up segment matches a continuous run): motion starting or stopping somewhere leaves the
scale, hence the depth of everything static, unchanged, and what the motion cue brings nearer goes into a
headroom above the static range, rolled off so that nearer stays nearer. It is then steadied per pixel over
the last frames where the picture did not change (``steady.SteadyDepth``: a finite K-frame average, so static
parts stop wobbling while moving ones are followed at once), and refined edge-aware with a fast guided filter
whose linear model is applied to the full-resolution luma. A scene cut (``cuts.SceneCuts``: large histogram and
pixel change) resets all temporal state.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stereo_spot.stereo.depth import steady
from stereo_spot.stereo.depth.base import ShotEstimator
from stereo_spot.stereo.depth.cuts import SceneCuts
from stereo_spot.stereo.depth.temporal import TemporalRange
from stereo_spot.stereo.guided import box_filter, fast_guided_upsample, luma
from stereo_spot.stereo.resample import resize

_MIN_WORKING_SIDE = 16


@dataclass
class HeuristicParams:
    work_long_side: int = 320
    # Motion parallax is the only cue here that measures depth rather than guessing it, so when the flow shows
    # clear parallax it outweighs the priors.
    weight_vertical: float = 0.6
    weight_texture: float = 0.35
    weight_motion: float = 2.5
    #: residual motion (working-resolution pixels, 95th percentile) at which the motion cue is fully trusted
    motion_trust_px: float = 0.75
    #: share of the previous (flow-warped) estimate kept at each frame: steadier vs quicker to follow motion
    temporal_keep: float = 0.7
    #: frames whose ranges are pooled to normalise the depth (a finite memory: see ``temporal.py``)
    range_memory: int = 16
    #: frames after which the estimate no longer depends on where it started: the flow-carried estimate fades
    #: quickly, but the far-motion reference is fitted with weights from the previous depth, a loop that
    #: forgets slowly. Measured on a moving clip, warm-ups of 24, 48 and 96 frames matched a continuous run
    #: to 43, 51 and 80 dB PSNR at the seam.
    settle_frames: int = 48
    #: smallest raw range normalised to 0..1 (a flat scene stays flat instead of amplifying noise)
    min_range: float = 0.15
    #: how the 0..1 scale is set. A number: from the static cues' pooled range alone, which does not change
    #: when something starts or stops moving, with this share of the depth range on top of it kept for what
    #: the motion cue brings nearer (rolled off softly, so nearer stays nearer). None: from the range of the
    #: whole estimate, motion included (every static pixel's depth then shifts when motion comes and goes).
    motion_headroom: float | None = 0.3
    #: luma change (0..1, 3x3 mean) between the two frames under which a pixel's flow counts as noise: where
    #: the picture did not change, nothing moved there (0 trusts the flow everywhere)
    motion_luma_gate: float = 0.02
    guided_radius: int = 8
    guided_eps: float = 1e-2
    #: frames the per-pixel steadying filter averages over (``steady.py``; 1 switches it off)
    steady_frames: int = steady.FRAMES
    #: luma change (0..1, 3x3 mean) at which an earlier frame's depth counts for 1/e of the current one's
    steady_luma_tolerance: float = steady.LUMA_TOLERANCE


def working_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The low resolution the cues are computed at: the long side at most ``long_side``, no side under 16 px
    (OpenCV's DIS flow needs 12; tiny frames are upsampled, which costs nothing at that size)."""
    scale = min(1.0, long_side / max(height, width))
    return max(_MIN_WORKING_SIDE, round(height * scale)), max(_MIN_WORKING_SIDE, round(width * scale))


def _to_u8(gray: torch.Tensor) -> np.ndarray:
    return (gray.squeeze().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def _sample(x: torch.Tensor, limit: int = 4096) -> torch.Tensor:
    """A strided sample of at most about ``limit`` values: plenty for a range estimate."""
    flat = x.reshape(-1)
    return flat[:: flat.numel() // limit + 1] if flat.numel() > limit else flat


def _percentiles(x: torch.Tensor, lo: float, hi: float) -> tuple[float, float]:
    flat = x.reshape(-1)
    if flat.numel() > 4096:  # a strided sample is plenty for a range estimate
        flat = flat[:: flat.numel() // 4096 + 1]
    if flat.device.type == "cpu":  # numpy partitions instead of sorting: a few times faster
        q = np.percentile(flat.numpy(), [100 * lo, 100 * hi])
    else:
        q = torch.quantile(flat, torch.tensor([lo, hi], dtype=flat.dtype, device=flat.device)).tolist()
    return float(q[0]), float(q[1])


class HeuristicDepth(ShotEstimator):
    name = "heuristic"

    def __init__(self, device: str | torch.device | None = None, params: HeuristicParams | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.params = params or HeuristicParams()
        self._cuts = SceneCuts()
        self._steady = steady.SteadyDepth(self.params.steady_frames, self.params.steady_luma_tolerance)
        self._dis = None
        self._grid_key: tuple | None = None
        self.reset()

    def _start_shot(self) -> None:
        """Forget what the previous shot left: flow history, the pooled range, the steadying filter."""
        self._prev_gray_u8: np.ndarray | None = None
        self._prev_gray: torch.Tensor | None = None
        self._prev_raw: torch.Tensor | None = None
        self._prev_depth: torch.Tensor | None = None  # normalised, working resolution, before steadying
        self._range = TemporalRange(self.params.range_memory)
        self._steady.reset()

    @property
    def memory_frames(self) -> int:
        """Frames of history that shape the next estimate (what a warm-up must feed to match a long run): the
        steadying filter averages the last frames' estimates, each of which needs the settled state."""
        return max(self.params.range_memory, self.params.settle_frames) + self._steady.memory_frames

    # --- per-frame pieces ------------------------------------------------------------------------------

    def _flow(self, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Flow from the current frame to the previous one: current(x) ≈ previous(x + flow). [h,w,2]."""
        if self._dis is None:
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        return self._dis.calc(current, previous, None)

    def _reference_motion(self, flow: np.ndarray, farness: np.ndarray) -> np.ndarray:
        """Robust affine fit of ``flow`` weighted towards far pixels: the motion the far scene shows."""
        h, w = flow.shape[:2]
        step = max(1, int(np.sqrt(h * w / 900)))
        sample = (slice(0, h, step), slice(0, w, step))
        xs = (np.arange(w, dtype=np.float32) / w - 0.5)
        ys = (np.arange(h, dtype=np.float32) / h - 0.5)
        gy, gx = np.meshgrid(ys[sample[0]], xs[sample[1]], indexing="ij")
        design = np.stack([np.ones(gx.size), gx.reshape(-1), gy.reshape(-1)], axis=1).astype(np.float64)
        target = flow[sample].reshape(-1, 2).astype(np.float64)
        prior = farness[sample].reshape(-1).astype(np.float64) ** 2 + 1e-3
        weights = prior
        coef = np.zeros((3, 2))
        for _ in range(3):  # iteratively reweighted least squares (Cauchy weights on the residual)
            sw = np.sqrt(weights)[:, None]
            coef, *_ = np.linalg.lstsq(design * sw, target * sw, rcond=None)
            residual = np.linalg.norm(target - design @ coef, axis=1)
            sigma = 1.4826 * float(np.median(residual)) + 0.05
            weights = prior / (1.0 + (residual / sigma) ** 2)
        coef = coef.astype(np.float32)
        # flow_ref(x, y) = c0 + c1 x + c2 y, per component
        return coef[0] + xs[None, :, None] * coef[1] + ys[:, None, None] * coef[2]

    def _motion_cue(self, flow: torch.Tensor, confidence: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        """Residual motion magnitude [1,1,h,w] in 0..1.5: about 1 for the fastest-moving (nearest) part.

        Flow noise (sensor noise, compression) shows as a small residual everywhere. Where the picture did not
        change (``changed`` near 0) the residual is noise and is dropped before anything else; what remains of
        it is removed by subtracting the median residual (most of a frame moves like its reference) as a noise
        floor. Residuals are scaled by their 95th percentile but never by less than ``motion_trust_px``: weak
        motion stays a weak cue instead of being stretched to full strength.
        """
        magnitude = flow.norm(dim=1, keepdim=True) * changed
        # Flow in flat regions is guessed by the solver (and their luma barely changes when they move): spread
        # the textured neighbours' motion instead.
        radius = max(2, magnitude.shape[-1] // 32)
        # A textured pixel keeps its own: spreading it too would draw a halo of motion, hence of nearness,
        # around everything that moves, onto the static background next to it.
        spread = box_filter(magnitude * confidence, radius) / box_filter(confidence, radius).clamp_min(1e-3)
        magnitude = confidence * magnitude + (1.0 - confidence) * spread
        median, _ = _percentiles(magnitude, 0.5, 0.95)
        magnitude = (magnitude - (1.5 * median + 0.05)).clamp_(min=0.0)
        _, p95 = _percentiles(magnitude, 0.5, 0.95)
        return (magnitude / max(p95, self.params.motion_trust_px)).clamp_(0.0, 1.5)

    def _changed(self, gray: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """0..1 per pixel: how surely the picture changed there since the previous frame (the flow gate)."""
        gate = self.params.motion_luma_gate
        if gate <= 0:
            return torch.ones_like(gray)
        change = box_filter((gray - previous).abs(), 1)
        return (change * (1.0 / gate)).clamp_(0.0, 1.0)

    def _normalise(self, raw: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        """The raw estimate mapped to 0..1 (``motion_headroom`` says how)."""
        p = self.params
        headroom = p.motion_headroom
        r_lo, r_hi = self._range.update(_sample(raw if headroom is None else static))
        span = max(r_hi - r_lo, p.min_range)
        centre = 0.5 * (r_lo + r_hi)
        x = (raw - (centre - 0.5 * span)) / span
        if headroom is None:
            return x.clamp_(0.0, 1.0)
        # the static range takes 0..knee; above it a rational roll-off (slope 1 at the knee) approaches 1
        # slowly enough that what the motion cue brings nearer keeps its order over several ranges
        knee = 1.0 / (1.0 + headroom)
        x = x.clamp_(min=0.0) * knee
        above = (x - knee).clamp_(min=0.0)
        return torch.where(x > knee, knee + (1.0 - knee) * above / (above + (1.0 - knee)), x)

    def _warp_back(self, previous: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """previous [1,1,h,w] sampled at x + flow: the previous estimate carried into the current frame."""
        _, _, h, w = previous.shape
        key = (h, w, flow.device, flow.dtype)
        if self._grid_key != key:
            ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                                    torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
            # grid_sample's normalised coordinates (align_corners=True): -1 and 1 are the outer pixel centres
            self._grid = torch.stack([xs * (2.0 / max(w - 1, 1)) - 1.0, ys * (2.0 / max(h - 1, 1)) - 1.0], dim=-1)
            self._grid_scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=flow.device,
                                            dtype=flow.dtype)
            self._grid_key = key
        grid = torch.addcmul(self._grid, flow[0].permute(1, 2, 0), self._grid_scale).unsqueeze(0)
        return F.grid_sample(previous, grid, mode="bilinear", padding_mode="border", align_corners=True)

    # --- the estimator -----------------------------------------------------------------------------------

    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"depth estimation wants frames [N,3,H,W], got {tuple(frames.shape)}")
        p = self.params
        n, _, h, w = frames.shape
        hs, ws = working_size(h, w, p.work_long_side)
        # Luma is linear in the channels, so the area-averaged luma of the full frame is the luma of the
        # area-averaged frame: one plane to shrink instead of three, and the full-resolution luma is needed
        # by the guided filter anyway.
        gray_full = luma(frames)
        gray_small = resize(gray_full, (hs, ws), area=True).contiguous()

        # Cues that need no history, for the whole batch at once.
        gx = F.pad(gray_small[..., :, 1:] - gray_small[..., :, :-1], (0, 1, 0, 0))
        gy = F.pad(gray_small[..., 1:, :] - gray_small[..., :-1, :], (0, 0, 0, 1))
        energy = box_filter((gx * gx + gy * gy).sqrt_(), max(2, ws // 48))
        vertical = torch.linspace(0.0, 1.0, hs, device=frames.device, dtype=frames.dtype).view(1, 1, hs, 1)

        depth_small = torch.empty((n, 1, hs, ws), device=frames.device, dtype=frames.dtype)
        for i in range(n):
            gray = gray_small[i : i + 1]
            gray_u8 = _to_u8(gray)
            if self._cuts.update(gray):
                self._start_shot()
            _, e_hi = _percentiles(energy[i], 0.5, 0.98)
            texture = (energy[i : i + 1] / max(e_hi, 1e-3)).clamp_(0.0, 1.0)
            static = p.weight_vertical * vertical + p.weight_texture * texture

            raw = static
            if self._prev_gray_u8 is not None and self._prev_raw is not None and self._prev_depth is not None:
                flow_np = self._flow(gray_u8, self._prev_gray_u8)
                farness = 1.0 - self._prev_depth.squeeze().cpu().numpy()
                reference = self._reference_motion(flow_np, farness)
                flow = torch.from_numpy(flow_np).to(frames.device).permute(2, 0, 1).unsqueeze(0)
                residual = flow - torch.from_numpy(reference).to(frames.device).permute(2, 0, 1).unsqueeze(0)
                motion = self._motion_cue(residual, (texture * 4.0).clamp_(0.05, 1.0),
                                          self._changed(gray, self._prev_gray))
                raw = static + p.weight_motion * motion
                carried = self._warp_back(self._prev_raw, flow)
                raw = p.temporal_keep * carried + (1.0 - p.temporal_keep) * raw

            depth = self._normalise(raw, static)

            depth_small[i : i + 1] = self._steady(depth, gray)
            self._prev_raw = raw
            self._prev_depth = depth
            self._prev_gray_u8 = gray_u8
            self._prev_gray = gray

        radius = max(2, round(p.guided_radius * ws / 320))
        refined = fast_guided_upsample(gray_small, depth_small, gray_full, radius, p.guided_eps)
        return refined.clamp_(0.0, 1.0)
