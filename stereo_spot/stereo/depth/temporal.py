"""Turning per-frame relative depth into a steady 0..1 depth with a finite temporal memory.

Relative depth flickers for two reasons. The range that maps it to 0..1 jumps from frame to frame (an object
enters, an outlier moves the percentiles), and a neural model's output is only defined up to a scale and a
shift that it picks anew for every frame (or every window of frames).

``TemporalRange`` handles both with state that looks back a fixed number of frames:

* every frame's robust range (2nd and 98th percentiles) is pooled over the last ``memory`` frames with
  triangular weights (newest heaviest), which smooths the normalisation like an exponential moving average
  would, but forgets completely after ``memory`` frames;
* with ``align=True`` (for models), each frame is fitted to the previous one by least squares — scale and shift,
  robust to moving pixels (iteratively reweighted) — and the ranges of the older frames in the window are
  expressed in the current frame's units through the chained fits. A model that rescales its output from one
  frame (or window) to the next therefore gets the same normalised depth for the same scene. This is the
  "overlap" between temporal windows: the frames two windows share, or for a per-frame model the last frame of
  one batch and the first of the next, anchor the scale and shift of the new one.

A finite memory is what makes parallel segments seamless: a segment that first runs ``memory`` frames of the
previous segment through the estimator ends up in exactly the state a single long run had at that frame (an
exponential average never forgets its start). A fit whose residual is large (the new frame cannot be expressed in
the previous one's units) starts the window afresh; shot boundaries themselves are the estimator's to find
(``cuts.SceneCuts``, one rule for all its temporal state), and it calls ``reset`` at them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

#: Percentiles that define a frame's robust range.
LOW_PERCENTILE, HIGH_PERCENTILE = 2.0, 98.0


@dataclass
class _FrameRange:
    lo: float
    hi: float
    scale: float = 1.0  # maps this frame's units to the previous frame's: u_prev = scale * u + shift
    shift: float = 0.0


def robust_range(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(lo), float(hi)


def fit_scale_shift(x: np.ndarray, y: np.ndarray, iterations: int = 4) -> tuple[float, float, float]:
    """Robust least squares ``y ≈ scale * x + shift`` (Cauchy-weighted IRLS): pixels that moved or changed get
    small weights. Returns (scale, shift, median absolute residual)."""
    x = x.astype(np.float64).ravel()
    y = y.astype(np.float64).ravel()
    weights = np.ones_like(x)
    scale, shift, residual = 1.0, 0.0, np.abs(y - x)
    for _ in range(iterations):
        total = weights.sum()
        mx, my = (weights * x).sum() / total, (weights * y).sum() / total
        var = (weights * (x - mx) ** 2).sum()
        if var <= 1e-12:  # a flat frame: only the shift is defined
            scale, shift = 1.0, my - mx
        else:
            scale = (weights * (x - mx) * (y - my)).sum() / var
            shift = my - scale * mx
        residual = np.abs(y - (scale * x + shift))
        sigma = 1.4826 * float(np.median(residual)) + 1e-6 * (np.abs(y).max() + 1e-6)
        weights = 1.0 / (1.0 + (residual / (2.385 * sigma)) ** 2)
    return float(scale), float(shift), float(np.median(residual))


class TemporalRange:
    """The pooled robust range of the last ``memory`` frames, in the current frame's units."""

    def __init__(self, memory: int = 16, align: bool = False, max_scale_change: float = 2.0,
                 cut_residual: float = 0.2) -> None:
        if memory < 1:
            raise ValueError(f"memory must be at least 1 frame, got {memory}")
        self.memory = memory
        self.align = align
        self.max_scale_change = max_scale_change
        #: a fit whose median residual exceeds this share of the previous frame's range restarts the window
        self.cut_residual = cut_residual
        self.cuts_detected = 0
        self.reset()

    def reset(self) -> None:
        self._frames: deque[_FrameRange] = deque(maxlen=self.memory)
        self._previous: np.ndarray | None = None

    def update(self, values: torch.Tensor | np.ndarray) -> tuple[float, float]:
        """Add a frame (a small map of its raw values) and return the pooled (lo, hi) in its units."""
        current = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        current = current.astype(np.float64, copy=False).ravel()
        lo, hi = robust_range(current)
        entry = _FrameRange(lo, hi)
        if self.align and self._previous is not None and self._frames:
            scale, shift, residual = fit_scale_shift(current, self._previous)
            previous = self._frames[-1]
            if residual > self.cut_residual * max(previous.hi - previous.lo, 1e-9) or scale <= 0:
                self.cuts_detected += 1
                self._frames.clear()
            else:
                entry.scale = float(np.clip(scale, 1.0 / self.max_scale_change, self.max_scale_change))
                entry.shift = shift
        self._frames.append(entry)
        self._previous = current
        return self._pooled()

    def _pooled(self) -> tuple[float, float]:
        # Walk from the newest frame back, carrying the affine map from each frame's units to the newest's.
        a, b = 1.0, 0.0
        total_w = total_lo = total_hi = 0.0
        count = len(self._frames)
        for age, entry in enumerate(reversed(self._frames)):
            weight = float(count - age)  # triangular: newest heaviest
            total_w += weight
            total_lo += weight * (a * entry.lo + b)
            total_hi += weight * (a * entry.hi + b)
            # older frame units -> this frame's units: u_this = (u_older - shift) / scale
            b = b - a * entry.shift / entry.scale
            a = a / entry.scale
        return total_lo / total_w, total_hi / total_w
