"""Packing a left/right pair into one frame: side-by-side, top-bottom (full or half), cross-eyed, VR180 and
red-cyan anaglyph; and a frame with its depth (RGB-D).

Layouts (W×H is the source frame):

* Full SBS: 2W × H, left eye on the left. Full TB: W × 2H, left eye on top. Cross: 2W × H with the right eye on
  the left, for cross-eyed free viewing. ``swap_eyes`` exchanges the two eyes in any layout.
* VR180: each eye projected onto a 180°×180° equirectangular square of S × S (``stereo_spot.stereo.equirect``),
  side by side: 2S × S.
* Half SBS: each eye squeezed to ceil(W/2) columns with an area filter, so 2·ceil(W/2) × H (W itself when W is
  even). Half TB likewise squeezes rows: W × 2·ceil(H/2). Both eyes always get the same size, which is what
  players assume when they split the frame in two.
* RGB-D: 2W × H, the source frame on the left and its depth on the right as grey, near = bright (``depth01``
  itself: 255 is the nearest thing in the shot, 0 the farthest), as nagadomi/nunif's iw3 writes ``--rgbd``
  (``iw3/utils.py``, ``apply_rgbd``: the per-frame min-max normalised inverse depth repeated over the colour
  channels, concatenated along the width). Half RGB-D squeezes both halves as Half SBS does. The colour is always
  on the left: Looking Glass and depth-aware players read it so, and there are no eyes to swap.
* Anaglyph: W × H. ``dubois`` applies Eric Dubois' least-squares red-cyan matrices to *linear* RGB (sRGB
  decoded, mixed, clipped, encoded again), as the method was derived on linear light; ``dubois2`` does the same
  with the revised matrices of his 2009 note "Conversion of a stereo pair to anaglyph with the least-squares
  projection method". ``color`` takes red from the left eye and green/blue from the right; ``half-color`` uses
  the left eye's luma as red (less rivalry on red objects); ``gray`` uses each eye's luma. ``wimmer`` is Peter
  Wimmer's optimized anaglyph (red = 0.7 G + 0.3 B of the left eye, green and blue of the right eye);
  ``wimmer2`` his improved method as described by McAllister, Zhou and Sullivan ("Methods for computing color
  anaglyphs", SPIE 2010): each eye's green and blue take in some of its red excess, and the left eye's mix of
  them is gamma-corrected (1/1.6) into the red channel. Luma is Rec.601 on the encoded values.
"""

from __future__ import annotations

import cv2
import torch
import torch.nn.functional as F

from stereo_spot.models import AnaglyphMethod, OutputFormat, left_eye_first
from stereo_spot.stereo import equirect

# Dubois red-cyan matrices (rows: output R, G, B; columns: input R, G, B), from E. Dubois, "A projection method
# to generate anaglyph stereo images", ICASSP 2001, as published on his web page.
DUBOIS_LEFT = (
    (0.456100, 0.500484, 0.176381),
    (-0.0400822, -0.0378246, -0.0157589),
    (-0.0152161, -0.0205971, -0.00546856),
)
DUBOIS_RIGHT = (
    (-0.0434706, -0.0879388, -0.00155529),
    (0.378476, 0.73364, -0.0184503),
    (-0.0721527, -0.112961, 1.2264),
)
# The revised matrices of Dubois' 2009 note (the ones his web page recommends today).
DUBOIS2_LEFT = (
    (0.437, 0.449, 0.164),
    (-0.062, -0.062, -0.024),
    (-0.048, -0.050, -0.017),
)
DUBOIS2_RIGHT = (
    (-0.011, -0.032, -0.007),
    (0.377, 0.761, 0.009),
    (-0.026, -0.093, 1.234),
)
_DUBOIS_MATRICES = {
    AnaglyphMethod.DUBOIS: (DUBOIS_LEFT, DUBOIS_RIGHT),
    AnaglyphMethod.DUBOIS2: (DUBOIS2_LEFT, DUBOIS2_RIGHT),
}
LUMA_601 = (0.299, 0.587, 0.114)
WIMMER_RED = (0.0, 0.7, 0.3)  # the left eye's contribution to the red channel in Wimmer's optimized anaglyph
# spatial video is packed side by side for its writer, which encodes the halves as two views (media/mvhevc.py)
_SIDE_BY_SIDE = (OutputFormat.SBS, OutputFormat.CROSS, OutputFormat.RGBD, OutputFormat.SPATIAL)
_HALF_SIDE_BY_SIDE = (OutputFormat.HSBS, OutputFormat.HALF_RGBD)


def half_size(n: int) -> int:
    """One eye's columns (rows) in a half-width (half-height) layout."""
    return (n + 1) // 2


def output_size(width: int, height: int, output_format: OutputFormat | str) -> tuple[int, int]:
    """(width, height) of a packed frame for a source of ``width`` × ``height``."""
    fmt = OutputFormat(output_format)
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if fmt in _SIDE_BY_SIDE:
        return 2 * width, height
    if fmt is OutputFormat.VR180:
        side = equirect.eye_size(width, height)
        return 2 * side, side
    if fmt in _HALF_SIDE_BY_SIDE:
        return 2 * half_size(width), height
    if fmt is OutputFormat.TB:
        return width, 2 * height
    if fmt is OutputFormat.HTB:
        return width, 2 * half_size(height)
    return width, height


def squeeze(eye: torch.Tensor, *, horizontal: bool) -> torch.Tensor:
    """Halve one eye [N,C,H,W] along W (or H) with an area filter (box average over the source footprint)."""
    _, _, h, w = eye.shape
    size = (h, half_size(w)) if horizontal else (half_size(h), w)
    if (horizontal and w % 2 == 0) or (not horizontal and h % 2 == 0):
        # exact pair average; avg_pool2d is faster than the adaptive path behind mode="area"
        kernel = (1, 2) if horizontal else (2, 1)
        return F.avg_pool2d(eye, kernel)
    return F.interpolate(eye, size=size, mode="area")


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055)


def _mix(eye: torch.Tensor, matrix) -> torch.Tensor:
    """Apply a 3×3 colour matrix to [N,3,H,W]."""
    m = torch.tensor(matrix, dtype=eye.dtype, device=eye.device)
    return torch.einsum("oc,nchw->nohw", m, eye)


def _luma(eye: torch.Tensor) -> torch.Tensor:
    return _mix(eye, (LUMA_601,))


def anaglyph(left: torch.Tensor, right: torch.Tensor, method: AnaglyphMethod | str) -> torch.Tensor:
    """Red-cyan anaglyph [N,3,H,W] from two float views in 0..1."""
    method = AnaglyphMethod(method)
    if left.shape[1] != 3 or right.shape[1] != 3:
        raise ValueError("anaglyph needs RGB views")
    if method in _DUBOIS_MATRICES:
        left_matrix, right_matrix = _DUBOIS_MATRICES[method]
        mixed = _mix(srgb_to_linear(left), left_matrix) + _mix(srgb_to_linear(right), right_matrix)
        return linear_to_srgb(mixed)
    if method is AnaglyphMethod.WIMMER2:
        left_g, left_b = _red_excess_mixed(left)
        right_g, right_b = _red_excess_mixed(right)
        red = (0.75 * left_g + 0.25 * left_b).clamp(0.0, 1.0) ** (1.0 / 1.6)
        return torch.cat([red, right_g, right_b], dim=1).clamp(0.0, 1.0)
    if method is AnaglyphMethod.COLOR:
        red = left[:, 0:1]
    elif method is AnaglyphMethod.WIMMER:
        red = _mix(left, (WIMMER_RED,)).clamp(0.0, 1.0)
    elif method is AnaglyphMethod.HALF_COLOR:
        red = _luma(left)
    else:  # GRAY
        red = _luma(left)
        gray_right = _luma(right)
        return torch.cat([red, gray_right, gray_right], dim=1)
    return torch.cat([red, right[:, 1:3]], dim=1)


def _red_excess_mixed(eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wimmer's improved method: green and blue of one eye with part of its red excess mixed in."""
    red, green, blue = eye[:, 0:1], eye[:, 1:2], eye[:, 2:3]
    return green + 0.45 * (red - green).clamp_min(0.0), blue + 0.25 * (red - blue).clamp_min(0.0)


def depth_picture(depth01: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """The right half of an RGB-D frame: ``depth01`` [N,1,H,W] (1 = nearest) as grey [N,channels,H,W], opaque
    where the frame has an alpha channel (a still's fourth channel)."""
    if depth01.dim() != 4 or depth01.shape[1] != 1:
        raise ValueError(f"depth must be [N,1,H,W], got {tuple(depth01.shape)}")
    grey = depth01.clamp(0.0, 1.0).expand(-1, min(channels, 3), -1, -1)
    if channels > 3:
        grey = torch.cat([grey, torch.ones_like(depth01).expand(-1, channels - 3, -1, -1)], dim=1)
    return grey.contiguous()


def pack(
    left: torch.Tensor,
    right: torch.Tensor,
    output_format: OutputFormat | str,
    anaglyph_method: AnaglyphMethod | str = AnaglyphMethod.DUBOIS,
    *,
    swap_eyes: bool = False,
) -> torch.Tensor:
    """Pack two float views [N,C,H,W] (0..1) into [N,C,H2,W2] with (W2, H2) = ``output_size(W, H, format)``. For
    the RGB-D layouts ``right`` is the depth picture (``depth_picture``) and ``swap_eyes`` does not apply."""
    if left.shape != right.shape:
        raise ValueError(f"left {tuple(left.shape)} and right {tuple(right.shape)} views differ in shape")
    fmt = OutputFormat(output_format)
    if fmt.is_rgbd:
        swap_eyes = False
    if fmt is OutputFormat.ANAGLYPH:
        return anaglyph(*((right, left) if swap_eyes else (left, right)), anaglyph_method)
    first, second = (left, right) if left_eye_first(fmt, swap_eyes) else (right, left)
    if fmt in _SIDE_BY_SIDE:
        return torch.cat([first, second], dim=3)
    if fmt is OutputFormat.TB:
        return torch.cat([first, second], dim=2)
    if fmt in _HALF_SIDE_BY_SIDE:
        return torch.cat([squeeze(first, horizontal=True), squeeze(second, horizontal=True)], dim=3)
    if fmt is OutputFormat.HTB:
        return torch.cat([squeeze(first, horizontal=False), squeeze(second, horizontal=False)], dim=2)
    if fmt is OutputFormat.VR180:
        side = equirect.eye_size(left.shape[3], left.shape[2])
        return torch.cat([equirect.project(first, side), equirect.project(second, side)], dim=3)
    raise ValueError(f"no packing for {fmt}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float 0..1 → uint8 with rounding."""
    return (x * 255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)


def _planes_to_uint8_torch(views: torch.Tensor, out: torch.Tensor) -> None:
    """float [N,C,H,W] 0..1 → ``out`` uint8 [N,H,W,C]; scales ``views`` in place."""
    scaled = views.mul_(255.0).add_(0.5).clamp_(0.0, 255.0)
    out.copy_(scaled.permute(0, 2, 3, 1))  # float → uint8 truncates: rounded by the + 0.5


def _planes_to_uint8_cv2(views: torch.Tensor, out: torch.Tensor) -> None:
    """float [N,C,H,W] 0..1 → ``out`` uint8 [N,H,W,C] with OpenCV: a scale-round-saturate per channel plane
    and an interleave, several times faster than torch's strided float→uint8 copy. ``views`` is clamped in
    place first (OpenCV's conversion takes the absolute value)."""
    views.clamp_(0.0, 1.0)
    target = out.numpy()
    for i in range(views.shape[0]):
        planes = [cv2.convertScaleAbs(views[i, ch].contiguous().numpy(), alpha=255.0)
                  for ch in range(views.shape[1])]
        merged = cv2.merge(planes)
        target[i] = merged if merged.ndim == 3 else merged[..., None]


def pack_uint8(
    left_u8: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    output_format: OutputFormat | str,
    anaglyph_method: AnaglyphMethod | str = AnaglyphMethod.DUBOIS,
    *,
    swap_eyes: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed frames as NHWC uint8 [N,H2,W2,C], the layout encoders take, written into ``out`` if given.

    ``left_u8`` is the source batch [N,H,W,C] uint8 and ``left`` the same frames as float NCHW. For the full
    layouts the left half is a byte copy of ``left_u8`` (bit-exact, no float round trip) and ``right`` is
    overwritten (clamped or scaled in place: it is scratch by then) while being converted into place. For the
    RGB-D layouts ``right`` is the depth picture (``depth_picture``).
    """
    fmt = OutputFormat(output_format)
    if fmt.is_rgbd:
        swap_eyes = False
    n, h, w, c = left_u8.shape
    out_w, out_h = output_size(w, h, fmt)
    if out is None:
        out = torch.empty((n, out_h, out_w, c), dtype=torch.uint8, device=left_u8.device)
    elif tuple(out.shape) != (n, out_h, out_w, c) or out.dtype != torch.uint8:
        raise ValueError(f"pack output buffer {tuple(out.shape)} {out.dtype} should be {(n, out_h, out_w, c)} uint8")
    if fmt in (*_SIDE_BY_SIDE, OutputFormat.TB):
        halves = (out[:, :, :w], out[:, :, w:]) if fmt in _SIDE_BY_SIDE else (out[:, :h], out[:, h:])
        left_half, right_half = halves if left_eye_first(fmt, swap_eyes) else halves[::-1]
        left_half.copy_(left_u8)
        if right.device.type == "cpu" and right.dtype == torch.float32 and c <= 4:
            _planes_to_uint8_cv2(right, right_half)
        else:
            _planes_to_uint8_torch(right, right_half)
        return out
    packed = pack(left, right, fmt, anaglyph_method, swap_eyes=swap_eyes)
    out.copy_(packed.permute(0, 2, 3, 1).mul_(255.0).add_(0.5).clamp_(0.0, 255.0))
    return out
