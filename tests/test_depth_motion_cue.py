"""The heuristic depth's motion cue, on a clip where motion parallax contradicts the position prior.

The layered test clips elsewhere put their near layers lower in the frame, so the vertical-position prior alone
ranks them right. Here the camera moves sideways past a scene whose nearest object hangs in the upper part of
the frame (it moves fastest) while a far band fills the bottom (it moves almost like the background): only the
motion cue can put the upper object in front. Textures have the same statistics on every layer, so the texture
cue does not tell them apart either.

What each test is there to catch (each breakage was made on purpose and the test went red):

* ``test_motion_parallax_beats_the_position_prior`` — the motion cue switched off (``weight_motion = 0``)
  or its sign inverted. (Dropping the far-motion reference alone does not fail it: the noise floor subtracted
  from the residual, 1.5 x its median, already removes a uniform pan.)
* ``test_without_the_motion_cue_the_prior_would_win`` — that the clip really contradicts the prior: with the
  motion weight at 0 the bottom band comes out nearer (if this one fails, the first test proves nothing).
"""

from __future__ import annotations

import numpy as np
import torch

from stereo_spot.stereo.depth.heuristic import HeuristicDepth, HeuristicParams
from stereo_spot.stereo.synthetic import render_layers

W, H, FRAMES = 160, 96, 14


def contradicting_clip(width: int = W, height: int = H, frames: int = FRAMES, seed: int = 7
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Frames N×H×W×3 uint8 and true inverse depth N×H×W: a near box high in the frame, a far band at the
    bottom, a background wall; each layer shifts by (0.15 + inverse depth) × speed per frame."""
    layers = [  # (inverse depth, box as fractions x0, y0, x1, y1, texture seed)
        (0.0, None, 1),
        (0.1, (0.0, 0.62, 1.0, 1.0), 2),  # far band along the bottom: the position prior calls it nearest
        (1.0, (0.35, 0.08, 0.65, 0.45), 3),  # the nearest object, in the upper half
    ]
    return render_layers(layers, width, height, frames, 0.02 * width, seed)


def _estimate(params: HeuristicParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    frames, truth = contradicting_clip()
    estimator = HeuristicDepth(params=params)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        depth = torch.cat([estimator.estimate(x[i:i + 1]) for i in range(len(x))])[:, 0].numpy()
    return depth, truth


def _near_and_band(depth: np.ndarray, truth: np.ndarray) -> list[tuple[float, float]]:
    return [(float(depth[i][truth[i] == 1.0].mean()), float(depth[i][np.isclose(truth[i], 0.1)].mean()))
            for i in range(4, len(depth))]


def test_motion_parallax_beats_the_position_prior():
    depth, truth = _estimate()
    for i, (near, band) in enumerate(_near_and_band(depth, truth)):
        assert near > band + 0.15, (i + 4, near, band)


def test_without_the_motion_cue_the_prior_would_win():
    depth, truth = _estimate(HeuristicParams(weight_motion=0.0))
    assert all(band > near for near, band in _near_and_band(depth, truth))
