"""The depth estimator of a conversion that renders from a depth video: none. The engine takes each frame's depth
as handed in with the frame (``StereoEngine.convert_batch(..., depth=...)``), so no model is loaded; asking this
one for an estimate means a frame came without its depth, which is a fault in the caller."""

from __future__ import annotations

import torch

from stereo_spot.stereo.depth.base import DepthEstimator
from stereo_spot.stereo.errors import StereoInputError


class GivenDepth(DepthEstimator):
    name = "depth video"

    def reset(self) -> None:
        """Nothing to forget: the depth video is the state."""

    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        raise StereoInputError("this conversion renders from a depth video, and a frame came without its depth")
