"""Steadier depth: a per-pixel average over the last few frames where the picture did not change.

A monocular estimate wobbles from frame to frame even where nothing moves (sensor noise in the cues, a
normalising range that shifts, a network that sees a slightly different picture). Where the picture is the same
the depth should be the same, so ``SteadyDepth`` replaces every pixel's depth by a weighted average of that
pixel's depth in the last ``frames`` frames, each earlier frame weighted by how little the picture changed at
that pixel since then::

    out(x) = Σ_k w_k(x) d_k(x) / Σ_k w_k(x),   w_0 = 1,   w_k(x) = a_k exp(-(Δ_k(x) / luma_tolerance)²)

where ``Δ_k`` is the mean absolute luma difference between the current frame and the frame k back, over the
pixel's 3×3 neighbourhood (which keeps sensor noise from reading as change), and ``a_k`` is 1 for recent frames
and tapers linearly to 0 over the oldest third of the window. A static pixel gets the plain
average of its last ``frames`` depths — for independent wobble the frame-to-frame change of a K-frame average is
about 1/K of the raw one's; a pixel something moves across has a different luma in the earlier frames, their weights
vanish and the depth follows at once.

The average is of the estimator's own per-frame depths, never of earlier outputs: the filter's memory is exactly
``frames - 1`` frames (no exponential tail), so a segment warmed up on the frames before it reaches the state a
single long run had, and a scene cut (``cuts.SceneCuts``) empties it.
"""

from __future__ import annotations

from collections import deque

import torch

from stereo_spot.stereo.guided import box_filter

#: the defaults every estimator uses: frames averaged, and the luma change (0..1, 3x3 mean) at which an earlier
#: frame counts for 1/e of the current one (compressed real footage changes by 0.01..0.03 where nothing moves)
FRAMES = 12
LUMA_TOLERANCE = 0.04


class SteadyDepth:
    """The temporal filter of one shot's depth maps (working resolution, one frame per call)."""

    def __init__(self, frames: int = FRAMES, luma_tolerance: float = LUMA_TOLERANCE) -> None:
        if frames < 1:
            raise ValueError(f"the steadying filter needs at least 1 frame, got {frames}")
        if luma_tolerance <= 0:
            raise ValueError(f"luma_tolerance must be positive, got {luma_tolerance}")
        self.frames = frames
        self.luma_tolerance = luma_tolerance
        # Flat, then tapering linearly over the oldest third: a frame leaves the average gradually, so an odd
        # frame (a shot's first, before any motion was seen) does not make the depth jump when it drops out.
        taper = max(1, frames // 3)
        self._age_weights = [min(1.0, (frames - age) / taper) for age in range(frames)]
        self.reset()

    @property
    def memory_frames(self) -> int:
        """Earlier frames the output depends on."""
        return self.frames - 1

    def reset(self) -> None:
        self._history: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=max(self.frames - 1, 1))

    def __call__(self, depth: torch.Tensor, gray: torch.Tensor) -> torch.Tensor:
        """``depth`` [1,1,h,w] 0..1 and the frame's luma ``gray`` [1,1,h,w] 0..1 at the same size → the
        steadied depth [1,1,h,w] (a new tensor)."""
        if depth.shape != gray.shape:
            raise ValueError(f"depth {tuple(depth.shape)} and luma {tuple(gray.shape)} differ in size")
        if self.frames == 1:
            return depth.clone()
        if self._history and self._history[-1][1].shape != gray.shape:
            self.reset()
        out = depth.clone()
        if self._history:
            ages = len(self._history)
            old_depth = torch.cat([d for d, _ in self._history])  # oldest first
            old_gray = torch.cat([g for _, g in self._history])
            # exp(-20) is nothing already; clamping there keeps exp out of denormal numbers (ten times slower)
            change = box_filter((old_gray - gray).abs_(), 1)
            weights = change.mul_(1.0 / self.luma_tolerance).square_().clamp_(max=20.0).neg_().exp_()
            weights.mul_(self._age_tensor(ages, weights))
            weighted = weights * old_depth
            total, weight = depth.clone(), torch.ones_like(depth)
            for k in range(ages):  # slice by slice: torch reduces over the leading axis many times slower
                total.add_(weighted[k : k + 1])
                weight.add_(weights[k : k + 1])
            out = total.div_(weight)
        self._history.append((depth.clone(), gray.clone()))
        return out

    def _age_tensor(self, ages: int, like: torch.Tensor) -> torch.Tensor:
        # weights of the earlier frames, oldest first: ages ``ages`` … 1
        key = (ages, like.device, like.dtype)
        if getattr(self, "_age_key", None) != key:
            self._age_key = key
            self._ages = torch.tensor(self._age_weights[ages:0:-1], device=like.device,
                                      dtype=like.dtype).view(-1, 1, 1, 1)
        return self._ages
