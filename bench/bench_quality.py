"""3D quality on synthetic scenes with known depth, as numbers measured in one run.

    1. Renderer: the right view rendered from the TRUE disparity (forward warp + background-side fill) against
       the true right view of a layered scene rendered exactly for both eyes; PSNR over the whole frame and over
       the disoccluded pixels, next to a naive baseline (nearest-pixel forward warp with a z-buffer, holes filled
       by copying the neighbouring pixel on the left).                          target: >= 2 dB better overall
    2. Depth: the heuristic estimator's Spearman rank correlation with the true inverse depth on moving clips
       (two independent scene generators).
    3. --stages: per-frame time of each engine stage at 1280x720 on CPU (one torch thread), next to the
       per-frame time of the encoder (libx264 preset fast crf 18, 2560x720) measured in the same run.

    .venv/bin/python bench/bench_quality.py [--size 640x360] [--scenes 6] [--stages]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from stereo_spot.stereo.depth.heuristic import HeuristicDepth
from stereo_spot.stereo.fill import fill_holes
from stereo_spot.stereo.synthetic import layered_scene, parallax_clip, render
from stereo_spot.stereo.warp import forward_warp

# --- 1. renderer --------------------------------------------------------------------------------------------


def naive_right_view(left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel forward warp (near wins through a z-buffer); each hole copies the nearest valid pixel on
    its left (on its right at the left border): the textbook baseline."""
    n, c, h, w = left.shape
    target = torch.round(torch.arange(w, dtype=torch.float32) - disparity[:, 0]).long()  # [N,H,W]
    inside = (target >= 0) & (target < w)
    rows = torch.arange(n * h).view(n, h, 1).expand(n, h, w)
    flat = (rows * w + target.clamp(0, w - 1))[inside]
    d = disparity[:, 0][inside]
    zbuf = torch.full((n * h * w,), float("-inf")).scatter_reduce_(0, flat, d, reduce="amax")
    winner = d >= zbuf[flat]
    colours = left.permute(0, 2, 3, 1)[inside][winner]
    right = torch.zeros(n * h * w, c)
    right[flat[winner]] = colours
    valid = torch.isfinite(zbuf).view(n * h, w)
    cols = torch.arange(w).expand(n * h, w)
    from_left = torch.where(valid, cols, -1).cummax(dim=1).values
    from_right = (w - 1 - torch.where(valid.flip(1), cols, -1).cummax(dim=1).values).flip(1)
    source = torch.where(from_left >= 0, from_left, from_right).clamp(0, w - 1)
    right = right.view(n * h, w, c).gather(1, source.unsqueeze(-1).expand(n * h, w, c))
    return right.view(n, h, w, c).permute(0, 3, 1, 2)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    diff = (a - b) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        diff = diff[mask]
    mse = float(diff.mean())
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def bench_renderer(width: int, height: int, scenes: int) -> dict:
    rows = []
    for seed in range(scenes):
        for span_pct in (2.0, 4.0):
            views = render(layered_scene(width, height, seed=seed, divergence_px=span_pct / 100 * width), width,
                           height)
            left = torch.from_numpy(views.left).permute(2, 0, 1).unsqueeze(0).contiguous()
            disparity = torch.from_numpy(views.disparity)[None, None]
            with torch.inference_mode():
                warped, holes, warped_disp = forward_warp(left, disparity)
                ours = fill_holes(warped, holes, warped_disp)[0].permute(1, 2, 0).numpy()
                naive = naive_right_view(left, disparity)[0].permute(1, 2, 0).numpy()
            truth, dis = views.right, views.disoccluded
            rows.append({
                "scene": f"{seed}/{span_pct:g}%", "ours": psnr(ours, truth), "naive": psnr(naive, truth),
                "ours_dis": psnr(ours, truth, dis), "naive_dis": psnr(naive, truth, dis),
                "dis_pct": 100 * dis.mean(),
            })
    return {"rows": rows, **{k: float(np.nanmean([r[k] for r in rows]))
                             for k in ("ours", "naive", "ours_dis", "naive_dis")}}


# --- 2. depth -------------------------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    edges = np.flatnonzero(np.concatenate([[True], sorted_values[1:] != sorted_values[:-1], [True]]))
    ranks = np.empty(len(values), np.float64)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ranks[order[lo:hi]] = (lo + hi - 1) / 2
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a.ravel()), _ranks(b.ravel()))[0, 1])


def _depth_correlation(frames: np.ndarray, truth: np.ndarray, skip: int = 6) -> float:
    estimator = HeuristicDepth(device="cpu")
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        depth = [estimator.estimate(x[i : i + 1])[0, 0].numpy() for i in range(len(frames))]
    return float(np.mean([spearman(depth[i][::2, ::2], truth[i][::2, ::2]) for i in range(skip, len(frames))]))


def bench_depth(width: int, height: int, frames: int) -> dict:
    from stereo_spot.sample import render_frame

    results = {}
    for seed in range(3):
        clip, truth = parallax_clip(width, height, frames, seed=seed)
        results[f"parallax seed {seed}"] = _depth_correlation(clip, truth)
    textures: dict = {}
    rendered = [render_frame(i / 30, width, height, textures=textures) for i in range(frames)]
    results["sample scene"] = _depth_correlation(np.stack([r[0] for r in rendered]),
                                                 np.stack([r[1] for r in rendered]))
    return results


# --- 3. stage timings -----------------------------------------------------------------------------------------


def bench_stages(frames: int = 16, repeats: int = 3) -> dict:
    """Best-of-``repeats`` per-frame time of each stage at 1280x720 (one torch thread, one OpenCV thread)."""
    import cv2

    from stereo_spot.models import ConversionSettings
    from stereo_spot.stereo.disparity import depth_to_disparity
    from stereo_spot.stereo.engine import StereoEngine, frames_to_tensor
    from stereo_spot.stereo.pack import pack_uint8

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clip, _ = parallax_clip(1280, 720, frames, seed=1)
    engine = StereoEngine(ConversionSettings(), device="cpu")
    out = torch.empty((1, 720, 2560, 3), dtype=torch.uint8)
    best: dict[str, float] = {}
    engine.convert_batch(clip[:2])
    for _ in range(repeats):
        engine.reset()
        spent: dict[str, float] = {}

        def timed(name: str, fn, spent: dict[str, float] = spent):
            started = time.perf_counter()
            result = fn()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
            return result

        with torch.inference_mode():
            for i in range(frames):
                u8, left = timed("uint8 → float", lambda i=i: frames_to_tensor(clip[i : i + 1], engine.device))
                depth = timed("depth (heuristic)", lambda left=left: engine.depth.estimate(left))
                disp = timed("disparity", lambda depth=depth: depth_to_disparity(depth, 1280, 2.0, 0.5))
                warped = timed("forward warp", lambda left=left, disp=disp: forward_warp(
                    left, disp, workspace=engine._warp_workspace))
                right = timed("hole fill", lambda w=warped: fill_holes(*w, inplace=True))
                timed("pack SBS → uint8", lambda u8=u8, left=left, right=right: pack_uint8(
                    u8, left, right, "sbs", out=out))
        engine.reset()
        started = time.perf_counter()
        engine.convert_batch(clip)
        spent["convert_batch (all stages)"] = time.perf_counter() - started
        for name, seconds in spent.items():
            best[name] = min(best.get(name, float("inf")), seconds / frames * 1000)
    best["encode 2560x720 (libx264 fast crf18, 1 thread)"] = _encode_ms(clip, threads=1)
    best["encode 2560x720 (libx264 fast crf18, auto threads)"] = _encode_ms(clip, threads=0)
    return best


def _encode_ms(clip: np.ndarray, threads: int) -> float:
    import tempfile

    from stereo_spot.media.encode import settings_for
    from stereo_spot.media.frames import VideoWriter
    from stereo_spot.models import OutputFormat

    sbs = np.concatenate([clip, clip], axis=2)
    times = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            with VideoWriter(Path(tmp) / "e.mp4", 2560, 720, Fraction(1, 30), Fraction(30),
                             settings_for(OutputFormat.SBS, threads=threads)) as writer:
                for i, frame in enumerate(sbs):
                    writer.write(frame, i)
            times.append(time.perf_counter() - started)
    return min(times) / len(clip) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="640x360", help="WxH of the synthetic scenes")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=24, help="frames per depth clip")
    parser.add_argument("--stages", action="store_true", help="also time the engine stages at 1280x720")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    result = bench_renderer(width, height, args.scenes)
    print(f"Renderer from the true disparity, {width}x{height}, {args.scenes} scenes x (2 %, 4 % disparity span)")
    print(f"{'scene':>8} {'disocc.':>8} {'ours':>8} {'naive':>8} {'diff':>7}   {'ours':>8} {'naive':>8} {'diff':>7}")
    print(f"{'':>8} {'% px':>8} {'PSNR dB (whole frame)':>25}   {'PSNR dB (disoccluded)':>25}")
    for r in result["rows"]:
        print(f"{r['scene']:>8} {r['dis_pct']:8.2f} {r['ours']:8.2f} {r['naive']:8.2f} {r['ours'] - r['naive']:+7.2f}"
              f"   {r['ours_dis']:8.2f} {r['naive_dis']:8.2f} {r['ours_dis'] - r['naive_dis']:+7.2f}")
    gain = result["ours"] - result["naive"]
    print(f"{'mean':>8} {'':>8} {result['ours']:8.2f} {result['naive']:8.2f} {gain:+7.2f}"
          f"   {result['ours_dis']:8.2f} {result['naive_dis']:8.2f} {result['ours_dis'] - result['naive_dis']:+7.2f}")
    print(f"whole-frame gain over the naive baseline: {gain:+.2f} dB (target >= +2 dB): "
          f"{'PASS' if gain >= 2.0 else 'FAIL'}")

    depth = bench_depth(width // 2, height // 2, args.frames)
    print(f"\nHeuristic depth vs true inverse depth, Spearman rank correlation ({width // 2}x{height // 2}, "
          f"{args.frames} frames, first 6 skipped)")
    for name, rho in depth.items():
        print(f"  {name:>18}: {rho:+.3f}")
    print(f"  {'mean':>18}: {np.mean(list(depth.values())):+.3f}")

    if args.stages:
        stages = bench_stages()
        print("\nPer-frame time at 1280x720 on CPU (best of 3 passes, 1 torch thread)")
        for name, ms in stages.items():
            print(f"  {name:<52} {ms:7.2f} ms")
        engine_ms = stages["convert_batch (all stages)"]
        encode_ms = stages["encode 2560x720 (libx264 fast crf18, 1 thread)"]
        print(f"  engine / encoder (1 thread each): {engine_ms / encode_ms:.2f}")


if __name__ == "__main__":
    main()
