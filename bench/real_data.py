"""Where the benchmarks find real footage and a real stereo pair (``scripts/fetch-real-data`` puts them there).

``$STEREO_SPOT_REAL_DATA``, else ``~/.cache/stereo-spot/real-data``. Every function returns ``None`` when the
data is not there, so a benchmark can print "no real data (run scripts/fetch-real-data)" instead of a number.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: real clips, static camera first (the flicker of static regions is cleanest there)
CLIPS = ("vtest.avi", "Megamind.avi", "box.mp4", "cup.mp4", "tree.avi")


def real_data_dir() -> Path | None:
    folder = Path(os.environ.get("STEREO_SPOT_REAL_DATA") or Path.home() / ".cache/stereo-spot/real-data")
    return folder if (folder / "aloeGT.png").is_file() else None


def real_clips() -> list[Path]:
    folder = real_data_dir()
    return [folder / name for name in CLIPS if (folder / name).is_file()] if folder else []


def stereo_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The Middlebury "Aloe" pair: (left RGB uint8 [H,W,3], right RGB uint8, left-view disparity float32 [H,W]
    in pixels, NaN where unknown). The right view's pixel (x - d, y) shows the left view's (x, y)."""
    folder = real_data_dir()
    if folder is None:
        return None
    import cv2

    left = cv2.cvtColor(cv2.imread(str(folder / "aloeL.jpg")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(folder / "aloeR.jpg")), cv2.COLOR_BGR2RGB)
    disparity = cv2.imread(str(folder / "aloeGT.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
    disparity[disparity == 0] = np.nan
    return left, right, disparity
