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


def known_depth_estimators() -> list[str]:
    """Registered models and the hub models by name (``stereo_spot.hub_models``)."""
    from stereo_spot.hub_models import CATALOG

    return sorted({*DEPTH_MODELS.known(), *(n for n, m in CATALOG.items() if m.engine_model in DEPTH_MODELS.known())})


def create_depth_estimator(name: str, weights: str | None = None, device: str | torch.device | None = None,
                           precision: str = "auto") -> DepthEstimator:
    """A registered model with the weights given, or a hub model by name (``NAME[@REVISION]``) with the weights
    of its cached or downloaded snapshot; ``precision`` as ``--precision`` asks."""
    from stereo_spot import hub_models

    found = hub_models.lookup(name)
    if found is None:
        return DEPTH_MODELS.create(name, weights, device, precision)
    hub_models.refuse_weights(name, weights)
    return DEPTH_MODELS.create(found[0].engine_model, str(hub_models.snapshot_for_process(name)), device, precision)


def _heuristic_factory(weights: str | None = None, device: str | torch.device | None = None) -> DepthEstimator:
    from stereo_spot.stereo.depth.heuristic import HeuristicDepth

    if weights:
        raise StereoInputError("the heuristic depth model takes no weights (drop --depth-weights)")
    return HeuristicDepth(device=device)


def _depth_anything_factory(weights: str | None = None, device: str | torch.device | None = None,
                            precision: str = "auto") -> DepthEstimator:
    # Imported on use: transformers is an optional dependency and slow to import.
    from stereo_spot.stereo.depth.depth_anything import DepthAnythingDepth

    return DepthAnythingDepth(weights, device, precision=precision)


def _video_depth_anything_factory(weights: str | None = None, device: str | torch.device | None = None,
                                  precision: str = "auto") -> DepthEstimator:
    from stereo_spot.stereo.depth.video_depth_anything import VideoDepthAnythingDepth

    return VideoDepthAnythingDepth(weights, device, precision=precision)


register_depth_estimator("heuristic", _heuristic_factory)
register_depth_estimator("depth-anything", _depth_anything_factory)
register_depth_estimator("video-depth-anything", _video_depth_anything_factory)

__all__ = ["DepthEstimator", "create_depth_estimator", "known_depth_estimators", "register_depth_estimator"]
