"""Models looked up by name (depth estimators, inpainters): ``--depth-model NAME``, ``--inpaint NAME``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from stereo_spot.stereo.errors import StereoInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → factory called as ``factory(weights=..., device=...[, precision=...])``. Factories import heavy libraries
    (transformers, diffusers) only when called, so registering costs nothing."""

    def __init__(self, what: str):
        self.what = what
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> None:
        self._factories[name] = factory

    def unregister(self, name: str) -> None:
        self._factories.pop(name, None)

    def known(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, weights: str | None = None, device: str | torch.device | None = None,
               precision: str = "auto") -> T:
        """The model ``name``; ``precision`` (``--precision``) goes to factories that take it, so a model
        registered with ``factory(weights, device)`` keeps working and computes as it chooses."""
        factory = self._factories.get(name)
        if factory is None:
            raise StereoInputError(f"unknown {self.what} {name!r}; known: {', '.join(self.known())}")
        if _takes_precision(factory):
            return factory(weights=weights, device=device, precision=str(precision))
        return factory(weights=weights, device=device)


def _takes_precision(factory: Callable[..., object]) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return any(p.name == "precision" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
