"""Depth estimators and their registry.

``create_depth_estimator(name, weights=None, device=None)`` builds one by name. ``heuristic`` needs no weights and
runs anywhere; neural models register themselves with ``register_depth_estimator(name, factory)`` where
``factory(weights=..., device=...)`` returns a ``DepthEstimator``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from stereo_spot.stereo.depth.base import DepthEstimator
from stereo_spot.stereo.errors import StereoInputError

DepthFactory = Callable[..., DepthEstimator]
_ESTIMATORS: dict[str, DepthFactory] = {}


def register_depth_estimator(name: str, factory: DepthFactory) -> None:
    """Make ``create_depth_estimator(name, ...)`` call ``factory(weights=..., device=...)``."""
    _ESTIMATORS[name] = factory


def known_depth_estimators() -> list[str]:
    return sorted(_ESTIMATORS)


def create_depth_estimator(
    name: str, weights: str | None = None, device: str | torch.device | None = None
) -> DepthEstimator:
    factory = _ESTIMATORS.get(name)
    if factory is None:
        raise StereoInputError(f"unknown depth model {name!r}; known: {', '.join(known_depth_estimators())}")
    return factory(weights=weights, device=device)


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
