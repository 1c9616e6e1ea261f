"""One eye of a flat video projected onto a 180°×180° equirectangular half sphere (VR180).

The source is treated as a pinhole picture with a horizontal field of view of ``SOURCE_FOV_DEGREES``, centred on
the forward direction. Each output pixel is a direction (longitude, latitude) over −90°…90° in both; it takes the
source pixel its ray goes through (``u = f·x/z``, ``v = f·y/z``, square pixels), and black where the ray misses
the picture. A headset then shows the video as a flat screen at its natural angular size, in depth.

The square's side ``S`` keeps the source's angular resolution at the centre (an equirectangular pixel spans
π/S radians; the source's centre pixel spans 1/f), capped so the side-by-side frame stays within the 4096
columns that H.264 decoders in headsets accept.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

#: Horizontal field of view the flat source is assumed to cover (a typical camera lens).
SOURCE_FOV_DEGREES = 70.0
#: Largest side of one eye's square: 2 × 2048 columns side by side.
MAX_EYE_SIZE = 2048
MIN_EYE_SIZE = 64


def focal_length(width: int, fov_degrees: float = SOURCE_FOV_DEGREES) -> float:
    """The source's focal length in pixels for its horizontal field of view."""
    return (width / 2.0) / math.tan(math.radians(fov_degrees) / 2.0)


def eye_size(width: int, height: int) -> int:
    """Side S of one eye's equirectangular square for a ``width`` × ``height`` source (even, for 4:2:0)."""
    side = round(math.pi * focal_length(width))
    side = max(MIN_EYE_SIZE, min(MAX_EYE_SIZE, side))
    return side - side % 2


@lru_cache(maxsize=4)
def _grid(width: int, height: int, side: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample coordinates [1,S,S,2] of each output direction in the source (normalised, align_corners=False);
    directions that miss the picture point outside it (> 1), where sampling gives black."""
    f = focal_length(width)
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side - 0.5
    angles = centres * math.pi  # −π/2 … π/2
    lat, lon = torch.meshgrid(angles, angles, indexing="ij")
    x = torch.cos(lat) * torch.sin(lon)
    y = torch.sin(lat)  # image rows grow downwards, and so does latitude here
    z = torch.cos(lat) * torch.cos(lon)
    ahead = z > 1e-9
    safe_z = torch.where(ahead, z, torch.ones_like(z))
    gx = torch.where(ahead, 2.0 * f * x / safe_z / width, torch.full_like(z, 2.0))
    gy = torch.where(ahead, 2.0 * f * y / safe_z / height, torch.full_like(z, 2.0))
    return torch.stack([gx, gy], dim=-1).unsqueeze(0).to(device=device, dtype=dtype)


def project(eye: torch.Tensor, side: int) -> torch.Tensor:
    """Float views [N,C,H,W] → their VR180 equirectangular squares [N,C,S,S]."""
    n, _, height, width = eye.shape
    grid = _grid(width, height, side, str(eye.device), eye.dtype).expand(n, -1, -1, -1)
    return F.grid_sample(eye, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
