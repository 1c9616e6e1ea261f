"""Filling the holes the forward warp leaves, and the registry of inpainters.

A hole in the right view is background that the left camera could not see (it was behind something nearer), so
it must be filled with *background*, never by smearing the foreground edge into it. Along each row, a hole run
is bounded by a valid pixel on its left and one on its right; the one with the smaller warped disparity is the
farther surface and supplies the fill. A hole at the frame border has only one side to take from.

The fill continues the background's texture into the hole by mirroring it about the background edge: the hole
pixel k pixels in from the edge takes the background pixel k pixels beyond it, as long as that pixel is visible
and on the same surface (its disparity within ``MIRROR_TOLERANCE`` of the edge pixel's); where it is not, the
edge pixel itself. Copying the one edge pixel across the whole run (the older fill) smears it into streaks; the
mirror keeps the texture's scale and its correlation with what lies next to the hole (measured on a real stereo
pair in docs/engine.md: +0.5 dB whole frame, +0.7 dB on the hole pixels).

The classical fill is vectorised and touches only the hole pixels: the runs of holes come from the transitions of
the mask along each row, each run picks its background column, each pixel its mirrored source, and one gather
copies them. An optional vertical smoothing, restricted to hole pixels, breaks up the horizontal streaks of a
row-wise copy.

``Inpainter`` (``stereo/inpainter.py``, re-exported here) is the plug-in point for better fills (e.g. a video
diffusion inpainter): register a factory with ``register_inpainter`` and select it by name
(``ConversionSettings.inpaint``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.inpainter import Inpainter
from stereo_spot.stereo.registry import Registry

#: Hole pixels are averaged with hole pixels up to this many rows above and below (0 turns it off), taking every
#: ``DEFAULT_SMOOTH_STEP``-th row: ±9 rows in steps of 3 is 7 taps, the cost of ±3 dense rows, and the measured best
#: of the spans and steps tried on the real pair within the fill's time budget (docs/engine.md).
DEFAULT_SMOOTH_ROWS = 9
DEFAULT_SMOOTH_STEP = 3
#: A mirrored source pixel belongs to the background surface if its disparity is within this many pixels of the
#: background edge pixel's.
MIRROR_TOLERANCE = 1.0


@dataclass
class HoleRuns:
    """Maximal horizontal runs of hole pixels, row-major. ``rows`` index flattened (frame, row) pairs."""

    rows: torch.Tensor  # [R] int64
    starts: torch.Tensor  # [R] first hole column
    stops: torch.Tensor  # [R] one past the last hole column


def hole_runs(hole_mask: torch.Tensor) -> HoleRuns:
    """Find the runs of a mask [N,1,H,W] from its 0→1 and 1→0 transitions along each row."""
    n, _, h, w = hole_mask.shape
    m = hole_mask.reshape(n * h, w).to(torch.int8)
    edge = torch.zeros((n * h, 1), dtype=torch.int8, device=m.device)
    step = torch.diff(m, dim=1, prepend=edge, append=edge)  # [R, W+1]: +1 at a start, -1 one past an end
    changes = step.nonzero()  # row-major, so within a row starts and ends alternate, a start first
    starts_here = step[changes[:, 0], changes[:, 1]] > 0
    begin, end = changes[starts_here], changes[~starts_here]
    return HoleRuns(rows=begin[:, 0], starts=begin[:, 1], stops=end[:, 1])


def background_sources(runs: HoleRuns, warped_disparity: torch.Tensor, width: int) -> torch.Tensor:
    """For each run, the column of the valid pixel to copy: the farther (smaller disparity) of the pixels just
    left and just right of the run, or the only one that exists at a frame border. A run that spans its whole
    row (no valid pixel) gets column 0."""
    disp = warped_disparity.reshape(-1, width)
    left = runs.starts - 1
    right = runs.stops
    has_left = left >= 0
    has_right = right < width
    d_left = disp[runs.rows, left.clamp(min=0)]
    d_right = disp[runs.rows, right.clamp(max=width - 1)]
    use_left = has_left & (~has_right | (d_left <= d_right))
    return torch.where(use_left, left, right).clamp_(0, width - 1)


def mirrored_sources(runs: HoleRuns, background_col: torch.Tensor, pixel: torch.Tensor, run: torch.Tensor,
                     hole_mask: torch.Tensor, warped_disparity: torch.Tensor, width: int,
                     tolerance: float = MIRROR_TOLERANCE) -> torch.Tensor:
    """Flat source index (over N*H*W) for each hole pixel ``pixel`` of run ``run``: the background mirrored about
    the run's background column (k pixels into the hole → k pixels beyond the edge), or the edge pixel itself
    where the mirrored one is outside the frame, a hole, or another surface."""
    edge = background_col[run]
    x = pixel % width
    outward = torch.where(edge < x, -1, 1)  # from the hole towards the background, along the row
    mirror = edge + outward * ((x - edge).abs() - 1)
    row_start = runs.rows[run] * width
    candidate = row_start + mirror.clamp(0, width - 1)
    edge_flat = row_start + edge
    disp, holes = warped_disparity.reshape(-1), hole_mask.reshape(-1)
    same_surface = (disp[candidate] - disp[edge_flat]).abs() <= tolerance
    usable = same_surface & ~holes[candidate] & (mirror >= 0) & (mirror < width)
    return torch.where(usable, candidate, edge_flat)


def _run_pixels(runs: HoleRuns, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel index (over N*H*W) of every hole pixel and the index of the run it belongs to."""
    lengths = runs.stops - runs.starts
    run_of_pixel = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    first_pixel = torch.cumsum(lengths, 0) - lengths  # position of each run's first pixel in the list
    offset = torch.arange(len(run_of_pixel), device=lengths.device) - first_pixel[run_of_pixel]
    pixel = (runs.rows * width + runs.starts)[run_of_pixel] + offset
    return pixel, run_of_pixel


def _smooth_vertically(planes: torch.Tensor, holes: torch.Tensor, pixel: torch.Tensor, height: int,
                       width: int, rows: int, step: int = 1) -> torch.Tensor:
    """New values for the hole pixels ``pixel`` of ``planes`` [C, N*H*W]: the mean over the hole pixels
    every ``step`` rows within ``rows`` rows above and below in the same frame (a row-wise copy leaves
    horizontal streaks). All offsets are gathered at once ([K, P] indices): a handful of ops for any K."""
    y = (pixel // width) % height
    reach = rows // step * step
    offsets = torch.arange(-reach, reach + 1, step, device=pixel.device).unsqueeze(1)  # [K,1], 0 included
    inside = ((y + offsets) >= 0) & ((y + offsets) < height)  # [K,P]: the neighbour is in the same frame
    neighbour = (pixel + offsets * width).clamp_(0, holes.numel() - 1)
    weight = (holes[neighbour] & inside).to(planes.dtype)  # [K,P]
    total = (planes[:, neighbour] * weight).sum(1)  # [C,P]
    return total / weight.sum(0).clamp_min(1.0)


def fill_holes(
    right: torch.Tensor,
    hole_mask: torch.Tensor,
    warped_disparity: torch.Tensor,
    *,
    smooth_rows: int = DEFAULT_SMOOTH_ROWS,
    smooth_step: int = DEFAULT_SMOOTH_STEP,
    mirror: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """Fill the hole pixels of ``right`` [N,C,H,W] from the background side of each row (see module doc).

    Works on the hole pixels only (a few percent of the frame): finds the runs, picks each run's background
    column, copies the background mirrored about it (``mirror=False``: the edge pixel across the whole run), then
    optionally smooths the filled pixels vertically. Returns planar [N,C,H,W] (channel planes
    contiguous); with ``inplace`` it writes into ``right`` itself when ``right`` is already planar.
    """
    n, c, h, w = right.shape
    if hole_mask.shape != (n, 1, h, w) or warped_disparity.shape != (n, 1, h, w):
        raise ValueError(f"hole mask {tuple(hole_mask.shape)} and disparity {tuple(warped_disparity.shape)} "
                         f"must be [N,1,H,W] for frames {tuple(right.shape)}")
    planar = right.permute(1, 0, 2, 3)  # channel planes [C,N,H,W]
    out = planar.contiguous() if inplace else planar.clone(memory_format=torch.contiguous_format)
    runs = hole_runs(hole_mask)
    if len(runs.rows) == 0:
        return out.permute(1, 0, 2, 3)
    planes = out.view(c, -1)
    source_col = background_sources(runs, warped_disparity, w)
    pixel, run = _run_pixels(runs, w)
    if mirror:
        source = mirrored_sources(runs, source_col, pixel, run, hole_mask, warped_disparity, w)
    else:
        source = (runs.rows * w + source_col)[run]
    planes[:, pixel] = planes[:, source]
    if smooth_rows > 0:
        holes = hole_mask.reshape(-1)
        planes[:, pixel] = _smooth_vertically(planes, holes, pixel, h, w, smooth_rows, smooth_step)
    return out.permute(1, 0, 2, 3)


# --- pluggable inpainters -------------------------------------------------------------------------------


class ClassicalInpainter(Inpainter):
    """Background-side row fill continuing the background's texture (mirrored), with vertical smoothing: fast,
    no weights."""

    name = "classical"

    def __init__(self, smooth_rows: int = DEFAULT_SMOOTH_ROWS, smooth_step: int = DEFAULT_SMOOTH_STEP) -> None:
        self.smooth_rows = smooth_rows
        self.smooth_step = smooth_step

    def inpaint(self, right, hole_mask, warped_disparity, left=None):
        return fill_holes(right, hole_mask, warped_disparity, smooth_rows=self.smooth_rows,
                          smooth_step=self.smooth_step, inplace=True)


INPAINTERS: Registry[Inpainter] = Registry("inpainter")
register_inpainter = INPAINTERS.register
known_inpainters = INPAINTERS.known
create_inpainter = INPAINTERS.create


def _classical_factory(weights: str | None = None, device: str | torch.device | None = None) -> Inpainter:
    if weights:
        raise StereoInputError("the classical inpainter takes no weights (drop --inpaint-weights)")
    return ClassicalInpainter()


def _diffusion_factory(weights: str | None = None, device: str | torch.device | None = None,
                       precision: str = "auto") -> Inpainter:
    # Imported on use: diffusers is an optional dependency and slow to import.
    from stereo_spot.stereo.inpaint_diffusion import DiffusionInpainter

    return DiffusionInpainter(weights, device, precision=precision)


register_inpainter("classical", _classical_factory)
register_inpainter("diffusion", _diffusion_factory)
