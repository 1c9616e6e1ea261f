"""Comfort statistics of a converted segment, gathered from what the engine computes anyway.

The engine hands every batch's left views, disparities and hole masks to a ``ComfortStats``; nothing is computed
twice. Most numbers come from sampled frames (every ``sample_every``-th), the flicker index from every frame at
thumbnail size, so the cost is a fraction of a millisecond per frame.

Everything is kept as **screen parallax in percent of the image width**, the unit stereographers budget in:
``parallax = -disparity / width * 100``, negative = crossed (in front of the screen), positive = uncrossed
(behind it). Statistics are additive (histogram counts, sums, frame counts), so the segments of a job merge
exactly into the job's report (``stereo_spot.report``).

* **Parallax histogram** over the sampled frames' pixels: fixed bins of ``BIN_PCT`` from ``-RANGE_PCT`` to
  ``+RANGE_PCT`` (values beyond land in the outer bins); percentiles come from it.
* **Hole ratio**: share of right-view pixels the warp could not fill (disocclusions): what the inpainter made up.
* **Screen-border (window) violations**: a sampled frame where something in front of the screen (parallax below
  ``-BORDER_PARALLAX_PCT``) covers at least ``BORDER_SHARE`` of a strip along the left or right frame edge. The
  frame edge then cuts an object that should stand in front of it, which the eyes read as a contradiction.
  Counted twice: on the disparity as rendered (the figure before any floating window) and **after the floating
  window** (``stereo/window.py``), where only what comes forward by more than ``BORDER_PARALLAX_PCT`` beyond the
  window's own parallax at that edge counts. The window's widths (every frame, % of the width) are summed too.
* **Automatic convergence** (``--convergence auto``): the screen plane chosen for every frame, summed.
* **Flicker**: mean absolute change of the parallax from one frame to the next over pixels whose brightness did
  not change (static parts of the picture, where depth should not change either), at thumbnail size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

STATS_VERSION = 1
BIN_PCT = 0.05
RANGE_PCT = 10.0
BINS = int(round(2 * RANGE_PCT / BIN_PCT))
#: parallax (% of width, crossed) beyond which something at a frame edge is clearly in front of the screen
BORDER_PARALLAX_PCT = 0.25
#: share of an edge strip's pixels that must be in front of the screen to count as a violation
BORDER_SHARE = 0.05
#: width of the edge strips, share of the image width (at least 2 pixels)
BORDER_STRIP = 0.01
#: a thumbnail pixel whose luma changed by less than this (0..1) between frames counts as static
STATIC_LUMA = 0.02
THUMB_WIDTH = 96


def _luma(frames: torch.Tensor) -> torch.Tensor:
    r, g, b = frames[:, 0:1], frames[:, 1:2], frames[:, 2:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


class ComfortStats:
    """Accumulates the statistics of consecutive frames of one segment (``observe``), then ``to_dict``."""

    def __init__(self, sample_every: int = 6) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, got {sample_every}")
        self.sample_every = sample_every
        self.width = 0
        self.height = 0
        self.frames = 0
        self.sampled_frames = 0
        self.pixels = 0
        self.hole_pixels = 0
        self.histogram = np.zeros(BINS, np.int64)
        self.parallax_min = float("inf")
        self.parallax_max = float("-inf")
        self.border_left = 0
        self.border_right = 0
        self.border_worst = 0.0  # most crossed parallax seen in an edge strip of a violating frame
        self.flicker_sum = 0.0
        self.flicker_pixels = 0
        self.window_on = False
        self.window_left = 0  # sampled frames violating the left edge after the floating window
        self.window_right = 0
        self.window_frames = 0  # frames whose window widths were observed
        self.window_active_frames = 0  # ... of which with a mask at either edge
        self.window_sum_pct = [0.0, 0.0]  # left, right
        self.window_max_pct = [0.0, 0.0]
        self.convergence_frames = 0
        self.convergence_sum = 0.0
        self.convergence_min = float("inf")
        self.convergence_max = float("-inf")
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (luma, parallax) thumbnails

    @torch.inference_mode()
    def observe(self, left: torch.Tensor, disparity: torch.Tensor, holes: torch.Tensor,
                window: torch.Tensor | None = None, convergence: torch.Tensor | None = None) -> None:
        """``left`` [N,C,H,W] 0..1, ``disparity`` [N,1,H,W] pixels (crossed positive), ``holes`` [N,1,H,W];
        ``window`` the floating window's widths [N,2] (left, right) in pixels, ``convergence`` [N] the automatic
        screen plane of each frame (None: off)."""
        n, _, h, w = disparity.shape
        self.width, self.height = w, h
        parallax = disparity.float() * (-100.0 / w)
        window_pct = window.float().cpu() * (100.0 / w) if window is not None else torch.zeros((n, 2))
        if window is not None:
            self._window(window_pct)
        if convergence is not None:
            values = [float(c) for c in convergence]
            self.convergence_frames += len(values)
            self.convergence_sum += sum(values)
            self.convergence_min = min(self.convergence_min, *values)
            self.convergence_max = max(self.convergence_max, *values)
        self._flicker(left[:, :3].float(), parallax)
        for i in range(n):
            index = self.frames + i
            if index % self.sample_every:
                continue
            self._sample(parallax[i, 0], holes[i, 0], window_pct[i].tolist())
        self.frames += n

    def _window(self, window_pct: torch.Tensor) -> None:
        self.window_on = True
        self.window_frames += len(window_pct)
        self.window_active_frames += int((window_pct.amax(dim=1) > 0).sum())
        for side in (0, 1):
            self.window_sum_pct[side] += float(window_pct[:, side].sum())
            self.window_max_pct[side] = max(self.window_max_pct[side], float(window_pct[:, side].max()))

    def _sample(self, parallax: torch.Tensor, holes: torch.Tensor, window_pct: list[float] = (0.0, 0.0)) -> None:
        h, w = parallax.shape
        self.sampled_frames += 1
        self.pixels += h * w
        self.hole_pixels += int(holes.sum())
        clamped = parallax.clamp(-RANGE_PCT, RANGE_PCT - 1e-6)
        counts = torch.histc(clamped, bins=BINS, min=-RANGE_PCT, max=RANGE_PCT)
        self.histogram += counts.to(torch.int64).cpu().numpy()
        self.parallax_min = min(self.parallax_min, float(parallax.min()))
        self.parallax_max = max(self.parallax_max, float(parallax.max()))
        strip = max(2, round(BORDER_STRIP * w))
        for side, values in (("left", parallax[:, :strip]), ("right", parallax[:, w - strip:])):
            in_front = values < -BORDER_PARALLAX_PCT
            if float(in_front.float().mean()) >= BORDER_SHARE:
                if side == "left":
                    self.border_left += 1
                else:
                    self.border_right += 1
                self.border_worst = min(self.border_worst, float(values.min()))
            # after the window: what comes forward beyond the window's own parallax at this edge
            beyond = values < -(window_pct[0 if side == "left" else 1] + BORDER_PARALLAX_PCT)
            if float(beyond.float().mean()) >= BORDER_SHARE:
                if side == "left":
                    self.window_left += 1
                else:
                    self.window_right += 1

    def _flicker(self, left: torch.Tensor, parallax: torch.Tensor) -> None:
        n, _, h, w = parallax.shape
        factor = max(1, w // THUMB_WIDTH)
        luma = F.avg_pool2d(_luma(left), factor, ceil_mode=True) if factor > 1 else _luma(left)
        small = F.avg_pool2d(parallax, factor, ceil_mode=True) if factor > 1 else parallax
        for i in range(n):
            current = (luma[i], small[i])
            if self._previous is not None and self._previous[0].shape == current[0].shape:
                static = (current[0] - self._previous[0]).abs() < STATIC_LUMA
                count = int(static.sum())
                if count:
                    self.flicker_sum += float(((current[1] - self._previous[1]).abs() * static).sum())
                    self.flicker_pixels += count
            self._previous = current

    def to_dict(self) -> dict:
        nonzero = np.flatnonzero(self.histogram)
        first, last = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        return {
            "version": STATS_VERSION,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "sampled_frames": self.sampled_frames,
            "pixels": self.pixels,
            "hole_pixels": self.hole_pixels,
            "parallax_histogram": {"first_edge_pct": -RANGE_PCT + first * BIN_PCT, "bin_pct": BIN_PCT,
                                   "counts": [int(c) for c in self.histogram[first:last]]},
            "parallax_min_pct": _finite(self.parallax_min),
            "parallax_max_pct": _finite(self.parallax_max),
            "border_violation_frames": {"left": self.border_left, "right": self.border_right},
            "border_worst_pct": round(self.border_worst, 4),
            "flicker_sum_pct": self.flicker_sum,
            "flicker_pixels": self.flicker_pixels,
            "floating_window": self.window_on,
            "window_violation_frames": {"left": self.window_left, "right": self.window_right},
            "window_frames": self.window_frames,
            "window_active_frames": self.window_active_frames,
            "window_sum_pct": {"left": self.window_sum_pct[0], "right": self.window_sum_pct[1]},
            "window_max_pct": {"left": round(self.window_max_pct[0], 4), "right": round(self.window_max_pct[1], 4)},
            "convergence": {"frames": self.convergence_frames, "sum": self.convergence_sum,
                            "min": _finite(self.convergence_min), "max": _finite(self.convergence_max)},
        }


def _finite(value: float) -> float:
    # DynamoDB stores no infinities; a segment without sampled frames reports 0.
    return round(value, 4) if np.isfinite(value) else 0.0


def histogram_counts(stats: dict) -> np.ndarray:
    """The full-range histogram of a stats dict (``to_dict`` trims the empty bins at both ends)."""
    hist = stats.get("parallax_histogram") or {}
    counts = np.zeros(BINS, np.int64)
    values = hist.get("counts") or []
    if values:
        first = int(round((float(hist.get("first_edge_pct", -RANGE_PCT)) + RANGE_PCT) / BIN_PCT))
        first = min(max(first, 0), BINS)
        span = values[: BINS - first]
        counts[first:first + len(span)] = np.asarray(span, np.int64)
    return counts
