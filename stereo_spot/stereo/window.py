"""The floating window: per-eye masks at the left and right frame edges that keep the stereo window in front of
whatever the frame edge cuts.

Something in front of the screen (crossed parallax) that touches a frame edge contradicts the edge: the edge,
at screen depth, hides an object that should stand in front of it. Stereographers fix it by moving the window
itself forward at that edge: masking the left edge of the **left** eye's image by ``w`` pixels puts the window's
left edge at a crossed disparity of ``w`` (the left eye sees it at column ``w``, the right eye at 0), and masking
the right edge of the **right** eye's image puts the right window edge ``w`` pixels forward. The layouts and the
frame-packing metadata do not change: the masks are applied to each eye's view before packing.

The rule, per edge and per frame:

* **need**: the crossed disparity (pixels) at the ``NEED_QUANTILE`` of the strip along the edge the comfort
  report watches (``stats.BORDER_STRIP`` of the width, at least 2 columns). Below it lies all but a share
  of the strip smaller than the report's ``BORDER_SHARE``, so the masked frame does not count as a violation;
  nothing in front of the screen at the edge: zero, no mask;
* **held**: this frame's need, raised towards each larger need of the last ``RELEASE_FRAMES`` frames by a
  weight that falls with its age along a raised cosine (1 for this frame … 0 after ``RELEASE_FRAMES``): the
  window follows a need that grows at once and eases down slowly when it shrinks, so it never flutters with
  the depth's noise;
* **width**: the mean of the held values of the last ``ATTACK_FRAMES`` frames: a short ease-in instead of a
  jump when something new comes forward. A cut is one transition: an ease-in or an ease-out, never both.

The state looks back exactly ``memory`` = ``RELEASE_FRAMES + ATTACK_FRAMES - 1`` frames, so a segment that
first feeds that many frames of the previous one (``StereoEngine.warm_up``) has the window a single long run
had, and parallel segments join without a seam. Widths are fractional: the column at the mask's inner edge is
darkened by its covered fraction, so a window that moves by a tenth of a pixel moves smoothly on screen.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from stereo_spot.models import OutputFormat
from stereo_spot.stereo.stats import BORDER_SHARE, BORDER_STRIP

#: the share of the edge strip allowed beyond the window (half the share the report counts as a violation)
NEED_QUANTILE = 1.0 - BORDER_SHARE / 2
#: frames over which the window eases out after the need shrinks (about a second at 24 fps)
RELEASE_FRAMES = 22
#: frames over which it eases in when the need grows
ATTACK_FRAMES = 3

_RELEASE_WEIGHTS = [0.5 * (1.0 + math.cos(math.pi * age / RELEASE_FRAMES)) for age in range(RELEASE_FRAMES)]


def edge_strip(width: int) -> int:
    """Columns along each frame edge that the window (and the comfort report) watches."""
    return max(2, round(BORDER_STRIP * width))


def upper_value(values: torch.Tensor, share: float, largest: bool = True) -> torch.Tensor:
    """Per row of ``values`` [N, M], the value that only ``share`` of the row exceeds (the smallest of its
    largest ``ceil(share * M)`` values; ``largest=False``: the largest of its smallest). A partial selection
    (``topk``), many times faster than ``torch.quantile``'s full sort, and free of its size limit."""
    k = min(values.shape[1], max(1, math.ceil(share * values.shape[1])))
    top = torch.topk(values, k, dim=1, largest=largest, sorted=False).values
    return top.amin(dim=1) if largest else top.amax(dim=1)


@torch.inference_mode()
def edge_needs(disparity: torch.Tensor) -> torch.Tensor:
    """Per frame, the crossed disparity (pixels, >= 0) the left and right window edges must stand in front of:
    float [N, 2] (left, right) for disparities [N,1,H,W] in pixels, crossed positive."""
    n, _, _, w = disparity.shape
    strip = min(edge_strip(w), w)
    sides = torch.stack([disparity[:, 0, :, :strip].reshape(n, -1), disparity[:, 0, :, w - strip:].reshape(n, -1)],
                        dim=1).float()
    return upper_value(sides.reshape(2 * n, -1), 1.0 - NEED_QUANTILE).view(n, 2).clamp_min(0.0).cpu()


class FloatingWindow:
    """The window of consecutive frames of one shot or segment; ``update`` takes each batch's disparities and
    returns the widths (pixels) to mask at the left edge of the left eye and the right edge of the right eye."""

    memory = RELEASE_FRAMES + ATTACK_FRAMES - 1

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._needs: deque[tuple[float, float]] = deque(maxlen=RELEASE_FRAMES)
        self._held: deque[tuple[float, float]] = deque(maxlen=ATTACK_FRAMES)

    def _step(self, need: tuple[float, float]) -> tuple[float, float]:
        self._needs.append(need)
        # each earlier need pulls the window towards itself, less the older it is: from a larger need the
        # window eases down to this frame's along the whole raised cosine, reaching it with no kink
        held = tuple(max(need[side] + weight * (earlier[side] - need[side])
                         for weight, earlier in zip(_RELEASE_WEIGHTS, reversed(self._needs), strict=False))
                     for side in (0, 1))
        self._held.append(held)
        return tuple(sum(h[side] for h in self._held) / len(self._held) for side in (0, 1))

    def update(self, disparity: torch.Tensor) -> torch.Tensor:
        """Widths float [N, 2] (left, right) in pixels for the disparities [N,1,H,W] of the next N frames."""
        needs = edge_needs(disparity).tolist()
        return torch.tensor([self._step((left, right)) for left, right in needs], dtype=torch.float32)


def _keep(widths: torch.Tensor, width: int, edge: str, device: torch.device) -> tuple[slice, torch.Tensor] | None:
    """The columns a mask of ``widths`` [N] pixels at the ``edge`` ("left" or "right") touches, and how much of
    each stays ([N, columns], 1 = untouched); None when there is no mask."""
    columns = min(width, math.ceil(float(widths.max()))) if len(widths) else 0
    if columns <= 0:
        return None
    x = torch.arange(columns, device=device, dtype=torch.float32)  # distance from the edge
    keep = 1.0 - (widths.to(device).view(-1, 1) - x.view(1, -1)).clamp(0.0, 1.0)
    return (slice(0, columns), keep) if edge == "left" else (slice(width - columns, width), keep.flip(1))


def _mask(view: torch.Tensor, widths: torch.Tensor, edge: str) -> None:
    """Darken one edge of float views [N,C,H,W] in place (colour only: an alpha channel keeps its values)."""
    band = _keep(widths, view.shape[-1], edge, view.device)
    if band is not None:
        view[:, :3, :, band[0]] *= band[1][:, None, None, :]


def viewer_swapped(output_format: OutputFormat | str, swap_eyes: bool) -> bool:
    """Whether the viewer's left eye sees the rendered right view: with ``--swap-eyes``, except on the cross-eyed
    layout, which it turns back into a left-right picture viewed parallel (the left view still reaches the
    left eye, as it does viewed cross-eyed)."""
    return swap_eyes and OutputFormat(output_format) is not OutputFormat.CROSS


def _eyes(left: torch.Tensor, right: torch.Tensor, swapped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # the widths of swapped eyes were measured on the disparity as the viewer sees it (``viewer_disparity``)
    return (right, left) if swapped else (left, right)


def viewer_disparity(disparity: torch.Tensor, swapped: bool) -> torch.Tensor:
    """The disparity as the viewer sees it (crossed positive): eyes swapped for the viewer invert it."""
    return -disparity if swapped else disparity


def mask_views(left: torch.Tensor, right: torch.Tensor, widths: torch.Tensor, swapped: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask float views [N,C,H,W] in place, ``widths`` [N, 2] pixels: the left edge of the viewer's left eye and
    the right edge of the right eye (``swapped``: ``viewer_swapped``). Only after the hole fill (the inpainter
    reads the unmasked left view; it keeps copies of its own output, never the views)."""
    viewer_left, viewer_right = _eyes(left, right, swapped)
    _mask(viewer_left, widths[:, 0], "left")
    _mask(viewer_right, widths[:, 1], "right")
    return left, right


def apply_window(left_u8: torch.Tensor, left: torch.Tensor, right: torch.Tensor, widths: torch.Tensor,
                 swapped: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask_views`` for the engine's batches, whose left view also travels as the uint8 NHWC source
    ``left_u8`` (the full layouts copy it byte for byte): returns the masked (left_u8, left); ``left_u8`` is a
    new tensor when it changes (on CPU it is the caller's frames)."""
    mask_views(left, right, widths, swapped)
    side, edge = (1, "right") if swapped else (0, "left")
    band = _keep(widths[:, side], left.shape[-1], edge, left.device)
    if band is not None:
        left_u8 = left_u8.clone()
        masked = left_u8[:, :, band[0]].float() * band[1][:, None, :, None]
        left_u8[:, :, band[0]] = masked.add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
    return left_u8, left
