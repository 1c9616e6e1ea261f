"""``--auto-divergence``: divergence and convergence chosen from the depth the scene actually has.

Measured once per job, before the segments are converted (in the chunk step, on the source), so every segment
uses the same values. The depth estimator runs on a few short runs of consecutive frames spread over the video
(consecutive, because the heuristic estimator's strongest cue is motion parallax; a neural model only needs the
last frame of each run), and the normalised depth of the last frame of every run is pooled.

The rule, with ``q(p)`` the p-th percentile of the pooled depth (0 far … 1 near):

* **convergence** = the larger of ``q(75)`` and the 90th percentile of the depth along the left and right frame
  edges (strips of 2 % of the width). The first puts the nearest quarter of the picture (by area) in front of
  the screen and the rest behind it, the usual split of a depth budget (about 25 % in front, 75 % behind). The
  second keeps what touches the frame edges at or behind the screen: something in front of the screen cut by
  the frame edge is a window violation, the most common discomfort of converted video (with the heuristic
  estimator the ground at the bottom corners is the usual culprit);
* **divergence** = the largest value that keeps the far end (``q(2)``) within ``UNCROSSED_TARGET_PCT`` of the
  width behind the screen and the near end (``q(98)``) within ``CROSSED_TARGET_PCT`` in front of it, and at most
  ``MAX_DIVERGENCE_PCT``, at least ``MIN_DIVERGENCE_PCT``.

With ``--convergence auto`` as well, the screen plane moves frame by frame (``stereo/screen_plane.py``): the
job's convergence is then ``q(75)`` alone, the floor the plane never goes in front of, while the divergence is
still sized for the plane at the edges' depth, so wherever the plane rises to the edges the far end stays within
its target.

The targets sit below the limits the comfort report warns at (``stereo_spot.report``), with a margin because the
conversion's depth differs a little from the sampled frames': behind the screen the parallax must stay under
the eye separation (about 65 mm) on the screen the video is shown on — 1 % of the width is 65 mm on a 6.5 m
wide screen, so the result is comfortable from a phone to a small cinema —, in front of it viewers tolerate
about twice as much. A scene whose depth really spans little (a flat wall: the estimators
keep it compressed) is not blown up beyond ``MAX_DIVERGENCE_PCT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.frame_edges import EDGE_PERCENTILE, edge_strip_width

UNCROSSED_TARGET_PCT = 0.9
CROSSED_TARGET_PCT = 2.0
MAX_DIVERGENCE_PCT = 3.0
MIN_DIVERGENCE_PCT = 0.5
CONVERGENCE_PERCENTILE = 75.0
#: Positions sampled over the video, and frames per run at each.
SAMPLES = 8
RUN_FRAMES = 6
#: Depth maps are pooled at about this many pixels each.
_POOL_PIXELS = 4096


@dataclass
class DepthMeasurement:
    """Pooled normalised depth of sampled frames: its percentiles (keys 2, 25, 50, 75, 98) and the
    ``EDGE_PERCENTILE``-th percentile of the depth along the left and right frame edges (None: not measured)."""

    percentiles: dict[float, float]
    frames: int = 0
    edge: float | None = None
    extra: dict = field(default_factory=dict)


def _numpy(depth: torch.Tensor | np.ndarray) -> np.ndarray:
    return depth.detach().float().cpu().numpy() if isinstance(depth, torch.Tensor) else np.asarray(depth)


def measure(depth_maps: list[torch.Tensor] | list[np.ndarray]) -> DepthMeasurement:
    """Pool depth maps (0..1; 2-D maps, or anything whose last axis is the image width) into percentiles."""
    pooled, edges = [], []
    for depth in depth_maps:
        values = _numpy(depth)
        flat = values.reshape(-1)
        pooled.append(flat[:: max(1, flat.size // _POOL_PIXELS)])
        if values.ndim >= 2:
            strip = edge_strip_width(values.shape[-1])
            edges += [values[..., :strip].reshape(-1), values[..., -strip:].reshape(-1)]
    if not pooled:
        raise ValueError("no depth maps to measure")
    values = np.concatenate(pooled).astype(np.float64)
    keys = (2.0, 25.0, 50.0, CONVERGENCE_PERCENTILE, 98.0)
    edge = float(np.percentile(np.concatenate(edges), EDGE_PERCENTILE)) if edges else None
    return DepthMeasurement(dict(zip(keys, (float(v) for v in np.percentile(values, keys)), strict=True)),
                            frames=len(pooled), edge=edge)


def choose(measurement: DepthMeasurement, auto_convergence: bool = False) -> tuple[float, float]:
    """(divergence % of width, convergence 0..1) by the rule in the module docstring; with ``auto_convergence``
    the convergence is the floor of the automatic screen plane."""
    q = measurement.percentiles
    lo, hi = q[2.0], q[98.0]
    floor = convergence = float(np.clip(q[CONVERGENCE_PERCENTILE], 0.0, 1.0))
    if measurement.edge is not None:
        convergence = max(convergence, measurement.edge)
    convergence = float(np.clip(convergence, 0.0, 1.0))
    limits = [MAX_DIVERGENCE_PCT]
    if convergence - lo > 1e-6:
        limits.append(UNCROSSED_TARGET_PCT / (convergence - lo))
    if hi - convergence > 1e-6:
        limits.append(CROSSED_TARGET_PCT / (hi - convergence))
    divergence = float(np.clip(min(limits), MIN_DIVERGENCE_PCT, MAX_DIVERGENCE_PCT))
    return round(divergence, 3), round(floor if auto_convergence else convergence, 3)


def apply(settings: ConversionSettings, measurement: DepthMeasurement) -> ConversionSettings:
    divergence, convergence = choose(measurement, settings.auto_convergence)
    return settings.model_copy(update={"divergence": divergence, "convergence": convergence})


@torch.inference_mode()
def measure_video(path: Path, settings: ConversionSettings, rotation: int = 0,
                  window: tuple[float | None, float | None] = (None, None), device: str | None = None,
                  samples: int = SAMPLES, run_frames: int = RUN_FRAMES) -> DepthMeasurement:
    """Run the job's depth estimator on ``samples`` short runs of frames spread over ``window`` of the video."""
    from stereo_spot.media.frames import read_frames
    from stereo_spot.media.probe import probe, require_video
    from stereo_spot.stereo.depth import create_depth_estimator
    from stereo_spot.stereo.engine import default_device, frames_to_tensor

    info = probe(Path(path))
    video = require_video(info)
    begin = window[0] if window[0] is not None else video.start_seconds
    end = window[1] if window[1] is not None else video.start_seconds + info.duration_seconds
    span = max(0.0, end - begin)
    target = torch.device(device) if device is not None else default_device()
    estimator = create_depth_estimator(settings.depth_model, settings.depth_weights, target)
    maps = []
    for k in range(samples):
        start = begin + span * (k + 0.5) / samples - run_frames / (2 * float(video.fps or 25))
        run = []
        for frame in read_frames(path, rotation=rotation, window=(max(begin, start), end)):
            run.append(frame.rgb)
            if len(run) == run_frames:
                break
        if not run:
            continue
        estimator.reset()
        depth = None
        for rgb in run:
            _, left = frames_to_tensor(rgb[None], target)
            depth = estimator.estimate(left)
        maps.append(depth[0, 0])
    if not maps:
        raise ValueError(f"{Path(path).name}: no frames to measure the depth range in")
    return measure(maps)
