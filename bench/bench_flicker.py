"""Flicker of static regions, the comfort report's ``flicker_index``, on the sample clip and real footage.

Each clip's first ``--seconds`` are converted by the engine with the default settings (heuristic depth), the
comfort statistics gathered as a conversion gathers them, and the flicker index computed as the report computes
it: the mean frame-to-frame change of the parallax over static pixels (luma unchanged) as a share of the
parallax span (p2..p98). "before" is the heuristic depth without what steadies it (``BEFORE``: no per-pixel
temporal filter, the 0..1 scale from the whole estimate's range, flow trusted where the picture did not
change); "after" is the defaults. One run prints both figures and their ratio.

    python bench/bench_flicker.py [--seconds 4] [--clips vtest.avi Megamind.avi]

The sample clip is converted whole (6 s, as ``stereo-spot sample`` writes it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import real_clips  # noqa: E402

from stereo_spot.media.frames import read_frames  # noqa: E402
from stereo_spot.models import ConversionSettings  # noqa: E402
from stereo_spot.report import _percentile  # noqa: E402
from stereo_spot.sample import write_sample  # noqa: E402
from stereo_spot.stereo.depth.heuristic import HeuristicDepth, HeuristicParams  # noqa: E402
from stereo_spot.stereo.engine import StereoEngine  # noqa: E402
from stereo_spot.stereo.stats import ComfortStats, histogram_counts  # noqa: E402

#: the heuristic depth with its steadying switched off
BEFORE = HeuristicParams(steady_frames=1, motion_headroom=None, motion_luma_gate=0.0)


def flicker_index(frames: np.ndarray, params: HeuristicParams) -> float:
    engine = StereoEngine(ConversionSettings(), device="cpu", depth=HeuristicDepth("cpu", params))
    engine.stats = ComfortStats()
    for start in range(0, len(frames), 8):
        engine.convert_batch(frames[start:start + 8])
    stats = engine.stats.to_dict()
    counts = histogram_counts(stats)
    span = max(_percentile(counts, 98) - _percentile(counts, 2), 0.05)
    return stats["flicker_sum_pct"] / max(stats["flicker_pixels"], 1) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="of each real clip")
    parser.add_argument("--clips", nargs="*", default=["vtest.avi", "Megamind.avi", "box.mp4", "cup.mp4"],
                        help="real clips by file name (bench/real_data.py)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clips["sample (stereo-spot sample)"] = write_sample(Path(tmp) / "s.mp4")
        by_name = {p.name: p for p in real_clips()}
        for name in args.clips:
            if name in by_name:
                clips[name] = by_name[name]
            else:
                print(f"{name}: no real data (run scripts/fetch-real-data)")
        print(f"Flicker index of static regions (comfort report definition), defaults; real clips: first "
              f"{args.seconds:g} s")
        print(f"  {'clip':>28} {'frames':>7} {'before':>11} {'after':>10} {'ratio':>7}")
        for name, path in clips.items():
            seconds = None if name.startswith("sample") else args.seconds
            frames = np.stack([f.rgb for f in read_frames(path, window=(None, seconds))])
            off, on = flicker_index(frames, BEFORE), flicker_index(frames, HeuristicParams())
            print(f"  {name:>28} {len(frames):7d} {off:11.5f} {on:10.5f} {on / max(off, 1e-12):7.3f}")


if __name__ == "__main__":
    main()
