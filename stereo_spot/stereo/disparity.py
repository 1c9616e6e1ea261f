"""From normalised depth to screen disparity in pixels.

Conventions (used everywhere in the engine):

* ``depth01`` is relative *inverse* depth normalised to 0..1: 1 is the nearest thing in the shot, 0 the farthest.
* ``divergence`` is the largest disparity, in percent of the image width, between the nearest and the farthest
  point (the 3D "strength").
* ``convergence`` is the normalised depth that sits on the screen plane (zero disparity). Things nearer than it
  come out of the screen, farther ones go behind it.
* A disparity ``d`` in pixels is **positive for crossed disparity** (in front of the screen). The left view is the
  source frame and the right view takes each left pixel at column ``x`` to column ``x - d``.

So ``d = divergence / 100 * width * (depth01 - convergence)``: with the defaults (2 %, 0.5) a 1280-wide frame spans
-12.8 px (farthest, behind the screen) to +12.8 px (nearest, in front of it).
"""

from __future__ import annotations

import torch


def disparity_scale(width: int, divergence: float) -> float:
    """Pixels of disparity per unit of normalised depth."""
    return float(divergence) / 100.0 * float(width)


def depth_to_disparity(depth01: torch.Tensor, width: int, divergence: float,
                       convergence: float | torch.Tensor) -> torch.Tensor:
    """Disparity in pixels (positive = crossed, in front of the screen) for normalised inverse depth; the
    convergence is one value, or one per frame (float [N]: ``--convergence auto``)."""
    if isinstance(convergence, torch.Tensor):
        convergence = convergence.to(depth01.device, depth01.dtype).view(-1, *([1] * (depth01.dim() - 1)))
    else:
        convergence = float(convergence)
    return (depth01 - convergence) * disparity_scale(width, divergence)
