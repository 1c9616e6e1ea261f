"""Edge-aware refinement: the guided filter (He, Sun, Tang) and its fast low-resolution form.

A depth map computed at low resolution has soft, misplaced edges. The guided filter fits, in every window, a
linear model ``depth ≈ a · luma + b``; where the frame has an edge the model follows it, where it is flat the
depth is smoothed. The fast form (He & Sun 2015) fits ``a, b`` at low resolution and applies them to the full
resolution luma, so depth edges snap to image edges for the price of one bilinear upsample of ``a, b``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stereo_spot.stereo.resample import resize

LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(frames: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] → [N,1,H,W] Rec.601 luma (OpenCV's RGB→gray on CPU: same weights, faster)."""
    if frames.device.type == "cpu" and frames.dtype == torch.float32:
        return _luma_cv2(frames)
    return _luma_torch(frames)


def _luma_cv2(frames: torch.Tensor) -> torch.Tensor:
    if frames.is_contiguous():  # planar
        out = np.empty((frames.shape[0], 1, *frames.shape[-2:]), np.float32)
        for i, (r, g, b) in enumerate(frames.numpy()):
            cv2.scaleAdd(b, LUMA_WEIGHTS[2], cv2.addWeighted(r, LUMA_WEIGHTS[0], g, LUMA_WEIGHTS[1], 0.0), out[i, 0])
        return torch.from_numpy(out)
    nhwc = frames.permute(0, 2, 3, 1).contiguous().numpy()
    gray = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in nhwc])
    return torch.from_numpy(gray).unsqueeze(1)


def _luma_torch(frames: torch.Tensor) -> torch.Tensor:
    r, g, b = frames[:, 0:1], frames[:, 1:2], frames[:, 2:3]
    out = r * LUMA_WEIGHTS[0]
    return out.add_(g, alpha=LUMA_WEIGHTS[1]).add_(b, alpha=LUMA_WEIGHTS[2])


def _box_cv2(x: torch.Tensor, k: int) -> torch.Tensor:
    planes = x.contiguous().view(-1, *x.shape[-2:]).numpy()
    out = np.empty_like(planes)
    for i, plane in enumerate(planes):
        out[i] = cv2.boxFilter(plane, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(out).view(x.shape)


def _box_torch(x: torch.Tensor, radius: int) -> torch.Tensor:
    k = 2 * radius + 1
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, *shape[-2:]), (radius, radius, radius, radius), mode="reflect")
    for dim in (-1, -2):  # running sums: O(1) per pixel whatever the radius
        csum = F.pad(padded.cumsum(dim), (1, 0) if dim == -1 else (0, 0, 1, 0))
        n = csum.shape[dim]
        padded = csum.narrow(dim, k, n - k) - csum.narrow(dim, 0, n - k)
    return (padded / (k * k)).view(shape)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)² window of [..., H, W], mirrored at the border (OpenCV's BORDER_REFLECT_101).

    OpenCV's box filter on CPU (a few times faster at the sizes used here), running sums in torch elsewhere."""
    radius = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)
    if radius <= 0:
        return x
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return _box_cv2(x, 2 * radius + 1)
    return _box_torch(x, radius)


def guided_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-averaged ``a, b`` of the guided filter for a one-channel guide [N,1,h,w] and input [N,1,h,w]."""
    stacked = torch.cat([guide, src, guide * src, guide * guide], dim=1)
    means = box_filter(stacked, radius)
    mean_i, mean_p, mean_ip, mean_ii = means.unbind(dim=1)
    var_i = mean_ii - mean_i * mean_i
    cov_ip = mean_ip - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    ab = box_filter(torch.stack([a, b], dim=1), radius)
    return ab[:, 0:1], ab[:, 1:2]


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    a, b = guided_coefficients(guide, src, radius, eps)
    return a * guide + b


def fast_guided_upsample(
    guide_small: torch.Tensor, src_small: torch.Tensor, guide_full: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """Refine ``src_small`` with the guided filter at low resolution and apply the model at full resolution."""
    a, b = guided_coefficients(guide_small, src_small, radius, eps)
    ab = resize(torch.cat([a, b], dim=1), tuple(guide_full.shape[-2:]), area=False)
    return torch.addcmul(ab[:, 1:2], ab[:, 0:1], guide_full)
