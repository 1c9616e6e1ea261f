"""``--convergence auto``: a screen plane, chosen per frame, that puts the frame edges at or behind the screen.

The frame edges are where the stereo window breaks (``stereo/window.py``): whatever the edge cuts should not
stand in front of it. So for every frame the plane moves to the depth of what touches the left and right edges
(the same measure ``--auto-divergence`` uses: the ``frame_edges.EDGE_PERCENTILE``-th percentile of the
normalised depth in strips of ``frame_edges.EDGE_STRIP`` of the width), within bounds:

* never in front of the job's ``convergence`` (0.5 unless ``--auto-divergence`` chose one): auto only ever
  moves the plane forward, it does not pull the scene out of the screen;
* never so far forward that the far end of the picture (its 2nd depth percentile) sits more than
  ``MAX_UNCROSSED_PCT`` of the width behind the screen: the scene is not pushed uncomfortably deep. What the
  bound leaves in front of the screen at the edges is the floating window's to cover.

The plane is the triangular-weighted mean (newest heaviest) of the last ``MEMORY`` frames' choices: it glides,
and it forgets completely after ``MEMORY`` frames, so a warmed-up segment starts exactly where a single long
run was (the finite-memory rule of ``depth/temporal.py``). A cut is one glide from the old plane to the new.
"""

from __future__ import annotations

from collections import deque

import torch

from stereo_spot.stereo.frame_edges import EDGE_PERCENTILE, edge_strip_width
from stereo_spot.stereo.window import upper_value

#: the farthest the far end of the picture may sit behind the screen, % of the width (the report warns at 2)
MAX_UNCROSSED_PCT = 1.5
#: frames the plane's glide looks back (a second at 24 fps)
MEMORY = 24
#: the far end of the picture: the depth only this share of it lies beyond (its 2nd percentile)
FAR_SHARE = 0.02
#: depth maps are subsampled to about this many rows for the far end's percentile
_ROWS = 64


def plane_target(depth01: torch.Tensor, divergence: float, floor: float) -> list[float]:
    """Per frame of ``depth01`` [N,1,H,W] (0 far .. 1 near), the screen plane the rule above asks for."""
    n, _, h, w = depth01.shape
    strip = edge_strip_width(w)
    edges = torch.cat([depth01[:, 0, :, :strip].reshape(n, -1), depth01[:, 0, :, w - strip:].reshape(n, -1)], dim=1)
    edge = upper_value(edges.float(), 1.0 - EDGE_PERCENTILE / 100.0).tolist()
    step = max(1, h // _ROWS)
    far = upper_value(depth01[:, 0, ::step, ::step].reshape(n, -1).float(), FAR_SHARE, largest=False).tolist()
    targets = []
    for edge_depth, far_depth in zip(edge, far, strict=True):
        ceiling = far_depth + MAX_UNCROSSED_PCT / divergence if divergence > 0 else 1.0
        targets.append(max(floor, min(edge_depth, ceiling, 1.0)))
    return targets


class ScreenPlane:
    """The automatic screen plane of consecutive frames of one shot or segment."""

    memory = MEMORY

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._targets: deque[float] = deque(maxlen=MEMORY)

    def _step(self, target: float) -> float:
        self._targets.append(target)
        count = len(self._targets)
        weights = range(1, count + 1)  # oldest .. newest
        return sum(w * t for w, t in zip(weights, self._targets, strict=True)) / sum(weights)

    def update(self, depth01: torch.Tensor, divergence: float, floor: float) -> torch.Tensor:
        """The convergence of each of the next N frames, float [N] (0..1)."""
        return torch.tensor([self._step(t) for t in plane_target(depth01, divergence, floor)], dtype=torch.float32)
