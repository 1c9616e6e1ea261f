"""Throughput of the conversion on a GPU (or the CPU with ``--quick``), per depth model and inpainter.

For each of

    heuristic      the default depth (no weights), classical fill
    da-v2-small    Depth Anything V2 Small (DINOv2-S backbone: hidden 384, 12 layers, 6 heads; neck 48/96/192/384,
                   fusion 64), classical fill
    da-v2-base     Depth Anything V2 Base (DINOv2-B: hidden 768, 12 layers, 12 heads; neck 96/192/384/768,
                   fusion 128), classical fill
    vda-small      Video-Depth-Anything Small (the project's own network: DINOv2-S encoder, DPT head 48/96/192/384,
                   features 64, four temporal modules with a 32-frame window), streamed frame by frame, classical fill
    vda-base       Video-Depth-Anything Base (DINOv2-B; head 96/192/384/768, features 128)
    vda-large      Video-Depth-Anything Large (DINOv2-L: 1024, 24 layers, 16 heads; head 256/512/1024/1024,
                   features 256)
    diffusion      heuristic depth + the StereoCrafter-style inpainter: Stable Video Diffusion img2vid-xt's
                   spatio-temporal UNet (its published configuration, 9 input channels: noise + warped-view latents
                   + mask), its temporal VAE and CLIP ViT-H/14 image encoder

the model is built from that configuration with random weights (the timing of a network does not depend on its
weights), saved with ``save_pretrained`` (Video-Depth-Anything: ``torch.save`` of its state dict, the official
checkpoint's layout) and loaded back through the project's own loading code (the
``--depth-weights`` / ``--inpaint-weights`` path), then a synthetic clip is converted end to end (decode → engine →
encode) to Full SBS. Printed per model:

    fps          frames per second of ``convert_segment``, decode and encode included (NVENC where it opens)
    load s       building the engine: reading the weights and moving them to the device (first load in the process)
    peak GiB     peak GPU memory allocated (CPU: the process's peak RSS)
    busy         GPU kernel time / wall time over the timed run, from torch.profiler (CPU: process CPU time /
                 wall / cores)
    1 GPU fps    the whole pipeline (chunk → convert → concat, model loads included) with one worker on one GPU
    all GPUs fps the same with one worker per visible GPU, and the speedup over one; on the CPU: one worker vs
                 one per core (the CPU's own scaling: bench_convert.py measures it at length)
    what ran     the configuration, the number formats the models computed in (``--precision``) and the frame size

    python bench/bench_gpu.py            # 1080p, the published configurations: the one command for a GPU machine
    python bench/bench_gpu.py --quick    # CPU, small frames and reduced diffusion networks: a smoke test (< 5 min)
    python bench/bench_gpu.py --precision bf16 --models da-v2-small   # another number format, one model
    python bench/bench_gpu.py --models vda-small,vda-base,vda-large   # the video depth models only

A Video-Depth-Anything segment warms up on up to ``memory_frames`` (202) frames of the segments before it: the
pipeline columns include that cost, which short segments pay many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.sample import write_sample
from stereo_spot.stereo import devices
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.segment import convert_segment

# --- the published configurations --------------------------------------------------------------------------

#: Depth-Anything-V2-{Small,Base}-hf config.json (DINOv2 backbone, DPT-style neck); the processor: 518, keep the
#: aspect ratio, multiples of 14
DEPTH_ANYTHING_V2 = {
    "da-v2-small": {"hidden_size": 384, "num_attention_heads": 6, "neck_hidden_sizes": [48, 96, 192, 384],
                    "fusion_hidden_size": 64},
    "da-v2-base": {"hidden_size": 768, "num_attention_heads": 12, "neck_hidden_sizes": [96, 192, 384, 768],
                   "fusion_hidden_size": 128},
}
SVD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "prediction_type": "v_prediction", "use_karras_sigmas": True, "sigma_min": 0.002, "sigma_max": 700.0,
                 "timestep_type": "continuous", "interpolation_type": "linear", "steps_offset": 1,
                 "timestep_spacing": "leading"}


def save_depth_anything(folder: Path, name: str, input_size: int = 518) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    spec = DEPTH_ANYTHING_V2[name]
    backbone = Dinov2Config(hidden_size=spec["hidden_size"], num_hidden_layers=12,
                            num_attention_heads=spec["num_attention_heads"], image_size=518, patch_size=14,
                            out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=spec["hidden_size"],
                                 neck_hidden_sizes=spec["neck_hidden_sizes"],
                                 fusion_hidden_size=spec["fusion_hidden_size"], head_hidden_size=32,
                                 reassemble_factors=[4, 2, 1, 0.5], depth_estimation_type="relative")
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": input_size, "width": input_size}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, do_pad=False).save_pretrained(folder)
    return folder


#: Video-Depth-Anything's run.py model_configs, by the encoder each row uses
VIDEO_DEPTH_ANYTHING = {"vda-small": "vits", "vda-base": "vitb", "vda-large": "vitl"}


def save_video_depth_anything(folder: Path, name: str, input_size: int = 518) -> Path:
    """The published configuration with random weights, saved as the official checkpoint file (and the input
    size beside it)."""
    from stereo_spot.stereo.depth.vda_net import CONFIGS, VideoDepthNet

    encoder = VIDEO_DEPTH_ANYTHING[name]
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(VideoDepthNet(CONFIGS[encoder]).state_dict(), folder / f"video_depth_anything_{encoder}.pth")
    (folder / "stereo_spot_depth.json").write_text(json.dumps({"input_size": input_size}))
    return folder


def save_stereo_inpainter(folder: Path, reduced: bool) -> Path:
    """SVD-img2vid-xt's UNet (diffusers' defaults for ``UNetSpatioTemporalConditionModel`` are that config) with 9
    input channels, its temporal VAE (``AutoencoderKLTemporalDecoder``'s defaults) and CLIP ViT-H/14; ``reduced``:
    the same block types with a few channels, for a CPU smoke test."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    if reduced:
        unet = UNetSpatioTemporalConditionModel(
            in_channels=9, block_out_channels=(32, 64, 64, 64), num_attention_heads=(2, 4, 4, 4),
            cross_attention_dim=32, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
            layers_per_block=1, num_frames=8)
        vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64, 64, 64), layers_per_block=1,
                                           down_block_types=("DownEncoderBlock2D",) * 4)
        options = {"steps": 2, "frames_per_chunk": 6, "overlap": 1, "tile": 256, "tile_overlap": 64}
        clip = None
    else:
        unet = UNetSpatioTemporalConditionModel(in_channels=9)
        vae = AutoencoderKLTemporalDecoder()
        options = {}
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=1024, hidden_act="gelu"))
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    EulerDiscreteScheduler(**SVD_SCHEDULER).save_pretrained(folder / "scheduler")
    if clip is not None:
        clip.save_pretrained(folder / "image_encoder")
        CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
            folder / "feature_extractor")
    (folder / "stereo_spot_inpaint.json").write_text(json.dumps(options))
    return folder


# --- measuring ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    what: str
    fps: float
    load_s: float
    peak_gib: float
    busy: float
    one: Throughput | None = None  # the pipeline with one worker on one device
    every: Throughput | None = None  # the pipeline on every device (one worker per GPU, or per core)


@dataclass
class Throughput:
    convert_fps: float  # frames / the convert stage's span: first segment's start to last segment's end
    wall_s: float  # the whole run: chunk, worker start, model loads, convert, concat


_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def number_formats(engine: StereoEngine) -> str:
    """The number formats the engine's neural models compute in, as ``inference_dtype`` chose them."""
    parts = []
    loaded = getattr(engine.depth, "loaded", None)
    if loaded is not None:
        parts.append(f"depth {_FORMATS.get(loaded.dtype, loaded.dtype)}")
    models = getattr(engine.inpainter, "models", None)
    if models is not None:
        parts.append(f"UNet {_FORMATS.get(models.dtype, models.dtype)}, VAE "
                     f"{_FORMATS.get(models.vae_dtype, models.vae_dtype)}")
    return ", ".join(parts)


def _forget_loaded_models() -> None:
    """Make the next engine load its weights again (the loaders keep one copy per process and device)."""
    from stereo_spot.stereo import inpaint_diffusion
    from stereo_spot.stereo.depth import depth_anything, video_depth_anything

    depth_anything._MODELS.clear()
    video_depth_anything._MODELS.clear()
    inpaint_diffusion._MODELS.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _kernel_seconds(profiler) -> float:
    total_us = 0.0
    for event in profiler.key_averages():
        total_us += getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0)
    return total_us / 1e6


def measure(name: str, settings: ConversionSettings, clip: Path, device: torch.device, work: Path,
            warm_seconds: float = 0.5) -> Row:
    _forget_loaded_models()
    started = time.perf_counter()
    engine = StereoEngine(settings, device=device)
    _sync(device)
    load_s = time.perf_counter() - started
    convert_segment(clip, work / f"{name}-warm.mp4", settings, engine=engine,
                    window=(None, warm_seconds))  # warm-up: first calls allocate, compile and tune
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            stats = convert_segment(clip, work / f"{name}.mp4", settings, engine=engine)
            _sync(device)
        busy = _kernel_seconds(profiler) / stats.seconds
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        # the profiler slows the host side: time a run without it for the fps
        stats = convert_segment(clip, work / f"{name}.mp4", settings, engine=engine)
    else:
        cpu_before = os.times()
        stats = convert_segment(clip, work / f"{name}.mp4", settings, engine=engine)
        cpu_after = os.times()
        used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
        busy = used / stats.seconds / devices.usable_cores()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row = Row(name, number_formats(engine), stats.frames / stats.seconds, load_s, peak, busy)
    del engine
    return row


def pipeline(settings: ConversionSettings, clip: Path, work: Path, device: str, workers: int | None,
             segment_seconds: float) -> Throughput:
    """The whole pipeline (chunk → convert → concat) on ``device`` ("cuda": every GPU) with ``workers`` processes
    (None: one per GPU, or one per core): its wall time, and the convert stage's frames per second from the
    segments' own records (each segment's convert time ends at its completion), which leaves out the start of
    the worker processes and their model loads (the ``load s`` column) that a short clip cannot amortise."""
    from stereo_spot import steps
    from stereo_spot.adapters.local import local_backend
    from stereo_spot.runner import run_job

    _forget_loaded_models()  # a one-worker run converts in this process: make it load its models as workers do
    home = work / f"home-{time.monotonic_ns()}"
    os.environ["STEREO_SPOT_HOME"] = str(home)
    backend = local_backend(home)
    job = steps.create_job(backend, settings.model_copy(update={"segment_seconds": segment_seconds}), "bench")
    steps.store_source(backend, job.job_id, clip)
    started = time.perf_counter()
    run_job(backend, job.job_id, workers=workers, device=device)
    wall = time.perf_counter() - started
    done = backend.completions.query_by_job(job.job_id)
    first = min(c.completed_at.timestamp() - c.convert_seconds for c in done)
    last = max(c.completed_at.timestamp() for c in done)
    return Throughput(sum(c.frames for c in done) / max(last - first, 1e-9), wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU, small frames, reduced diffusion networks")
    parser.add_argument("--models", default=None, help="comma-separated rows (default: heuristic, da-v2-small, "
                        "da-v2-base, vda-small, diffusion; without --quick also vda-base and vda-large)")
    parser.add_argument("--seconds", type=float, default=None, help="length of the test clip")
    parser.add_argument("--device", default=None, help="cpu, cuda:N (default: the first GPU, else the CPU)")
    parser.add_argument("--precision", default="auto", choices=devices.PRECISIONS,
                        help="number format of the neural models (as convert --precision)")
    args = parser.parse_args()
    if args.models is None:
        args.models = ("heuristic,da-v2-small,da-v2-base,vda-small,diffusion" if args.quick else
                       "heuristic,da-v2-small,da-v2-base,vda-small,vda-base,vda-large,diffusion")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    device = torch.device(args.device) if args.device else (torch.device("cpu") if args.quick
                                                             else devices.default_device())
    gpus = devices.cuda_device_count()
    if args.quick:
        size, seconds, da_input, diffusion_size, diffusion_seconds = (320, 180), args.seconds or 1.0, 182, \
            (128, 72), 0.5
    else:
        size, seconds, da_input, diffusion_size, diffusion_seconds = (1920, 1080), args.seconds or 8.0, 518, \
            (1920, 1080), 2.0
    torch.set_num_threads(devices.usable_cores())
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"GPUs visible: {gpus}, cores: {devices.usable_cores()}, encoder: {devices.encoder_for(device)}, "
          f"torch {torch.__version__}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stereo-spot-bench-gpu-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("STEREO_SPOT_WORKDIR", str(work / "steps"))
        clip = write_sample(work / "clip.mp4", seconds=seconds, size=size, fps=24, audio=False)
        small_clip = write_sample(work / "diffusion.mp4", seconds=diffusion_seconds, size=diffusion_size, fps=24,
                                  audio=False)
        # the pipeline runs: a keyframe every quarter second, so even the short --quick clips cut into segments
        # enough for every worker
        workers = gpus if device.type == "cuda" else devices.usable_cores()
        scaling_seconds = 0.5 if args.quick else seconds
        segment_seconds = max(0.25, scaling_seconds / (2 * max(1, workers)))
        scaling = {clip: write_sample(work / "scaling.mp4", seconds=scaling_seconds, size=size, fps=24, gop=6,
                                      audio=False),
                   small_clip: write_sample(work / "scaling-diffusion.mp4", seconds=scaling_seconds,
                                            size=diffusion_size, fps=24, gop=6, audio=False)}
        for name in args.models.split(","):
            built = time.perf_counter()
            if name == "heuristic":
                settings, source, what = ConversionSettings(output_format=OutputFormat.SBS), clip, "no weights"
            elif name in DEPTH_ANYTHING_V2:
                folder = save_depth_anything(work / name, name, da_input)
                settings = ConversionSettings(output_format=OutputFormat.SBS, depth_model="depth-anything",
                                              depth_weights=str(folder), precision=args.precision)
                source, what = clip, f"published config, input {da_input}"
            elif name in VIDEO_DEPTH_ANYTHING:
                folder = save_video_depth_anything(work / name, name, da_input)
                settings = ConversionSettings(output_format=OutputFormat.SBS, depth_model="video-depth-anything",
                                              depth_weights=str(folder), precision=args.precision)
                source, what = clip, f"published config, streamed, input {da_input}"
            elif name == "diffusion":
                folder = save_stereo_inpainter(work / name, reduced=args.quick)
                settings = ConversionSettings(output_format=OutputFormat.SBS, inpaint="diffusion",
                                              inpaint_weights=str(folder), precision=args.precision)
                source = small_clip
                what = ("REDUCED UNet/VAE (4 blocks of 32-64 ch), 2 steps, 6-frame chunks" if args.quick
                        else "SVD-xt UNet + temporal VAE + CLIP ViT-H, 8 steps, 23-frame chunks")
            else:
                parser.error(f"unknown model {name}")
            print(f"  {name}: weights built and saved in {time.perf_counter() - built:.1f} s; converting "
                  f"{diffusion_size if name == 'diffusion' else size} …", flush=True)
            row = measure(name, settings, source, device, work, warm_seconds=0.25 if args.quick else 0.5)
            formats = f", {row.what}" if row.what else ""
            row.what = what + formats + f", {'x'.join(map(str, diffusion_size if name == 'diffusion' else size))}"
            row.one = pipeline(settings, scaling[source], work, str(device), 1, segment_seconds)
            if workers > 1:
                row.every = pipeline(settings, scaling[source], work, "cuda" if device.type == "cuda" else "cpu",
                                     workers, segment_seconds)
            rows.append(row)
    gpu = device.type == "cuda"
    mem = "peak GiB" if gpu else "peak RSS GiB"
    busy = "GPU busy" if gpu else "CPU busy"
    one = "1 GPU fps" if gpu else "1 worker fps"
    every = f"{workers} GPUs fps" if gpu else f"{workers} workers fps"
    print(f"\n1080p-class → Full SBS, end to end (decode, engine, encode) on {device}"
          if not args.quick else f"\n--quick: small frames → Full SBS on {device} (CPU figures)")
    print(f"{one} / {every}: the pipeline's convert stage (chunk → convert → concat of a {scaling_seconds:g} s clip "
          f"in segments of {segment_seconds:g} s), frames over the span of the segments' conversions; whole run: "
          "the wall-time speedup of the run, worker start and model loads included")
    print(f"| model        |    fps | load s | {mem:>12} | {busy:>8} | {one:>12} | {every:>14} | speedup | "
          "whole run | what ran")
    print("|--------------|--------|--------|--------------|----------|--------------|----------------|---------|"
          "-----------|---------")
    for r in rows:
        if r.every is not None and r.one is not None:
            every_fps = f"{r.every.convert_fps:14.2f}"
            speedup = f"{r.every.convert_fps / r.one.convert_fps:6.2f}x"
            whole = f"{r.one.wall_s / r.every.wall_s:8.2f}x"
        else:
            every_fps, speedup, whole = f"{'1 GPU only' if gpu else '1 core only':>14}", f"{'—':>7}", f"{'—':>9}"
        print(f"| {r.model:<12} | {r.fps:6.2f} | {r.load_s:6.2f} | {r.peak_gib:12.2f} | {100 * r.busy:7.0f}% | "
              f"{r.one.convert_fps if r.one else 0:12.2f} | {every_fps} | {speedup} | {whole} | {r.what}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
