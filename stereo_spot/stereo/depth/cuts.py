"""Where one shot ends and the next begins: the one rule every piece of the depth's temporal state obeys.

A hard cut changes the picture as a whole: its brightness distribution (the L1 distance of 32-bin luma
histograms, 0..2) **and** its pixels (the mean absolute luma change, 0..1) both jump. Either alone is not enough:
a flash or a fade moves the histogram with the same content, a fast pan changes every pixel with the same
histogram. A depth estimator asks ``SceneCuts.update`` with every frame's luma (at its working resolution, the
same size from frame to frame) and, on a cut, forgets everything it carried from the previous shot — the flow,
the pooled depth range, the steadying filter's history — so the new shot's depth is what a fresh start on it
gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SceneCuts:
    """Detects hard cuts between consecutive frames; ``count`` says how many it found since it was made."""

    #: L1 distance of the normalised luma histograms above which the brightness distribution changed
    histogram_distance: float = 0.5
    #: mean absolute luma change (0..1) above which the pixels changed
    mean_difference: float = 0.1
    bins: int = 32
    count: int = 0
    _histogram: torch.Tensor | None = field(default=None, repr=False)
    _gray: torch.Tensor | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Forget the previous frame: the next one is compared with nothing (a new video)."""
        self._histogram = None
        self._gray = None

    def update(self, gray: torch.Tensor) -> bool:
        """Luma [..., h, w] 0..1 of the next frame → True when it starts a new shot. A frame of another size
        than the previous one always does (it cannot continue the same shot)."""
        gray = gray.detach().float()
        histogram = torch.histc(gray, bins=self.bins, min=0.0, max=1.0)
        histogram = histogram / histogram.sum().clamp_min(1.0)
        cut = False
        if self._gray is not None and self._histogram is not None:
            if self._gray.shape != gray.shape:
                cut = True
            else:
                distance = float((histogram - self._histogram).abs().sum())
                change = float((gray - self._gray).abs().mean())
                cut = distance > self.histogram_distance and change > self.mean_difference
        self._histogram, self._gray = histogram, gray.clone()
        if cut:
            self.count += 1
        return cut
