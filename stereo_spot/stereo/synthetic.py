"""Synthetic stereo scenes with known geometry, rendered exactly for both eyes (tests and the quality bench).

A scene is a stack of textured planes (rectangles or ellipses, optionally slanted so their disparity changes
across x, optionally moving). Each view is rendered by ray casting per sample with a z-buffer (the plane with
the largest disparity at a sample is the visible one), with horizontal supersampling for anti-aliased edges.
The right view samples every plane at its own left-view coordinate, so it is the true right view — including
what the left view cannot see — not a warp of the left view.

Textures are analytic (sums of oriented sinusoids from coarse to 3-pixel periods plus a hashed per-texel pattern)
so they can be evaluated at any sub-pixel position without resampling error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Plane:
    """A textured patch. Disparity at left-view column x is ``disparity + slope * x`` (pixels, crossed +)."""

    disparity: float
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in left-view pixels; None: everything
    ellipse: bool = False
    slope: float = 0.0
    seed: int = 0
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per frame, for clips

    def at_frame(self, index: int) -> Plane:
        if self.box is None or self.velocity == (0.0, 0.0):
            return self
        dx, dy = self.velocity[0] * index, self.velocity[1] * index
        x0, y0, x1, y1 = self.box
        return Plane(self.disparity, (x0 + dx, y0 + dy, x1 + dx, y1 + dy), self.ellipse, self.slope, self.seed,
                     self.velocity)


@dataclass
class StereoViews:
    left: np.ndarray  # H×W×3 float32 0..1
    right: np.ndarray  # H×W×3 float32 0..1, the true right view
    disparity: np.ndarray  # H×W float32, of the visible surface at each left pixel centre
    disoccluded: np.ndarray  # H×W bool: right-view pixels whose surface point the left view does not show
    plane_index: np.ndarray = field(repr=False)  # H×W int: visible plane at each left pixel centre


def texture(seed: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Colour (…×3, 0..1) of texture ``seed`` at plane coordinates (u, v) in pixels."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.25, 0.75, size=3)
    out = np.broadcast_to(base, (*np.broadcast(u, v).shape, 3)).astype(np.float32).copy()
    for period in (64.0, 23.0, 9.0, 4.5, 3.1):
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(0.04, 0.1) * rng.uniform(0.5, 1.0, size=3)
        wave = np.sin((u * np.cos(angle) + v * np.sin(angle)) * (2 * np.pi / period) + phase)
        out += wave[..., None] * amplitude
    # A piecewise-constant pattern on an 11-pixel lattice: sharp edges at arbitrary sub-pixel positions.
    cell = (np.floor(u / 11.0) * 73856093 + np.floor(v / 11.0) * 19349663 + seed * 83492791).astype(np.int64)
    hashed = ((cell * 2654435761) % 1000).astype(np.float32) / 1000.0
    out += (hashed[..., None] - 0.5) * 0.15
    return np.clip(out, 0.0, 1.0)


def _plane_disparity(plane: Plane, x: np.ndarray) -> np.ndarray:
    return plane.disparity + plane.slope * x


def _covers(plane: Plane, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if plane.box is None:
        return np.ones(np.broadcast(x, y).shape, bool)
    x0, y0, x1, y1 = plane.box
    if plane.ellipse:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def _cast(planes: list[Plane], xs: np.ndarray, ys: np.ndarray, right_eye: bool
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For view sample positions: (colour, visible plane index, its disparity, left-view x of the point)."""
    shape = np.broadcast(xs, ys).shape
    best = np.full(shape, -np.inf, np.float32)
    index = np.full(shape, -1, np.int64)
    source_x = np.zeros(shape, np.float64)
    for k, plane in enumerate(planes):
        if right_eye:
            # x_r = x - (d0 + s x)  =>  x = (x_r + d0) / (1 - s)
            x = (xs + plane.disparity) / (1.0 - plane.slope)
        else:
            x = np.broadcast_to(xs, shape).astype(np.float64)
        d = _plane_disparity(plane, x)
        hit = _covers(plane, x, ys) & (d > best)
        best = np.where(hit, d, best)
        index = np.where(hit, k, index)
        source_x = np.where(hit, x, source_x)
    colour = np.zeros((*shape, 3), np.float32)
    for k, plane in enumerate(planes):
        mask = index == k
        if mask.any():
            ox, oy = (plane.box[0], plane.box[1]) if plane.box is not None else (0.0, 0.0)
            colour[mask] = texture(plane.seed, source_x[mask] - ox, np.broadcast_to(ys, shape)[mask] - oy)
    return colour, index, best, source_x


def render(planes: list[Plane], width: int, height: int, supersample: int = 4) -> StereoViews:
    """Render both views of ``planes`` (the first should be a background covering the frame)."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(width)[:, None] + offsets[None, :]).reshape(-1)[None, :]  # supersampled columns
    views = []
    for right_eye in (False, True):
        colour, _, _, _ = _cast(planes, xs, ys, right_eye)
        views.append(colour.reshape(height, width, supersample, 3).mean(axis=2))
    centres = np.arange(width, dtype=np.float64)[None, :] + 0.5
    _, left_index, left_disp, _ = _cast(planes, centres, ys, right_eye=False)
    _, right_index, _, right_source = _cast(planes, centres, ys, right_eye=True)
    # A right-view point is visible in the left view when the left pixel at its position shows the same plane.
    col = np.floor(right_source).astype(np.int64)
    inside = (col >= 0) & (col < width)
    rows = np.broadcast_to(np.arange(height)[:, None], col.shape)
    seen = np.zeros(col.shape, bool)
    seen[inside] = left_index[rows[inside], col[inside]] == right_index[inside]
    return StereoViews(left=views[0].astype(np.float32), right=views[1].astype(np.float32),
                       disparity=left_disp.astype(np.float32), disoccluded=~seen, plane_index=left_index)


def layered_scene(width: int, height: int, seed: int = 0, divergence_px: float | None = None) -> list[Plane]:
    """A background wall (slanted) and two nearer shapes, with disparities spanning about 2 % of the width."""
    rng = np.random.default_rng(seed)
    span = divergence_px if divergence_px is not None else 0.02 * width
    background = Plane(-0.4 * span, None, slope=rng.uniform(-0.1, 0.1) * span / width, seed=seed * 10 + 1)
    mid_w, mid_h = rng.uniform(0.25, 0.4) * width, rng.uniform(0.3, 0.5) * height
    mid_x, mid_y = rng.uniform(0.05, 0.5) * width, rng.uniform(0.1, 0.3) * height
    middle = Plane(0.1 * span, (mid_x, mid_y, mid_x + mid_w, mid_y + mid_h), ellipse=bool(rng.integers(2)),
                   seed=seed * 10 + 2)
    near_w, near_h = rng.uniform(0.15, 0.3) * width, rng.uniform(0.25, 0.4) * height
    near_x, near_y = rng.uniform(0.3, 0.7) * width, rng.uniform(0.45, 0.6) * height
    near = Plane(0.6 * span, (near_x, near_y, near_x + near_w, min(height - 1.0, near_y + near_h)),
                 ellipse=not middle.ellipse, seed=seed * 10 + 3)
    return [background, middle, near]


Layer = tuple[float, tuple[float, float, float, float] | None, int]  # inverse depth, box (fractions), texture


def parallax_clip(width: int, height: int, frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A clip of a camera moving sideways past a layered scene: (frames N×H×W×3 uint8, true inverse depth
    N×H×W in 0..1). Nearer layers sit lower in the frame and move faster (motion parallax)."""
    rng = np.random.default_rng(seed)
    layers = [
        (0.0, None, 1),
        (0.5, (rng.uniform(0.05, 0.3), 0.25, rng.uniform(0.45, 0.6), 0.6), 2),
        (1.0, (rng.uniform(0.4, 0.6), 0.55, rng.uniform(0.75, 0.95), 0.95), 3),
    ]
    return render_layers(layers, width, height, frames, 0.004 * width, seed)


def render_layers(layers: list[Layer], width: int, height: int, frames: int, speed: float, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Frames of textured layers (back to front) that each shift sideways by (0.15 + inverse depth) × ``speed``
    pixels per frame, and their true inverse depth. ``box`` None is a wall filling the frame; a box spanning
    the whole width is a band, masked by rows only, so it never slides out of the picture."""
    out = np.zeros((frames, height, width, 3), np.uint8)
    depth = np.zeros((frames, height, width), np.float32)
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    for i in range(frames):
        frame = np.zeros((height, width, 3), np.float32)
        inv = np.zeros((height, width), np.float32)
        for value, box, tex in layers:
            shift = (0.15 + value) * speed * i
            u = np.broadcast_to(xs - shift, (height, width))
            v = np.broadcast_to(ys, (height, width))
            if box is None:
                mask, origin = np.ones((height, width), bool), (0.0, 0.0)
            else:
                x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
                if box[0] == 0.0 and box[2] == 1.0:
                    mask, origin = (v >= y0) & (v < y1), (0.0, y0)
                else:
                    mask, origin = (u >= x0) & (u < x1) & (v >= y0) & (v < y1), (x0, y0)
            colour = texture(seed * 10 + tex, u - origin[0], v - origin[1])
            frame[mask] = colour[mask]
            inv[mask] = value
        out[i] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
        depth[i] = inv
    return out, depth
