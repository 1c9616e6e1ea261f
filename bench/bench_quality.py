"""3D quality on synthetic scenes with known depth, as numbers measured in one run.

    1. Renderer: the right view rendered from the TRUE disparity (forward warp + background-side fill) against
       the true right view of a layered scene rendered exactly for both eyes; PSNR over the whole frame and over
       the disoccluded pixels, next to a naive baseline (nearest-pixel forward warp with a z-buffer, holes filled
       by copying the neighbouring pixel on the left).                          target: >= 2 dB better overall
       The same renderer on a real stereo pair (Middlebury "Aloe", ``scripts/fetch-real-data``): the right view
       from the pair's true disparity against the real right view, PSNR over the whole frame, the hole pixels
       and the rest, and SSIM, for the classical fill, the smear it replaced and the naive baseline.
                                                                                 target: >= 24.5 dB whole frame
       With --inpaint-weights, the diffusion inpainter's fill is compared with the classical one on the
       disoccluded pixels of the same scenes (PSNR and SSIM of the right view), and its temporal flicker on
       the holes of a static shot; without weights that column says "no weights".
    2. Depth: Spearman rank correlation with the true inverse depth on moving clips (two independent scene
       generators), and flicker on a static noisy shot, for the heuristic estimator and, with --depth-weights,
       a Depth Anything checkpoint ("no weights" without).
    3. Video consistency of a per-frame model: the true inverse depth of moving clips, re-scaled and shifted at
       random every frame (what a monocular network's affine ambiguity does) plus noise, normalised three ways:
       per frame, with a pooled range (no alignment), with the pooled range and least-squares alignment
       (``TemporalRange(align=True)``, the depth-anything mode). Error against the consistently normalised truth
       and flicker (frame-to-frame change where the true depth did not change).
    4. --seams: a 10 s clip converted through the pipeline in 1 s segments and in one segment, PSNR between the
       two outputs at every seam, with the lossless encoder (the seams themselves) and the default one. With
       --inpaint-weights (or --tiny-inpainter: the tests' tiny random model, for the mechanics), the same for
       the diffusion inpainter on the hole pixels, for several ``restart_seconds``, with the warm-up's cost.
    5. --stages: per-frame time of each engine stage at 1280x720 on CPU (one torch thread), next to the
       per-frame time of the encoder (libx264 preset fast crf 18, 2560x720) measured in the same run.

    .venv/bin/python bench/bench_quality.py [--size 640x360] [--scenes 6] [--seams [--tiny-inpainter]] [--stages]
                                            [--depth-weights PATH|s3://...] [--inpaint-weights PATH|s3://...]
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from stereo_spot.stereo.depth.heuristic import HeuristicDepth
from stereo_spot.stereo.fill import ClassicalInpainter, fill_holes
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


def ssim(a: np.ndarray, b: np.ndarray, radius: int = 3) -> float:
    """Mean structural similarity of two H x W x 3 images in 0..1 (box windows of 2 x radius + 1 pixels, the
    usual constants), averaged over channels."""
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double()
    y = torch.from_numpy(np.ascontiguousarray(b)).permute(2, 0, 1)[None].double()

    def box(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t, 2 * radius + 1, stride=1)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = box(x), box(y)
    vx, vy, cov = box(x * x) - mx * mx, box(y * y) - my * my, box(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def inpaint_flicker(inpainter, width: int, height: int, frames: int = 12, seed: int = 0) -> float:
    """Mean absolute frame-to-frame change (0..1) of the fill on the holes of a static shot: the truth does not
    change, so every change is flicker."""
    views = render(layered_scene(width, height, seed=seed, divergence_px=0.04 * width), width, height)
    left = torch.from_numpy(views.left).permute(2, 0, 1).unsqueeze(0).contiguous().repeat(frames, 1, 1, 1)
    disparity = torch.from_numpy(views.disparity)[None, None].repeat(frames, 1, 1, 1)
    with torch.inference_mode():
        warped, holes, warped_disp = forward_warp(left, disparity)
        inpainter.reset()
        out = inpainter.inpaint(warped.clone(), holes.clone(), warped_disp.clone(), left)
    mask = holes[1:].expand(-1, 3, -1, -1)
    return float((out[1:] - out[:-1]).abs()[mask].mean()) if mask.any() else float("nan")


def bench_renderer(width: int, height: int, scenes: int, inpainter=None) -> dict:
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
                smear = fill_holes(warped, holes, warped_disp, **SMEAR_FILL)[0].permute(1, 2, 0).numpy()
                naive = naive_right_view(left, disparity)[0].permute(1, 2, 0).numpy()
            truth, dis = views.right, views.disoccluded
            row = {
                "scene": f"{seed}/{span_pct:g}%", "ours": psnr(ours, truth), "naive": psnr(naive, truth),
                "ours_dis": psnr(ours, truth, dis), "naive_dis": psnr(naive, truth, dis),
                "dis_pct": 100 * dis.mean(), "ours_ssim": ssim(ours, truth),
                "smear": psnr(smear, truth), "smear_dis": psnr(smear, truth, dis), "smear_ssim": ssim(smear, truth),
            }
            if inpainter is not None:
                with torch.inference_mode():
                    warped, holes, warped_disp = forward_warp(left, disparity)
                    inpainter.reset()
                    neural = inpainter.inpaint(warped.clone(), holes.clone(), warped_disp.clone(), left)
                neural = neural[0].permute(1, 2, 0).numpy()
                row["diffusion"], row["diffusion_dis"] = psnr(neural, truth), psnr(neural, truth, dis)
                row["diffusion_ssim"] = ssim(neural, truth)
            rows.append(row)
    keys = ["ours", "naive", "ours_dis", "naive_dis", "ours_ssim", "smear", "smear_dis", "smear_ssim"] + (
        ["diffusion", "diffusion_dis", "diffusion_ssim"] if inpainter else [])
    return {"rows": rows, **{k: float(np.nanmean([r[k] for r in rows])) for k in keys}}


#: The classical fill as it was before it continued the texture: the edge pixel copied across each run, ±2 rows
#: of dense vertical smoothing (the same code with the mirror off).
SMEAR_FILL = {"mirror": False, "smooth_rows": 2, "smooth_step": 1}


def known_disparity(disparity: np.ndarray) -> np.ndarray:
    """A stereo pair's disparity with its unknown pixels (NaN) filled along the row from the farther of the two
    nearest known neighbours: they are mostly background the other camera cannot see (occluded beside a nearer
    object), which warps behind that object; one known side (at a frame border) is used as it is."""
    known = ~np.isnan(disparity)
    w = disparity.shape[1]
    cols = np.broadcast_to(np.arange(w), disparity.shape)
    before = np.maximum.accumulate(np.where(known, cols, -1), axis=1)
    after = np.minimum.accumulate(np.where(known, cols, w)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(disparity.shape[0])[:, None]
    from_before = np.where(before >= 0, disparity[rows, before.clip(0, w - 1)], np.inf)
    from_after = np.where(after < w, disparity[rows, after.clip(0, w - 1)], np.inf)
    out = np.where(known, disparity, np.minimum(from_before, from_after))
    return np.nan_to_num(out, posinf=0.0).astype(np.float32)  # a row with nothing known: on the screen plane


def bench_real_pair() -> dict | None:
    """The renderer on the real stereo pair (None without the real data): PSNR of the right view rendered from
    the true disparity against the real right view, over the whole frame, over the warp's holes and over the
    rest, and SSIM, for the classical fill, the smear it replaced and the naive baseline."""
    from real_data import stereo_pair  # bench/real_data.py, beside this script

    pair = stereo_pair()
    if pair is None:
        return None
    left_u8, right_u8, disparity = pair
    truth = right_u8.astype(np.float32) / 255
    left = torch.from_numpy(left_u8.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    disp = torch.from_numpy(known_disparity(disparity))[None, None]
    with torch.inference_mode():
        warped, holes, warped_disp = forward_warp(left, disp)
        views = {"classical": fill_holes(warped, holes, warped_disp),
                 "classical before (smear)": fill_holes(warped, holes, warped_disp, **SMEAR_FILL),
                 "naive baseline": naive_right_view(left, disp)}
    hole = holes[0, 0].numpy()
    rows = {}
    for name, view in views.items():
        image = view[0].permute(1, 2, 0).numpy()
        rows[name] = {"whole": psnr(image, truth), "holes": psnr(image, truth, hole),
                      "rest": psnr(image, truth, ~hole), "ssim": ssim(image, truth)}
    return {"size": f"{truth.shape[1]}x{truth.shape[0]}", "holes_pct": 100 * hole.mean(),
            "unknown_pct": 100 * np.isnan(disparity).mean(), "rows": rows}


def thin_hole_loss(width: int, height: int, scenes: int, cell: int = 8) -> float:
    """Share of disoccluded pixels in latent cells (``cell`` pixels, SVD's VAE) whose one sampled pixel is not
    a hole: what StereoCrafter's nearest-neighbour mask downsampling hides from the model (max pooling: 0)."""
    lost = total = 0
    for seed in range(scenes):
        for span_pct in (2.0, 4.0):
            views = render(layered_scene(width, height, seed=seed, divergence_px=span_pct / 100 * width), width,
                           height)
            left = torch.from_numpy(views.left).permute(2, 0, 1).unsqueeze(0).contiguous()
            _, holes, _ = forward_warp(left, torch.from_numpy(views.disparity)[None, None])
            h, w = holes.shape[-2:]
            holes = holes[..., : h // cell * cell, : w // cell * cell].float()
            marked = torch.nn.functional.interpolate(torch.nn.functional.interpolate(holes, scale_factor=1 / cell),
                                                     scale_factor=cell)
            lost += float((holes * (1 - marked)).sum())
            total += float(holes.sum())
    return lost / max(total, 1.0)


def bench_inpaint_options(weights: str, width: int, height: int, frames: int = 12, seed: int = 0) -> dict:
    """Each of StereoCrafter's choices against the default, one at a time, on a layered scene panned sideways:
    seconds, PSNR against the true right view outside the holes and in them, and the fill's flicker on a
    static shot."""
    from stereo_spot.stereo.inpaint_diffusion import STEREOCRAFTER, DiffusionInpainter

    planes = layered_scene(width, height, seed=seed, divergence_px=0.04 * width)
    views = [render([p.at_frame(i) for p in planes], width, height) for i in range(frames)]
    left = torch.stack([torch.from_numpy(v.left).permute(2, 0, 1) for v in views]).contiguous()
    disparity = torch.stack([torch.from_numpy(v.disparity)[None] for v in views])
    truth = np.stack([v.right for v in views])
    with torch.inference_mode():
        warped, holes, warped_disp = forward_warp(left, disparity)
    hole_np = holes[:, 0].numpy()
    base = DiffusionInpainter(weights, "cpu").options
    rows = {}
    for name, value in [("default", None), *STEREOCRAFTER.items()]:
        from dataclasses import replace

        options = base if value is None else replace(base, **{name: value})
        inpainter = DiffusionInpainter(weights, "cpu", options=options)
        started = time.perf_counter()
        with torch.inference_mode():
            out = inpainter.inpaint(warped.clone(), holes.clone(), warped_disp.clone(), left)
        seconds = time.perf_counter() - started
        out_np = out.permute(0, 2, 3, 1).numpy()
        rows[name if value is None else f"{name}={value}"] = {
            "seconds": seconds, "outside": psnr(out_np, truth, ~hole_np), "holes": psnr(out_np, truth, hole_np),
            "flicker": inpaint_flicker(inpainter, width, height, frames)}
    return rows


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


def _depth_correlation(frames: np.ndarray, truth: np.ndarray, skip: int = 6, estimator=None) -> float:
    estimator = estimator or HeuristicDepth(device="cpu")
    estimator.reset()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        depth = [estimator.estimate(x[i : i + 1])[0, 0].numpy() for i in range(len(frames))]
    return float(np.mean([spearman(depth[i][::2, ::2], truth[i][::2, ::2]) for i in range(skip, len(frames))]))


def depth_clips(width: int, height: int, frames: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Moving clips with their true inverse depth, from two independent scene generators."""
    from stereo_spot.sample import render_frame

    clips = {f"parallax seed {seed}": parallax_clip(width, height, frames, seed=seed) for seed in range(3)}
    textures: dict = {}
    rendered = [render_frame(i / 30, width, height, textures=textures) for i in range(frames)]
    clips["sample scene"] = (np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]))
    return clips


def depth_flicker(width: int, height: int, frames: int, estimator=None) -> float:
    """Mean absolute frame-to-frame change of the normalised depth on a static shot with sensor noise."""
    from stereo_spot.stereo.synthetic import texture

    estimator = estimator or HeuristicDepth(device="cpu")
    estimator.reset()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    base = texture(5, xs, ys) * 255
    rng = np.random.default_rng(0)
    clip = np.stack([np.clip(base + rng.normal(0, 2.0, base.shape), 0, 255) for _ in range(frames)])
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        depth = torch.cat([estimator.estimate(x[i : i + 1]) for i in range(frames)])[:, 0].numpy()
    return float(np.abs(np.diff(depth[2:], axis=0)).mean())


def bench_depth(width: int, height: int, frames: int, estimator=None) -> dict:
    result = {name: _depth_correlation(clip, truth, estimator=estimator)
              for name, (clip, truth) in depth_clips(width, height, frames).items()}
    return result, depth_flicker(width, height, frames, estimator)


# --- 3. video consistency of a per-frame model -------------------------------------------------------------


def entering_object(width: int, height: int, frames: int) -> np.ndarray:
    """True inverse depth of a shot where something near walks in from the left (0 → 40 % of the width) in
    front of a slanted wall: the nearest depth in the picture changes over the shot."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    wall = 0.2 + 0.3 * xs / width + 0.1 * ys / height
    depth = np.repeat(wall[None], frames, axis=0)
    for i in range(frames):
        edge = 0.4 * width * i / max(frames - 1, 1)
        depth[i][(xs < edge) & (ys > 0.2 * height)] = 1.0
    return depth


def bench_consistency(width: int, height: int, frames: int, seed: int = 0) -> dict:
    """Per-frame random scale/shift + noise on the true inverse depth, normalised three ways."""
    from stereo_spot.stereo.depth.temporal import TemporalRange, robust_range

    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, float]] = {}
    clips = {name: truth for name, (_, truth) in depth_clips(width, height, frames).items()}
    clips["object walks in"] = entering_object(width, height, frames)
    for name, truth in clips.items():
        true_lo, true_hi = robust_range(truth.reshape(-1))
        reference = np.clip((truth - true_lo) / max(true_hi - true_lo, 1e-6), 0, 1)
        raw = []
        for frame in truth:
            scale, shift = rng.uniform(0.6, 1.6), rng.uniform(-0.3, 0.3)
            raw.append(scale * (frame + 0.2) + shift + rng.normal(0, 0.01, frame.shape))
        for mode in ("per frame", "pooled range", "pooled + aligned"):
            ranges = None if mode == "per frame" else TemporalRange(16, align=mode == "pooled + aligned")
            out = []
            for frame in raw:
                small = frame[::4, ::4]
                lo, hi = robust_range(small.reshape(-1)) if ranges is None else ranges.update(small)
                out.append(np.clip((frame - lo) / max(hi - lo, 1e-6), 0, 1))
            out = np.stack(out)
            static = np.abs(np.diff(reference, axis=0)) < 1e-6
            change = np.abs(np.diff(out, axis=0))
            flicker = float(change[static].mean())
            # the worst frame: a range that jumps shows as the whole background popping at once
            worst = max(float(c[s].mean()) for c, s in zip(change, static, strict=True) if s.any())
            results.setdefault(name, {})[mode] = {"error": float(np.abs(out - reference).mean()),
                                                  "flicker": flicker, "worst": worst}
    return results


# --- 4. seams ------------------------------------------------------------------------------------------------


def bench_seams(seconds: int = 10, size: tuple[int, int] = (160, 96), fps: int = 24) -> dict:
    """PSNR between a clip converted in 1 s segments and in one, at each seam (lossless and default encoder)."""
    import os
    import tempfile

    from stereo_spot import keys, steps
    from stereo_spot.adapters.local import local_backend
    from stereo_spot.media.frames import read_frames
    from stereo_spot.models import ConversionSettings
    from stereo_spot.runner import run_job
    from stereo_spot.sample import write_sample

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_sample(Path(tmp) / "clip.mp4", seconds=seconds, size=size, fps=fps, gop=fps // 2)
        for crf in ("0", ""):
            os.environ["STEREO_SPOT_CRF"] = crf
            outputs = []
            for segment_seconds in (1.0, 1000.0):
                backend = local_backend(Path(tmp) / f"home-{crf}-{segment_seconds}")
                job = steps.create_job(backend, ConversionSettings(segment_seconds=segment_seconds), "seams")
                steps.store_source(backend, job.job_id, clip)
                run_job(backend, job.job_id, workers=1)
                final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
                outputs.append(np.stack([f.rgb for f in read_frames(final)]).astype(np.float64))
            per_frame = [psnr(a / 255, b / 255) for a, b in zip(*outputs, strict=True)]
            seams = [min(per_frame[s * fps - 1], per_frame[s * fps]) for s in range(1, seconds)]
            inside = [p for i, p in enumerate(per_frame) if i % fps not in (0, fps - 1)]
            results["lossless (STEREO_SPOT_CRF=0)" if crf else "default encoder (crf 18)"] = {
                "overall": psnr(outputs[0] / 255, outputs[1] / 255), "seams": seams,
                "min seam": min(seams), "mean inside segments": float(np.mean(inside))}
        os.environ.pop("STEREO_SPOT_CRF", None)
    return results


def _inpainter_with(weights: str, folder: Path, **overrides) -> str:
    """A checkpoint folder that links to ``weights``' parts, with ``overrides`` on its inpainting options."""
    import json

    from stereo_spot.stereo.inpaint_diffusion import OPTIONS_FILE
    from stereo_spot.weights import fetch_weights

    source = fetch_weights(weights, "inpainting model")
    folder.mkdir(parents=True)
    for part in source.iterdir():
        if part.name != OPTIONS_FILE:
            (folder / part.name).symlink_to(part.resolve())
    options = json.loads((source / OPTIONS_FILE).read_text()) if (source / OPTIONS_FILE).is_file() else {}
    (folder / OPTIONS_FILE).write_text(json.dumps({**options, **overrides}))
    return str(folder)


def tiny_inpainter(folder: Path) -> str:
    """The tests' tiny random StereoCrafter-structured inpainter (2 steps, chunks of 8 with 2 of overlap):
    it measures the segment mechanics, not the quality of a fill."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stereo_spot.stereo.inpaint_diffusion import OPTIONS_FILE
    from tests.test_neural_inpaint import save_tiny_stereo_inpainter

    save_tiny_stereo_inpainter(folder)
    (folder / OPTIONS_FILE).write_text(json.dumps({"steps": 2, "frames_per_chunk": 8, "overlap": 2}))
    return str(folder)


def bench_diffusion_seams(weights: str, seconds: int = 6, size: tuple[int, int] = (96, 64), fps: int = 12,
                          restarts: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)) -> dict:
    """The diffusion inpainter's seams for each ``restart_seconds``: a clip converted in 1 s segments and in
    one (lossless encoder, divergence 6 %), PSNR between the two right views on the hole pixels (and their
    feather); the single run against the single run that never restarts (what restarts change); the frames
    converted without output per segment (the warm-up's cost)."""
    import os
    import tempfile

    from stereo_spot import keys, steps
    from stereo_spot.adapters.local import local_backend
    from stereo_spot.media.frames import read_frames
    from stereo_spot.models import ConversionSettings
    from stereo_spot.runner import run_job
    from stereo_spot.sample import write_sample
    from stereo_spot.stereo.engine import StereoEngine, frames_to_tensor

    os.environ["STEREO_SPOT_CRF"] = "0"
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clip = write_sample(Path(tmp) / "clip.mp4", seconds=seconds, size=size, fps=fps, gop=fps // 2)
            source = np.stack([f.rgb for f in read_frames(clip)])
            engine = StereoEngine(ConversionSettings(divergence=6.0), device="cpu")
            holes = []
            with torch.inference_mode():
                for frame in source:
                    _, left = frames_to_tensor(frame[None], engine.device)
                    _, hole, _ = forward_warp(left, engine.disparity(left))
                    holes.append(torch.nn.functional.max_pool2d(hole.float(), 5, stride=1, padding=2)[0, 0] > 0)
            holes = torch.stack(holes).numpy()
            every = np.broadcast_to(holes[..., None], (*holes.shape, 3))
            never = None
            for restart in restarts:
                checkpoint = _inpainter_with(weights, Path(tmp) / f"weights-{restart}", restart_seconds=restart)
                outputs, extra = [], []
                for segment_seconds in (1.0, 1000.0):
                    backend = local_backend(Path(tmp) / f"home-{restart}-{segment_seconds}")
                    settings = ConversionSettings(segment_seconds=segment_seconds, divergence=6.0,
                                                  inpaint="diffusion", inpaint_weights=checkpoint)
                    job = steps.create_job(backend, settings, "seams")
                    steps.store_source(backend, job.job_id, clip)
                    run_job(backend, job.job_id, workers=1)
                    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
                    outputs.append(np.stack([f.rgb for f in read_frames(final)])[:, :, size[0]:].astype(np.float64))
                    if segment_seconds == 1.0:
                        extra = [c.stats["timings"]["warmup_frames"] for c in backend.completions.query_by_job(
                            job.job_id)]
                per_frame = [psnr(a / 255, b / 255, m) for a, b, m in zip(*outputs, holes, strict=True)]
                never = outputs[1] if never is None and restart == 0 else never
                results[restart] = {
                    "seams": [min(per_frame[s * fps - 1], per_frame[s * fps]) for s in range(1, seconds)],
                    "min frame": float(np.nanmin(per_frame)),
                    "overall": psnr(outputs[0] / 255, outputs[1] / 255, every),
                    "vs never": psnr(outputs[1] / 255, never / 255, every) if never is not None else float("nan"),
                    "extra mean": float(np.mean(extra[1:])), "extra max": int(max(extra)),
                    "frames per segment": fps}
    finally:
        os.environ.pop("STEREO_SPOT_CRF", None)
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


def print_diffusion_seams(weights: str) -> None:
    print("\nDiffusion seams: 6 s clip (96x64, 12 fps) in 1 s segments vs one segment, lossless, PSNR on the "
          "hole pixels;\n  the single run vs the single run that never restarts; frames converted without "
          "output per segment (after the first)", flush=True)
    print(f"  {'restart_seconds':>15} {'overall':>8} {'worst':>6}  {'seams':<30} {'vs never':>8} "
          f"{'extra frames mean/max':>22}")
    for restart, row in bench_diffusion_seams(weights).items():
        print(f"  {restart:>15g} {row['overall']:8.1f} {row['min frame']:6.1f}  "
              f"{' '.join(f'{v:.1f}' for v in row['seams']):<30} {row['vs never']:8.1f} "
              f"{row['extra mean']:>14.1f} / {row['extra max']:<3d} of {row['frames per segment']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="640x360", help="WxH of the synthetic scenes")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=24, help="frames per depth clip")
    parser.add_argument("--stages", action="store_true", help="also time the engine stages at 1280x720")
    parser.add_argument("--seams", action="store_true", help="also compare 1 s segments with one long run")
    parser.add_argument("--depth-weights", help="a Depth Anything checkpoint (folder or s3://) to compare")
    parser.add_argument("--inpaint-weights", help="a stereo inpainting checkpoint (folder or s3://) to compare")
    parser.add_argument("--tiny-inpainter", action="store_true",
                        help="with --seams: the diffusion seams with a tiny random inpainter (the mechanics)")
    parser.add_argument("--inpaint-options", action="store_true",
                        help="with --inpaint-weights: each of StereoCrafter's choices against the default")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    inpainter = None
    if args.inpaint_weights:
        from stereo_spot.stereo.inpaint_diffusion import DiffusionInpainter

        inpainter = DiffusionInpainter(args.inpaint_weights)
    result = bench_renderer(width, height, args.scenes, inpainter)
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
    print(f"\nRight view against the true right view ({args.scenes * 2} scenes): PSNR whole frame / disoccluded, "
          f"SSIM; temporal flicker of the fill on a static shot's holes (mean |change|, 0..1)")
    print(f"  {'fill':>26} {'PSNR':>8} {'PSNR dis.':>10} {'SSIM':>7} {'flicker':>8}")
    print(f"  {'classical':>26} {result['ours']:8.2f} {result['ours_dis']:10.2f} {result['ours_ssim']:7.4f} "
          f"{inpaint_flicker(ClassicalInpainter(), width, height):8.4f}")
    print(f"  {'classical before (smear)':>26} {result['smear']:8.2f} {result['smear_dis']:10.2f} "
          f"{result['smear_ssim']:7.4f}")
    if inpainter is not None:
        print(f"  {'diffusion':>26} {result['diffusion']:8.2f} {result['diffusion_dis']:10.2f} "
              f"{result['diffusion_ssim']:7.4f} {inpaint_flicker(inpainter, width, height):8.4f}")
    else:
        print(f"  {'diffusion':>26} {'no weights':>8}")

    real = bench_real_pair()
    print("\nReal stereo pair (Middlebury Aloe): the right view from the true disparity against the real right view")
    if real is None:
        print("  no real data (run scripts/fetch-real-data)")
    else:
        print(f"  {real['size']}, holes {real['holes_pct']:.1f} % of the right view, unknown disparity "
              f"{real['unknown_pct']:.1f} % of the left (filled from the farther row neighbour before warping)")
        print(f"  {'fill':>26} {'PSNR':>7} {'holes':>7} {'rest':>7} {'SSIM':>7}   (dB; holes = the warp's hole mask)")
        for name, row in real["rows"].items():
            print(f"  {name:>26} {row['whole']:7.2f} {row['holes']:7.2f} {row['rest']:7.2f} {row['ssim']:7.4f}")
        whole = real["rows"]["classical"]["whole"]
        verdict = "PASS" if whole >= 24.5 else "FAIL"
        print(f"  classical fill, whole frame: {whole:.2f} dB (target >= 24.5 dB): {verdict}")

    estimators = {"heuristic": None}
    if args.depth_weights:
        from stereo_spot.stereo.depth.depth_anything import DepthAnythingDepth

        estimators["depth-anything"] = DepthAnythingDepth(args.depth_weights)
    print(f"\nDepth vs true inverse depth, Spearman rank correlation ({width // 2}x{height // 2}, "
          f"{args.frames} frames, first 6 skipped); flicker: mean |change| of the depth on a static noisy shot")
    table, flicker = {}, {}
    for name, estimator in estimators.items():
        table[name], flicker[name] = bench_depth(width // 2, height // 2, args.frames, estimator)
    names = ["heuristic", "depth-anything"]
    print(f"  {'clip':>18}" + "".join(f" {name:>15}" for name in names))

    def cell(name: str, value) -> str:
        return f" {value:+15.3f}" if name in table else f" {'no weights':>15}"

    for clip_name in table["heuristic"]:
        print(f"  {clip_name:>18}" + "".join(cell(n, table[n][clip_name] if n in table else 0) for n in names))
    print(f"  {'mean':>18}" + "".join(cell(n, np.mean(list(table[n].values())) if n in table else 0)
                                      for n in names))
    print(f"  {'flicker':>18}" + "".join(f" {flicker[n]:15.4f}" if n in flicker else f" {'no weights':>15}"
                                         for n in names))

    consistency = bench_consistency(width // 2, height // 2, args.frames)
    print("\nVideo consistency of a per-frame model (true depth x random scale 0.6-1.6, shift +-0.3, noise "
          "0.01 per frame)")
    modes = list(next(iter(consistency.values())))
    print("  error: mean |normalised - truth normalised over the whole clip|; flicker: mean |change| from frame to "
          "frame where the truth did not change, over all frames and in the worst frame")
    print(f"  {'':>18}" + "".join(f" {mode:>26}" for mode in modes))
    print(f"  {'clip':>18}" + "".join(f" {'error':>8} {'flicker':>8} {'worst':>8}" for _ in modes))
    for name, row in consistency.items():
        print(f"  {name:>18}" + "".join(f" {row[m]['error']:8.4f} {row[m]['flicker']:8.4f} {row[m]['worst']:8.4f}"
                                        for m in modes))

    print(f"\nMask downsampling to SVD's 8-pixel latent cells: {100 * thin_hole_loss(width, height, args.scenes):.1f} "
          f"% of disoccluded pixels are in cells StereoCrafter's nearest sampling leaves unmarked (max pooling: 0 %)")
    if args.inpaint_options and inpainter is not None:
        print(f"\nDiffusion options, one StereoCrafter choice at a time ({width}x{height}, 12 frames panned; PSNR "
              f"against the true right view; flicker on a static shot's holes)")
        print(f"  {'option':>28} {'seconds':>8} {'outside dB':>11} {'holes dB':>9} {'flicker':>8}")
        for name, row in bench_inpaint_options(args.inpaint_weights, width, height).items():
            print(f"  {name:>28} {row['seconds']:8.2f} {row['outside']:11.2f} {row['holes']:9.2f} "
                  f"{row['flicker']:8.4f}")
    elif args.inpaint_options:
        print("diffusion options: no weights")

    if args.seams:
        print("\nSeams: 10 s clip (160x96, 24 fps) in 1 s segments vs one segment, PSNR between the outputs")
        for name, row in bench_seams().items():
            print(f"  {name}: overall {row['overall']:.1f} dB, min at a seam {row['min seam']:.1f} dB, mean "
                  f"inside segments {row['mean inside segments']:.1f} dB")
            print("    seams: " + " ".join(f"{v:.1f}" for v in row["seams"]))

    seam_weights = args.inpaint_weights
    if args.seams and args.tiny_inpainter:
        import tempfile

        seam_weights = tiny_inpainter(Path(tempfile.mkdtemp()) / "tiny-inpainter")
    if args.seams and seam_weights:
        print_diffusion_seams(seam_weights)
    elif args.seams:
        print("  diffusion inpainter: no weights (--inpaint-weights, or --tiny-inpainter for the mechanics)")

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
