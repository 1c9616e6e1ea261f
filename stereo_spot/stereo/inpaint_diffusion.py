"""A StereoCrafter-style video diffusion inpainter: ``--inpaint diffusion --inpaint-weights PATH|s3://…``.

The holes the forward warp leaves are background the left camera could not see. A video diffusion model
(Stable Video Diffusion's spatio-temporal UNet and temporal VAE, fine-tuned for stereo inpainting as in
StereoCrafter, Zhao et al. 2024) makes them up consistently over time: it denoises the latents of a chunk of
frames conditioned on the VAE latents of the warped right views (holes black) and the hole mask, concatenated
on the channel axis (UNet input = noise latents + condition latents + 1 mask channel). Only hole pixels take the
result, plus a feather of ``feather`` pixels around them, after a per-frame colour offset measured on a ring of
real pixels around the holes (a diffusion model drifts in tint; the ring makes the seam disappear).

Checkpoint layout (a folder or an S3 prefix; diffusers' ``save_pretrained`` layout, the subfolders of
``stabilityai/stable-video-diffusion-img2vid-xt-1-1`` with StereoCrafter's fine-tuned UNet in ``unet/``)::

    unet/config.json, diffusion_pytorch_model[.fp16].safetensors   UNetSpatioTemporalConditionModel,
                                                                   in_channels = 2 x latent channels + 1 (9)
    vae/config.json, diffusion_pytorch_model[.fp16].safetensors    AutoencoderKLTemporalDecoder
    scheduler/scheduler_config.json                                 e.g. EulerDiscreteScheduler (SVD's)
    image_encoder/config.json, model[.fp16].safetensors             CLIPVisionModelWithProjection (optional)
    feature_extractor/preprocessor_config.json                      CLIPImageProcessor (its mean and std)
    stereo_spot_inpaint.json                                        optional: overrides of ``DiffusionOptions``

StereoCrafter's release splits this in two folders (``stable-video-diffusion-img2vid-xt-1-1`` and
``StereoCrafter/unet_diffusers``): copy the latter over the former's ``unet/``. Without ``image_encoder/`` the
cross-attention gets zeros (only sensible for a UNet trained that way).

Processing, per call (consecutive frames, cut on the chunk grid): frames are inpainted in temporal
chunks of ``frames_per_chunk`` frames — the first of a chain all new, each later one starting with the last
``overlap`` frames already inpainted (their mask cleared, so the model continues from them) — across calls and,
through the engine's warm-up, across segments. Frames are cut into tiles of at most ``tile`` x ``tile_short``
pixels (SVD's native 1024x576, the long side along the frame's; ``tile_plan``), the fewest sharing at least
``tile_overlap`` pixels, blended with linear ramps; tiles with no hole are skipped, which is most of them. The
UNet and image encoder run in fp16 on CUDA, the VAE in bf16 when its config says it overflows in fp16
(``force_upcast``; fp32 on a GPU without bf16), all in fp32 on the CPU (``--precision``: ``devices.inference_dtype``).
The noise comes from a fixed seed, so a run is reproducible.

The chunks are counted from the chain's start (``chunk_end``), and the chain restarts every ``restart_seconds``
of the timeline (``stereo/chunk_chain.py`` places the restarts), so a segment converted alone reproduces a single
pass.

StereoCrafter's published inference (``inpainting_inference.py`` and its pipeline) differs in seven choices and
never restarts its chain (``restart_seconds``, which acts through the segment converter); each is an option of
``DiffusionOptions`` and ``STEREOCRAFTER`` holds its values (with them, this inpainter matches
an independent implementation of StereoCrafter's loop: ``tests/test_neural_inpaint_reference.py``). The
defaults and the measurements behind them are in docs/quality.md.

GPU memory and speed — estimated from the architecture, NOT measured (no GPU was available when this was
written). Weights: SVD-XT's UNet has about 1.5 G parameters (3.0 GB in fp16), the CLIP ViT-H image encoder
0.63 G (1.3 GB fp16), the temporal VAE 0.1 G (0.2 GB in bf16): about 5 GB. A chunk of
23 frames of a 1024x576 tile is 23 x 72 x 128 latents; with PyTorch's memory-efficient attention the UNet's
activations stay around 2-4 GB in fp16 and the VAE, two frames at a time in bf16, 1-2 GB: expect a peak of
roughly 8-12 GB per process, so a 16-24 GB GPU is enough at the default tile and an 80 GB H100 has room to
spare. Compute: roughly 2-3 TFLOP per frame and UNet step at 1024x576, so 23 frames x 8 steps is about
450 TFLOP per chunk plus 100-150 TFLOP of VAE encode and decode; at a realistic 300-500 TFLOP/s of dense fp16 on
an H100 that is 1-2 s per chunk of 20 new frames, i.e. on the order of 10-20 frames per second for each
1024x576 tile that has holes (a 1080p frame is up to 4 tiles; tiles without holes are skipped). That is one to
two orders of magnitude slower than the classical fill, which stays the default.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from stereo_spot.stereo.devices import dtype_for
from stereo_spot.stereo.inpainter import Inpainter
from stereo_spot.stereo.loading import load_on_device, loading_error, quiet_loading, read_config
from stereo_spot.weights import WeightsError, fetch_weights

OPTIONS_FILE = "stereo_spot_inpaint.json"


_CHOICES = {"mask_downsample": ("max", "nearest"), "composite": ("holes", "frame"),
            "tile_blend": ("pixel", "latent"), "last_chunk": ("short", "reach_back"), "noise": ("shared", "fresh")}


@dataclass(frozen=True)
class DiffusionOptions:
    steps: int = 8  # denoising steps (StereoCrafter uses 8)
    frames_per_chunk: int = 23  # frames the UNet sees at once, overlap included
    overlap: int = 3  # already inpainted frames each chunk starts with
    tile: int = 1024  # a tile's long side in pixels, along the frame's long side (SVD works at 1024x576)
    tile_short: int = 576  # a tile's short side
    tile_overlap: int = 64  # at least this many pixels shared by neighbouring tiles, blended linearly
    feather: int = 2  # pixels around the holes that blend the generated and the warped view
    fps: int = 7  # SVD micro-conditioning (the UNet gets fps - 1), as StereoCrafter
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.0
    seed: int = 0
    vae_frames: int = 2  # frames the VAE encodes or decodes at once (its full-resolution activations are large)
    # Where this inpainter departs from StereoCrafter's published inference (``STEREOCRAFTER`` has its values):
    #: the overlap frames (already inpainted) get an empty mask, so the model keeps them; StereoCrafter keeps
    #: their original holes in the mask
    clear_overlap_mask: bool = True
    #: "max": a latent cell is a hole when any of its pixels is (thin holes survive); "nearest": StereoCrafter's
    #: ``interpolate(scale_factor=1/8)``, one pixel per cell
    mask_downsample: str = "max"
    #: > 1: classifier-free guidance against zero conditioning (StereoCrafter: 1.01, twice the UNet work)
    guidance_scale: float = 1.0
    #: "holes": only hole pixels (plus the feather) take the generated view; "frame": the whole decoded frame
    #: is the right view, as in StereoCrafter (every pixel through the VAE)
    composite: str = "holes"
    #: "pixel": each tile decoded and blended in pixels (tiles without holes skipped); "latent": tiles blended
    #: in latent space and the frame decoded whole, as StereoCrafter
    tile_blend: str = "pixel"
    #: a chunk with fewer new frames than ``frames_per_chunk - overlap``: "short" runs it as it is;
    #: "reach_back" takes more already inpainted frames as context, as StereoCrafter's last chunk does
    last_chunk: str = "short"
    #: "shared": every tile and chunk starts from the same seeded noise; "fresh": one generator seeded at the
    #: start of a chain (a shot or a restart) draws new noise for every tile and chunk (StereoCrafter draws
    #: fresh noise every call)
    noise: str = "shared"
    #: seconds of the video's timeline after which the chain of chunks starts afresh (a chunk without context,
    #: at the first frame of each such slot, counted from the start of the job's window); 0: never. A segment
    #: converted on its own re-runs the chunks from the last restart before it, so the restart bounds that
    #: warm-up (``stereo/chunk_chain.py``); StereoCrafter's loop never restarts within a video
    restart_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise WeightsError(f"inpainting option {name} must be one of {', '.join(allowed)}, "
                                   f"not {getattr(self, name)!r}")
        if not 0 <= self.overlap < self.frames_per_chunk:
            raise WeightsError("inpainting option overlap must be at least 0 and below frames_per_chunk")
        if not self.restart_seconds >= 0:
            raise WeightsError("inpainting option restart_seconds must be 0 (never) or a positive number of "
                               "seconds")

    @classmethod
    def from_folder(cls, folder: Path) -> DiffusionOptions:
        path = folder / OPTIONS_FILE
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text())
        except ValueError as exc:
            raise WeightsError(f"{path} is not valid JSON: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise WeightsError(f"{path}: unknown options {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(known))}")
        try:
            return replace(cls(), **values)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from exc


#: StereoCrafter's own inference choices (``inpainting_inference.py`` and its pipeline), for comparison
STEREOCRAFTER = {"clear_overlap_mask": False, "mask_downsample": "nearest", "guidance_scale": 1.01,
                 "composite": "frame", "tile_blend": "latent", "last_chunk": "reach_back", "noise": "fresh",
                 "restart_seconds": 0.0}


@dataclass
class DiffusionModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    image_encoder: torch.nn.Module | None
    clip_mean: torch.Tensor
    clip_std: torch.Tensor
    clip_size: int
    dtype: torch.dtype
    vae_dtype: torch.dtype
    options: DiffusionOptions
    #: pixels per latent cell (VAE) and the side every tile must be a multiple of (VAE x UNet downsampling)
    vae_factor: int
    multiple: int
    folder: Path


_MODELS: dict[tuple[str, str, str], DiffusionModels] = {}
_LOCK = threading.Lock()


def _variant(folder: Path) -> str | None:
    """``fp16`` where the folder holds only fp16 weight files (as SVD's repository does)."""
    names = [p.name for p in folder.glob("*.safetensors")] + [p.name for p in folder.glob("*.bin")]
    return "fp16" if names and all(".fp16." in name for name in names) else None


def load_models(weights: str, device: torch.device, precision: str = "auto") -> DiffusionModels:
    """The models for ``weights`` on ``device`` in the number formats ``devices.dtype_for`` chooses for
    ``precision``, loaded on first use and kept for the life of the process."""
    folder = fetch_weights(weights, "inpainting model")
    key = (str(folder), str(device), str(precision))
    with _LOCK:
        models = _MODELS.get(key)
        if models is None:
            models = load_on_device("inpainting model", folder, device,
                                    lambda: _load(folder, device, str(precision)))
            _MODELS[key] = models
        return models


def loaded_models() -> int:
    return len(_MODELS)


def _load(folder: Path, device: torch.device, precision: str = "auto") -> DiffusionModels:
    for part in ("unet", "vae", "scheduler"):
        if not (folder / part).is_dir():
            raise WeightsError(f"{folder} has no {part}/ folder: the inpainting weights need unet/, vae/ and "
                               f"scheduler/ (diffusers layout; see --inpaint diffusion in the README)")
    try:
        import diffusers
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        dtype = dtype_for(device, precision)
        with quiet_loading():
            # low_cpu_mem_usage=False: the faster path needs the optional `accelerate` package
            unet = UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype,
                                                                    variant=_variant(folder / "unet"),
                                                                    low_cpu_mem_usage=False)
            vae_config = read_config(folder / "vae" / "config.json")
            vae_dtype = dtype_for(device, precision, overflows_in_fp16=bool(vae_config.get("force_upcast", True)))
            vae = AutoencoderKLTemporalDecoder.from_pretrained(folder / "vae", torch_dtype=vae_dtype,
                                                               variant=_variant(folder / "vae"),
                                                               low_cpu_mem_usage=False)
            scheduler_config = read_config(folder / "scheduler" / "scheduler_config.json")
            scheduler_class = getattr(diffusers, scheduler_config.get("_class_name", "EulerDiscreteScheduler"))
            scheduler = scheduler_class.from_pretrained(folder / "scheduler")
            image_encoder, clip_mean, clip_std, clip_size = _load_clip(folder, dtype)
    except torch.cuda.OutOfMemoryError:
        raise  # the GPU is full, the weights are fine: load_on_device says so
    except Exception as exc:  # noqa: BLE001 - every load failure becomes one line naming the folder
        raise loading_error("inpainting model", folder, exc) from exc
    latent = int(vae.config.latent_channels)
    if int(unet.config.in_channels) != 2 * latent + 1:
        raise WeightsError(f"{folder}/unet takes {unet.config.in_channels} input channels; a stereo inpainting "
                           f"UNet takes noise + warped-view latents + mask = {2 * latent + 1}")
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = vae_factor * 2 ** (len(unet.config.block_out_channels) - 1)
    for module in (unet, vae, image_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return DiffusionModels(unet=unet, vae=vae, scheduler=scheduler, image_encoder=image_encoder,
                           clip_mean=clip_mean.to(device), clip_std=clip_std.to(device), clip_size=clip_size,
                           dtype=dtype, vae_dtype=vae_dtype, options=DiffusionOptions.from_folder(folder),
                           vae_factor=vae_factor, multiple=multiple, folder=folder)


def _load_clip(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module | None, torch.Tensor, torch.Tensor, int]:
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # CLIP's
    if not (folder / "image_encoder").is_dir():
        return None, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1), 224
    from transformers import CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", dtype=dtype,
                                                            variant=_variant(folder / "image_encoder"))
    extractor = folder / "feature_extractor" / "preprocessor_config.json"
    if extractor.is_file():
        config = json.loads(extractor.read_text())
        mean, std = config.get("image_mean", mean), config.get("image_std", std)
    size = int(getattr(encoder.config, "image_size", 224))
    return encoder, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1), size


def _ramp(length: int, overlap: int, before: bool, after: bool, device: torch.device,
          latent: bool = False) -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over ``overlap`` cells where a neighbour comes before,
    falling where one comes after, 1 elsewhere. ``latent``: StereoCrafter's ramp (``k / overlap``, which two
    neighbours' weights sum to 1 over); otherwise centred on the pixels and never 0."""
    position = torch.arange(length, device=device, dtype=torch.float32) + (0.0 if latent else 0.5)
    weight = torch.ones(length, device=device)
    if overlap > 0 and before:
        weight = torch.minimum(weight, position / overlap)
    if overlap > 0 and after:
        weight = torch.minimum(weight, (length - position) / overlap)
    return weight if latent else weight.clamp_(min=1e-3)


def tile_starts(size: int, tile: int, overlap: int, quantum: int = 1) -> list[int]:
    """Starts of the fewest tiles of ``tile`` pixels covering ``size`` with at least ``overlap`` shared, evenly
    spread, each a multiple of ``quantum`` (the latent cell, so tiles blend on one latent grid)."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1) / quantum) * quantum for i in range(count)]


@dataclass(frozen=True)
class TilePlan:
    """How a frame is cut into tiles: the padded frame (sides multiples of the UNet's grid), the tile size and
    the tiles' top-left corners."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def tiled_area(self) -> int:
        return len(self.ys) * len(self.xs) * self.tile_height * self.tile_width


def _axis(size: int, tile: int, overlap: int, multiple: int, quantum: int) -> tuple[int, list[int]]:
    """One axis of a tile plan: the fewest tiles of at most ``tile`` pixels sharing at least ``overlap``, then
    shrunk (to a multiple of ``multiple``) as far as that count still covers ``size``."""
    tile = min(tile, size)
    if size <= tile:
        return tile, [0]
    overlap = min(overlap, tile // 2)
    count = math.ceil((size - overlap) / (tile - overlap))
    tile = min(tile, math.ceil((size + (count - 1) * overlap) / count / multiple) * multiple)
    return tile, tile_starts(size, tile, overlap, quantum)


def tile_plan(height: int, width: int, options: DiffusionOptions, multiple: int, quantum: int) -> TilePlan:
    """Tiles of at most ``options.tile`` x ``options.tile_short`` pixels (the long side along the frame's long
    side, as SVD's native 1024x576), multiples of ``multiple`` (the VAE's and the UNet's downsampling), over the
    frame padded to multiples of it; starts on the latent grid (``quantum``). At 1080p: 2 x 2 tiles of
    1024x576, 1.14x the frame's pixels."""
    padded_h, padded_w = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    long_side = max(multiple, options.tile // multiple * multiple)
    short_side = max(multiple, options.tile_short // multiple * multiple)
    tile_h, tile_w = (short_side, long_side) if width >= height else (long_side, short_side)
    tile_h, ys = _axis(padded_h, tile_h, options.tile_overlap, multiple, quantum)
    tile_w, xs = _axis(padded_w, tile_w, options.tile_overlap, multiple, quantum)
    return TilePlan(padded_h, padded_w, tile_h, tile_w, tuple(ys), tuple(xs))


class DiffusionInpainter(Inpainter):
    name = "diffusion"

    def __init__(self, weights: str | None, device: str | torch.device | None = None,
                 options: DiffusionOptions | None = None, precision: str = "auto") -> None:
        if not weights:
            raise WeightsError("--inpaint diffusion needs --inpaint-weights: a folder or an s3:// prefix with "
                               "unet/, vae/, scheduler/ (and image_encoder/, feature_extractor/)")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.models = load_models(weights, self.device, precision)
        self.options = options or self.models.options
        self.scheduler = copy.deepcopy(self.models.scheduler)  # schedulers keep per-run state
        self.frames_per_call = self.options.frames_per_chunk - self.options.overlap
        self.context_frames = self.options.overlap
        self.restart_seconds = float(self.options.restart_seconds)
        self.tiles_run = 0  # tiles that went through the model (tiles with no hole are skipped)
        self.reset()

    def reset(self) -> None:
        """Start the chain of chunks afresh (a new shot, or a restart): no context, the noise seeded again."""
        # the last inpainted frames [K,3,H,W] and their holes [K,1,H,W]: the next chunk's context
        self._context: torch.Tensor | None = None
        self._context_holes: torch.Tensor | None = None
        self._generator = torch.Generator(device="cpu").manual_seed(self.options.seed)
        #: frames inpainted since the chain started: where the next call's first frame sits on the chunk grid
        self.position = 0

    def chunk_end(self, position: int) -> int:
        """Where the chunk holding frame ``position`` (counted from the chain's start) ends, exclusive: the first
        chunk has ``frames_per_chunk`` new frames, every later one ``frames_per_call``. The grid depends on the
        position only, never on how the frames were handed in, so a caller that cuts its calls on it (a
        segment converter) gets the chunks of a single pass."""
        first = self.options.frames_per_chunk
        if position < first:
            return first
        return first + (1 + (position - first) // self.frames_per_call) * self.frames_per_call

    # --- the Inpainter interface ---------------------------------------------------------------------

    @torch.inference_mode()
    def inpaint(self, right, hole_mask, warped_disparity, left=None):
        """The frames cut on the chunk grid (``chunk_end``): the first chunk of a chain all new frames, the next
        ones ``overlap`` already inpainted frames (the context) followed by new ones. A call that ends inside a
        chunk runs that chunk short (``last_chunk``)."""
        right = right.float()
        holes = hole_mask.bool()
        out = torch.empty_like(right, memory_format=torch.contiguous_format)
        start = 0
        while start < right.shape[0]:
            stop = min(right.shape[0], start + self.chunk_end(self.position) - self.position)
            out[start:stop] = self._inpaint_chunk(right[start:stop], holes[start:stop])
            self.position += stop - start
            start = stop
        return out

    # --- one temporal chunk ---------------------------------------------------------------------------

    def _context_for(self, right: torch.Tensor) -> torch.Tensor | None:
        context = self._context
        return None if context is None or context.shape[-2:] != right.shape[-2:] or not len(context) else context

    def _inpaint_chunk(self, right: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        options = self.options
        context = self._context_for(right)
        k = 0
        if context is not None:
            k = options.overlap
            if options.last_chunk == "reach_back":  # at least frames_per_chunk - overlap frames in the chunk
                k = max(k, options.frames_per_chunk - options.overlap - len(right))
            k = min(k, len(context))
        if holes.any() or (k and self._context_holes[-k:].any() and not options.clear_overlap_mask):
            # new frames with their holes black (the warped view as StereoCrafter's splatting writes it); the
            # context frames as they were inpainted
            black = right.masked_fill(holes, 0.0)
            frames = black if not k else torch.cat([context[-k:], black])
            if not k:
                mask = holes
            elif options.clear_overlap_mask:
                mask = torch.cat([torch.zeros_like(holes[:1]).expand(k, -1, -1, -1), holes])
            else:
                mask = torch.cat([self._context_holes[-k:], holes])
            generated = self._generate(frames, mask)[k:]
            result = generated if options.composite == "frame" else self._composite(right, holes, generated)
        else:
            result = right.clone()
        keep = options.frames_per_chunk - 1 if options.last_chunk == "reach_back" else options.overlap
        if keep:
            history = result if context is None else torch.cat([context, result])
            history_holes = holes if context is None else torch.cat([self._context_holes, holes])
            self._context, self._context_holes = history[-keep:].clone(), history_holes[-keep:].clone()
        return result

    def _composite(self, right: torch.Tensor, holes: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        f = self.options.feather
        mask = holes.float()
        if f > 0:  # 1 in the holes, fading to 0 within f pixels outside them
            alpha = torch.maximum(mask, F.avg_pool2d(mask, 2 * f + 1, stride=1, padding=f,
                                                     count_include_pad=False))
        else:
            alpha = mask
        # Colour offset from a ring of real pixels just outside the feather: the model's tint drift.
        ring = (F.max_pool2d(mask, 2 * f + 5, stride=1, padding=f + 2) > 0) & (alpha == 0)
        ring = ring.float()
        count = ring.sum(dim=(2, 3), keepdim=True)
        offset = ((right - generated) * ring).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1.0)
        generated = (generated + offset * (count > 0)).clamp_(0.0, 1.0)
        return right * (1.0 - alpha) + generated * alpha

    # --- diffusion over tiles -------------------------------------------------------------------------

    def plan(self, height: int, width: int) -> TilePlan:
        return tile_plan(height, width, self.options, self.models.multiple, self.models.vae_factor)

    def _generate(self, frames: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
        """Generated frames [F,3,H,W] 0..1 (meaningful where there are holes)."""
        n, _, h, w = frames.shape
        plan = self.plan(h, w)
        if (plan.height, plan.width) != (h, w):
            frames = F.pad(frames, (0, plan.width - w, 0, plan.height - h), mode="replicate")
            holes = F.pad(holes.float(), (0, plan.width - w, 0, plan.height - h)).bool()
        latent = self.options.tile_blend == "latent"
        q = self.models.vae_factor if latent else 1
        th, tw = plan.tile_height // q, plan.tile_width // q
        overlap = self.options.tile_overlap // q
        total = torch.zeros((n, 4 if latent else 3, plan.height // q, plan.width // q), device=self.device)
        weight = torch.zeros((1, 1, plan.height // q, plan.width // q), device=self.device)
        for iy, y in enumerate(plan.ys):
            for ix, x in enumerate(plan.xs):
                box = (slice(None), slice(None), slice(y, y + plan.tile_height), slice(x, x + plan.tile_width))
                tile_holes = holes[box]
                if not tile_holes.any():  # nothing to make up here (the feather stays inside the overlap)
                    continue
                out = self._denoise(frames[box], tile_holes, decode=not latent)
                self.tiles_run += 1
                ramp = (_ramp(th, min(overlap, th // 2), iy > 0, iy < len(plan.ys) - 1, self.device, latent
                              ).view(1, 1, -1, 1)
                        * _ramp(tw, min(overlap, tw // 2), ix > 0, ix < len(plan.xs) - 1, self.device, latent
                                ).view(1, 1, 1, -1))
                cells = (slice(None), slice(None), slice(y // q, y // q + th), slice(x // q, x // q + tw))
                total[cells] += out.float().to(self.device) * ramp
                weight[cells] += ramp
        if not latent:
            return (total / weight.clamp_min(1e-6))[:, :, :h, :w].to(frames.device)
        # Cells no tile with holes covers keep the warped view's own latents (no hole there).
        fallback = self._encode(frames).float()
        latents = torch.where(weight > 1e-6, total / weight.clamp_min(1e-6), fallback)
        return self._decode(latents.to(self.models.dtype))[:, :, :h, :w].to(frames.device)

    def _clip_embedding(self, frame: torch.Tensor) -> torch.Tensor:
        models = self.models
        if models.image_encoder is None:
            dim = int(models.unet.config.cross_attention_dim)
            return torch.zeros((1, 1, dim), device=self.device, dtype=models.dtype)
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        size = models.clip_size
        # SVD's (and StereoCrafter's) resize: a Gaussian blur against aliasing, then bicubic
        image = _resize_with_antialiasing(frame[None].float(), (size, size))
        image = (image - models.clip_mean) / models.clip_std
        return models.image_encoder(image.to(models.dtype)).image_embeds.unsqueeze(1)

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """VAE latents (the distribution's mode) [F,4,h,w] of frames 0..1."""
        models = self.models
        step = max(1, self.options.vae_frames)
        x = (frames * 2.0 - 1.0).to(self.device)
        return torch.cat([models.vae.encode(x[i:i + step].to(models.vae_dtype)).latent_dist.mode()
                          for i in range(0, len(x), step)]).to(models.dtype)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Frames 0..1 [F,3,H,W] from denoised latents [F,4,h,w], ``vae_frames`` at a time (the temporal
        decoder mixes the frames it decodes together)."""
        models = self.models
        latents = latents.to(models.vae_dtype) / models.vae.config.scaling_factor
        step = max(1, self.options.vae_frames)
        decoded = [models.vae.decode(latents[i:i + step], num_frames=len(latents[i:i + step])).sample.float()
                   for i in range(0, len(latents), step)]
        return ((torch.cat(decoded) + 1.0) / 2.0).clamp_(0.0, 1.0)

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.options.noise == "fresh":
            return torch.randn(shape, generator=self._generator, dtype=torch.float32)
        return torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(self.options.seed),
                           dtype=torch.float32)

    def _denoise(self, frames: torch.Tensor, holes: torch.Tensor, decode: bool = True) -> torch.Tensor:
        """One tile: [F,3,h,w] 0..1 (new frames' holes black), mask [F,1,h,w] → generated [F,3,h,w] 0..1, or its
        denoised latents [F,4,h/8,w/8] with ``decode=False``."""
        models, options = self.models, self.options
        n, _, h, w = frames.shape
        device = self.device
        latents_cond = self._encode(frames)
        lh, lw = h // models.vae_factor, w // models.vae_factor
        if options.mask_downsample == "max":  # any hole in a latent cell marks the cell (thin holes survive)
            mask = F.adaptive_max_pool2d(holes.float().to(device), (lh, lw))
        else:  # StereoCrafter: one pixel per cell
            mask = F.interpolate(holes.float().to(device), scale_factor=1 / models.vae_factor)
        mask = mask.to(models.dtype)
        embedding = self._clip_embedding(frames[0].to(device))
        time_ids = torch.tensor([[options.fps - 1, options.motion_bucket_id, options.noise_aug_strength]],
                                device=device, dtype=models.dtype)
        condition = torch.cat([latents_cond, mask], dim=1).unsqueeze(0)
        guided = options.guidance_scale > 1.0
        if guided:  # the unconditional half: zero image embedding, zero latents and mask
            embedding = torch.cat([torch.zeros_like(embedding), embedding])
            condition = torch.cat([torch.zeros_like(condition), condition])
            time_ids = torch.cat([time_ids, time_ids])
        scheduler = self.scheduler
        scheduler.set_timesteps(options.steps, device=device)
        noise = self._noise((1, n, latents_cond.shape[1], lh, lw))
        latents = (noise.to(device) * scheduler.init_noise_sigma).to(models.dtype)
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            model_input = torch.cat([model_input.to(models.dtype), condition], dim=2)
            predicted = models.unet(model_input, t, encoder_hidden_states=embedding, added_time_ids=time_ids,
                                    return_dict=False)[0]
            if guided:
                unconditional, conditional = predicted.chunk(2)
                predicted = unconditional + options.guidance_scale * (conditional - unconditional)
            latents = scheduler.step(predicted, t, latents).prev_sample.to(models.dtype)
        if not decode:
            return latents[0]
        return self._decode(latents[0]).to(frames.device)
