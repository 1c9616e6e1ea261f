"""The interface every hole filler implements, the classical fill (``fill``) and the video diffusion inpainter
(``inpaint_diffusion``) alike; ``fill`` keeps the registry that picks one by name. Kept apart from both so that
the diffusion inpainter, which ``fill``'s registry loads on demand, does not import ``fill`` back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Inpainter(ABC):
    """Fills the holes of warped right views. May keep state across calls within a shot (``reset`` between)."""

    name: str = "inpainter"
    #: frames it wants per call: above 1, the engine warps a whole batch first and inpaints it in one call
    frames_per_call: int = 1
    #: frames of the previous segment it should see (inpainted) before the segment starts: its temporal context
    context_frames: int = 0

    def reset(self) -> None:  # noqa: B027 - stateless inpainters need nothing
        """Forget any temporal state (a new shot or a new segment)."""

    @abstractmethod
    def inpaint(
        self,
        right: torch.Tensor,
        hole_mask: torch.Tensor,
        warped_disparity: torch.Tensor,
        left: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``right`` [N,C,H,W] with holes (``hole_mask`` [N,1,H,W] True) filled; ``left`` is the source view.
        May overwrite ``right`` (the engine hands over a scratch buffer)."""
