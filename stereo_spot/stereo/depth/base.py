"""The depth-estimator interface every model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from stereo_spot.stereo.depth.cuts import SceneCuts


class DepthEstimator(ABC):
    """Relative inverse depth for batches of consecutive frames of one shot.

    ``estimate`` takes float frames [N,3,H,W] in 0..1 on the estimator's device and returns [N,1,H,W] in 0..1,
    near = large. Successive calls continue the same shot: an estimator keeps whatever temporal state it needs
    (previous frame, running depth range) so the output does not flicker from batch to batch. ``reset`` starts a
    new shot; estimators also reset themselves at scene cuts they detect.
    """

    name: str = "depth"
    #: Frames of history that shape the next estimate: a segment's warm-up feeds at least this many frames of
    #: the previous segment so that it starts in the state a continuous run would have had.
    memory_frames: int = 0

    @abstractmethod
    def reset(self) -> None:
        """Forget the temporal state."""

    @abstractmethod
    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] float 0..1 → [N,1,H,W] normalised inverse depth (0 far … 1 near)."""


class ShotEstimator(DepthEstimator):
    """An estimator that finds scene cuts itself (``self._cuts``, a ``SceneCuts`` the subclass makes) and
    starts its temporal state over at each: ``reset`` forgets the cut detector and the shot alike."""

    _cuts: SceneCuts

    @property
    def cuts_detected(self) -> int:
        return self._cuts.count

    def reset(self) -> None:
        self._cuts.reset()
        self._start_shot()

    @abstractmethod
    def _start_shot(self) -> None:
        """Forget what the previous shot left (its depth range, flow history, steadying, stream)."""

