"""Models looked up by name (depth estimators, inpainters): ``--depth-model NAME``, ``--inpaint NAME``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import torch

from stereo_spot.stereo.errors import StereoInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → factory called as ``factory(weights=..., device=...)``. Factories import heavy libraries
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

    def create(self, name: str, weights: str | None = None, device: str | torch.device | None = None) -> T:
        factory = self._factories.get(name)
        if factory is None:
            raise StereoInputError(f"unknown {self.what} {name!r}; known: {', '.join(self.known())}")
        return factory(weights=weights, device=device)
