"""Forward warp of the left view into the right view, with depth ordering and sub-pixel splatting.

Every left pixel at column ``x`` with disparity ``d`` lands at ``t = x - d`` in the right view (see
``disparity.py`` for the sign convention). It is splatted onto the two nearest columns ``floor(t)`` and
``floor(t) + 1`` with linear weights, so sub-pixel disparities move edges smoothly instead of snapping.

Several left pixels can land on the same right pixel where something near passes in front of something far.
Near wins: a z-buffer holds, per target pixel, the largest disparity among the pixels whose *nearest* column it
is, and a contribution is kept only if its disparity is within ``z_tolerance`` pixels of that maximum. Building
the z-buffer from nearest columns only (not from every bilinear tap) keeps a near pixel's faint tap (weight < 0.5)
from hiding the background under it: such a tap still blends in, which anti-aliases occlusion edges.

Right pixels that received too little accepted weight are holes (disocclusions and the frame edge the view
moved away from); ``fill.py`` fills them. The warped disparity of a right pixel is the z-buffer's value there:
the disparity of the surface that is seen, which is what the fill compares to find the background side.

Everything is a handful of flat tensor ops (``scatter_reduce``/``scatter_add`` over all pixels of the batch), so
it runs the same on CPU and CUDA with no Python loop over pixels or rows. The accumulation is planar: one 1-D
scatter per channel and tap, so the index costs one int64 per tap (an interleaved layout needs one per value and
``index_add_`` over rows takes a slow path on CPU).

On CPU every fresh full-frame temporary is page-faulted in (expensive in VMs, often more than the arithmetic),
so a ``WarpWorkspace`` keeps the buffers of one frame size alive between calls and the ops write into them in
place; masks are float arithmetic rather than bool tensors, which take slow paths on CPU.
"""

from __future__ import annotations

import torch

#: A right pixel with less accepted splat weight than this is a hole. A pixel inside a stretched surface gets
#: about 1/stretch; one next to a disocclusion edge only a faint tap.
DEFAULT_MIN_WEIGHT = 0.3
#: Disparities within this many pixels of the nearest one at a target pixel count as the same surface.
DEFAULT_Z_TOLERANCE = 0.5
#: Stand-in for "no surface" in the warped disparity of a covered pixel with no z-buffer entry near it.
_UNKNOWN = 1e4
#: Target rows are padded by this many columns on each side; clamped off-frame taps land there and are dropped.
_PAD = 2


class WarpWorkspace:
    """Reusable buffers for warping frames of one shape. Results returned with a workspace are views into it,
    valid until its next use. Not thread-safe: one per engine."""

    def __init__(self) -> None:
        self.key: tuple | None = None

    def prepare(self, n: int, c: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> None:
        key = (n, c, h, w, device, dtype)
        if key == self.key:
            return
        # Ordinary tensors, even when first used under torch.inference_mode(): those could not be written in
        # place outside it later, and these buffers are written on every call.
        with torch.inference_mode(False):
            self._allocate(n, c, h, w, device, dtype)
        self.key = key

    def _allocate(self, n: int, c: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> None:
        p = n * h * w
        wp = w + 2 * _PAD
        f32 = {"device": device, "dtype": dtype}
        i64 = {"device": device, "dtype": torch.int64}
        self.xs = torch.arange(w, **f32)
        self.row_base = torch.arange(n * h, **i64).view(n, h, 1) * wp
        self.frac = torch.empty(p, **f32)
        self.tmp = torch.empty(p, **f32)
        self.w0 = torch.empty(p, **f32)
        self.w1 = torch.empty(p, **f32)
        self.v = torch.empty(p, **f32)
        self.thr = torch.empty(p, **f32)
        self.idx = torch.empty(p, **i64)
        self.acc = torch.empty(n * h * wp, **f32)
        self.zbuf = torch.empty(n * h * wp, **f32)
        self.inv = torch.empty((n * h, w), **f32)
        self.out = torch.empty((c + 1, n * h, w), **f32)


def forward_warp(
    left: torch.Tensor,
    disparity: torch.Tensor,
    *,
    z_tolerance: float = DEFAULT_Z_TOLERANCE,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    workspace: WarpWorkspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render the right view from ``left`` [N,C,H,W] and ``disparity`` [N,1,H,W] (pixels, crossed positive).

    Returns ``(right [N,C,H,W], hole_mask [N,1,H,W] bool, warped_disparity [N,1,H,W])``. Hole pixels of ``right``
    are 0 and their warped disparity is 0. ``right`` and ``warped_disparity`` share one planar buffer (contiguous
    NCHW when N == 1), which belongs to ``workspace`` when one is given (valid until its next use). Memory grows
    with N: on CPU, call it a frame at a time with a ``workspace``.
    """
    if left.dim() != 4 or disparity.dim() != 4 or disparity.shape[1] != 1:
        raise ValueError(f"forward_warp wants left [N,C,H,W] and disparity [N,1,H,W], got "
                         f"{tuple(left.shape)} and {tuple(disparity.shape)}")
    n, c, h, w = left.shape
    if disparity.shape[0] != n or disparity.shape[2:] != (h, w):
        raise ValueError(f"disparity {tuple(disparity.shape)} does not match the frames {tuple(left.shape)}")
    dtype = left.dtype if left.is_floating_point() else torch.float32
    ws = workspace or WarpWorkspace()
    ws.prepare(n, c, h, w, left.device, dtype)
    wp = w + 2 * _PAD
    d = disparity.to(dtype).reshape(n, h, w)
    dflat = d.reshape(-1)
    frac, tmp = ws.frac.view(n, h, w), ws.tmp.view(n, h, w)

    # t = x - d; nearest column round(t) feeds the z-buffer, floor(t) and floor(t) + 1 get the taps.
    torch.sub(ws.xs, d, out=frac)  # frac holds t for now
    torch.add(frac, _PAD + 0.5, out=tmp).floor_().clamp_(0, wp - 1)
    ws.idx.view(n, h, w).copy_(tmp).add_(ws.row_base)  # the nearest column, flat
    zbuf = ws.zbuf.fill_(float("-inf"))
    zbuf.scatter_reduce_(0, ws.idx, dflat, reduce="amax", include_self=True)

    torch.floor(frac, out=tmp)
    frac.sub_(tmp)  # now the fractional part
    tmp.add_(_PAD).clamp_(0, wp - 2)  # the left tap's padded column; off-frame taps land in the padding
    ws.idx.view(n, h, w).copy_(tmp).add_(ws.row_base)
    # The right tap's index is idx + 1: instead of a second index tensor, it addresses buffers offset by one
    # element (``buf[1:]``), which scatter and gather take as ordinary contiguous views.

    # Keep a tap if its disparity is within the tolerance of the z-buffer (nearest surface) there:
    # accept = clamp((d + tol - z) * 1e4 + 1, 0, 1), a step over 1e-4 px done in float arithmetic (bool masks
    # take slow paths on CPU). An empty z-buffer cell (-inf: a stretched surface with no nearest pixel)
    # accepts every tap.
    scale = 1e4
    torch.add(dflat, z_tolerance + 1.0 / scale, out=ws.thr).mul_(scale)
    for taps, weight in ((zbuf, ws.w0), (zbuf[1:], ws.w1)):
        torch.index_select(taps, 0, ws.idx, out=ws.v)
        torch.add(ws.thr, ws.v, alpha=-scale, out=ws.v).clamp_(0.0, 1.0)
        if weight is ws.w0:
            torch.sub(1.0, ws.frac, out=weight).mul_(ws.v)
        else:
            torch.mul(ws.frac, ws.v, out=weight)

    acc = ws.acc
    acc_rows = acc.view(n * h, wp)[:, _PAD : _PAD + w]

    def splat(values: torch.Tensor | None) -> torch.Tensor:
        """Sum of the taps' weights (or weighted values) per right pixel, as a [N*H, W] view of ``acc``."""
        acc.zero_()
        if values is None:
            acc.scatter_add_(0, ws.idx, ws.w0)
            acc[1:].scatter_add_(0, ws.idx, ws.w1)
        else:
            acc.scatter_add_(0, ws.idx, torch.mul(values, ws.w0, out=ws.v))
            acc[1:].scatter_add_(0, ws.idx, torch.mul(values, ws.w1, out=ws.v))
        return acc_rows

    weight = splat(None)
    hole = weight < min_weight
    inv, safe = ws.inv, tmp.view(n * h, w)
    torch.sub(weight, min_weight, out=inv).mul_(scale).add_(1.0).clamp_(0.0, 1.0)  # 1 if covered enough
    inv.div_(torch.clamp(weight, min=min_weight, out=safe))  # so holes come out 0
    # Deinterleave the colour channels once (a channels-last frame stores them interleaved) so each plane is
    # read contiguously twice below.
    src = left.permute(1, 0, 2, 3).to(dtype).contiguous().view(c, -1)
    for i, plane in enumerate(src):
        torch.mul(splat(plane), inv, out=ws.out[i])
    # The disparity of each right pixel is the z-buffer's (the nearest surface there). A pixel inside a
    # stretched surface can have no nearest source: it takes its neighbours' nearer value.
    z = zbuf.view(n * h, wp)
    warped = ws.out[c]
    torch.maximum(z[:, _PAD - 1 : _PAD - 1 + w], z[:, _PAD + 1 : _PAD + 1 + w], out=warped)
    torch.where(z[:, _PAD : _PAD + w] > float("-inf"), z[:, _PAD : _PAD + w], warped, out=warped)
    warped.clamp_(min=-_UNKNOWN).mul_(torch.sign(inv, out=safe))  # holes become 0, no -inf survives
    out = ws.out.view(c + 1, n, h, w)
    right = out[:c].permute(1, 0, 2, 3)  # NCHW (contiguous when N == 1)
    warped_disparity = out[c].unsqueeze(1)
    return right, hole.view(n, 1, h, w), warped_disparity
