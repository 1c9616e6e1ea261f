"""Depth estimators and their registry.

``create_depth_estimator(name, weights=None, device=None)`` builds one by name. ``heuristic`` needs no weights and
runs anywhere; neural models register themselves with ``register_depth_estimator(name, factory)`` where
``factory(weights=..., device=...)`` returns a ``DepthEstimator``.
"""

from __future__ import annotations

import torch

from stereo_spot.stereo.depth.base import DepthEstimator
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.registry import Registry

DEPTH_MODELS: Registry[DepthEstimator] = Registry("depth model")
register_depth_estimator = DEPTH_MODELS.register
known_depth_estimators = DEPTH_MODELS.known
create_depth_estimator = DEPTH_MODELS.create


def _heuristic_factory(weights: str | None = None, device: str | torch.device | None = None) -> DepthEstimator:
    from stereo_spot.stereo.depth.heuristic import HeuristicDepth

    if weights:
        raise StereoInputError("the heuristic depth model takes no weights (drop --depth-weights)")
    return HeuristicDepth(device=device)


def _depth_anything_factory(weights: str | None = None, device: str | torch.device | None = None
                            ) -> DepthEstimator:
    # Imported on use: transformers is an optional dependency and slow to import.
    from stereo_spot.stereo.depth.depth_anything import DepthAnythingDepth

    return DepthAnythingDepth(weights, device)


register_depth_estimator("heuristic", _heuristic_factory)
register_depth_estimator("depth-anything", _depth_anything_factory)

__all__ = ["DepthEstimator", "create_depth_estimator", "known_depth_estimators", "register_depth_estimator"]
