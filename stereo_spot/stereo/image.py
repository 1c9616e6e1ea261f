"""Still images: one picture in, one packed stereo PNG out.

Reading keeps what the file has: 8- or 16-bit, grey or colour, with or without alpha (the alpha channel is
warped and packed along with the colour, so a cut-out stays a cut-out). The EXIF orientation of photos is
applied. A 16-bit input gives a 16-bit PNG.

With a disparity map (``.npy``, float32, H×W, pixels) the depth estimator is skipped: the right view takes each
left pixel at column x to x − d (positive d = in front of the screen), exactly as for video.

The RGB-D formats write the picture beside its estimated depth (``stereo_spot.stereo.pack``), alpha kept on the
picture's half and the depth's half opaque; a disparity map has no place there.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from stereo_spot.models import AnaglyphMethod, ConversionSettings, OutputFormat
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.pack import anaglyph, depth_picture, pack

#: Above this many pixels the right view is rendered in horizontal bands (the warp is row-wise), so memory
#: stays bounded for very large photos.
_BAND_PIXELS = 8_000_000
#: Rows of context above and below each band (the hole smoothing looks a few rows up and down).
_BAND_OVERLAP = 8


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(rgb float32 H×W×3 in 0..1, alpha H×W in 0..1 or None, bit depth 8 or 16)."""
    if not path.is_file():
        raise StereoInputError(f"image {path} does not exist")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.size == 0:
        raise StereoInputError(f"{path.name} is not an image OpenCV can read (png, jpg, bmp, webp, tif)")
    if raw.ndim == 3 and raw.shape[2] == 4:
        bgra = raw  # alpha images are taken as stored (PNGs carry no EXIF orientation in practice)
    else:
        # This flag set applies the EXIF orientation and keeps grey as grey and 16-bit as 16-bit.
        oriented = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
        bgra = oriented if oriented is not None else raw
    depth = 16 if bgra.dtype == np.uint16 else 8
    if bgra.dtype == np.uint8:
        values = bgra.astype(np.float32) / 255.0
    elif bgra.dtype == np.uint16:
        values = bgra.astype(np.float32) / 65535.0
    else:  # float TIFF/EXR and the like
        values = np.clip(np.nan_to_num(bgra.astype(np.float32)), 0.0, 1.0)
    if values.ndim == 2:
        values = values[..., None]
    channels = values.shape[2]
    alpha = None
    if channels == 1:
        rgb = np.repeat(values, 3, axis=2)
    elif channels == 2:  # grey + alpha
        rgb, alpha = np.repeat(values[..., :1], 3, axis=2), values[..., 1]
    else:
        rgb = values[..., 2::-1]  # BGR → RGB
        if channels >= 4:
            alpha = values[..., 3]
    return np.ascontiguousarray(rgb), alpha, depth


def write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, depth: int) -> None:
    scale = 65535.0 if depth == 16 else 255.0
    dtype = np.uint16 if depth == 16 else np.uint8
    planes = [rgb[..., 2], rgb[..., 1], rgb[..., 0]] + ([alpha] if alpha is not None else [])
    image = np.stack(planes, axis=-1)
    encoded = np.clip(image * scale + 0.5, 0, scale).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), encoded):
        raise StereoInputError(f"cannot write the PNG {path}")


def _check_disparity(disparity: np.ndarray, height: int, width: int, name: str) -> np.ndarray:
    values = np.asarray(disparity)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2 or values.shape != (height, width):
        raise StereoInputError(
            f"the disparity map is {'x'.join(map(str, values.shape))} but {name} is {height}x{width} (rows x "
            f"columns): give one float32 value per pixel, shape ({height}, {width})"
        )
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise StereoInputError(f"the disparity map must hold numbers (float32 pixels), not {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise StereoInputError("the disparity map has NaN or infinite values")
    return values


def _render_right(engine: StereoEngine, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """Right view [1,C,H,W], in horizontal bands for very large images."""
    _, _, h, w = left.shape
    if h * w <= _BAND_PIXELS:
        return engine.render_right(left, disparity).clone()
    band = max(_BAND_OVERLAP * 4, _BAND_PIXELS // w)
    parts = []
    for top in range(0, h, band):
        lo, hi = max(0, top - _BAND_OVERLAP), min(h, top + band + _BAND_OVERLAP)
        right = engine.render_right(left[:, :, lo:hi].contiguous(), disparity[:, :, lo:hi].contiguous())
        parts.append(right[:, :, top - lo : top - lo + min(band, h - top)].clone())
    return torch.cat(parts, dim=2)


@torch.inference_mode()
def convert_image(
    src: Path,
    dst: Path,
    settings: ConversionSettings,
    disparity: np.ndarray | None = None,
    device: str | None = None,
) -> Path:
    """Convert a still image to a packed stereo PNG; returns the path written (``dst``, with a ``.png``
    suffix if it had another one)."""
    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() != ".png":
        dst = dst.with_suffix(".png")
    rgb, alpha, bit_depth = read_image(src)
    h, w = rgb.shape[:2]
    engine = StereoEngine(settings, device=device)
    left = torch.from_numpy(rgb).to(engine.device).permute(2, 0, 1).unsqueeze(0)
    fmt = OutputFormat(settings.output_format)
    if fmt.is_rgbd:
        if disparity is not None:
            raise StereoInputError(f"--disparity renders a stereo pair; --format {fmt.value} writes the picture "
                                   "beside its estimated depth: leave one of them out")
        depth01 = engine.depth.estimate(left.contiguous())
        if alpha is not None:
            left = torch.cat([left, torch.from_numpy(np.ascontiguousarray(alpha)).to(engine.device).view(1, 1, h, w)],
                             dim=1)
        packed = pack(left, depth_picture(depth01, left.shape[1]), fmt)
        return _write_packed(dst, packed, alpha is not None, bit_depth)
    if disparity is None and settings.auto_divergence:
        from stereo_spot.stereo import auto_divergence
        from stereo_spot.stereo.disparity import depth_to_disparity

        depth01 = engine.depth.estimate(left.contiguous())
        engine.settings = settings = auto_divergence.apply(settings, auto_divergence.measure([depth01]))
        disp = depth_to_disparity(depth01, w, settings.divergence, settings.convergence)
    elif disparity is None:
        disp = engine.disparity(left.contiguous())
    else:
        values = _check_disparity(disparity, h, w, src.name)
        disp = torch.from_numpy(values).to(engine.device).view(1, 1, h, w)
    if alpha is not None:
        left = torch.cat([left, torch.from_numpy(np.ascontiguousarray(alpha)).to(engine.device).view(1, 1, h, w)],
                         dim=1)
    left = left.contiguous()
    right = _render_right(engine, left, disp)
    if settings.floating_window:  # a still's window is what its own edges need, no easing
        from stereo_spot.stereo.window import FloatingWindow, mask_views, viewer_disparity, viewer_swapped

        swapped = viewer_swapped(settings.output_format, settings.swap_eyes)
        left, right = mask_views(left, right, FloatingWindow().update(viewer_disparity(disp, swapped)), swapped)

    if fmt is OutputFormat.ANAGLYPH:
        first, second = (right, left) if settings.swap_eyes else (left, right)
        packed_rgb = anaglyph(first[:, :3], second[:, :3], AnaglyphMethod(settings.anaglyph))
        packed_alpha = torch.maximum(left[:, 3:], right[:, 3:]) if alpha is not None else None
        packed = torch.cat([packed_rgb, packed_alpha], dim=1) if packed_alpha is not None else packed_rgb
    else:
        packed = pack(left, right, fmt, swap_eyes=settings.swap_eyes)
    return _write_packed(dst, packed, alpha is not None, bit_depth)


def _write_packed(dst: Path, packed: torch.Tensor, has_alpha: bool, bit_depth: int) -> Path:
    packed_rgb, packed_alpha = packed[:, :3], (packed[:, 3:] if has_alpha else None)
    out_rgb = packed_rgb[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    out_alpha = packed_alpha[0, 0].clamp(0, 1).cpu().numpy() if packed_alpha is not None else None
    write_png(dst, out_rgb, out_alpha, bit_depth)
    return dst
