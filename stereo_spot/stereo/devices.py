"""Where the engine runs: which devices, how many worker processes, how many frames per batch, which encoder.

Every decision is a plain function of plain facts (the device requested, how many GPUs are visible, how many cores
this process may use, how much GPU memory is free, which encoders FFmpeg has), so it is testable anywhere; the
few functions that ask the machine (``cuda_device_count``, ``free_memory``, ``nvenc_usable``) are thin and only
feed those facts in. The runner, the CLI and the engine all go through here.

Policy:

* ``--device`` unset: every visible GPU, else the CPU. ``cuda``: every visible GPU (an error without one).
  ``cuda:K``: that GPU only. ``cpu``: the CPU.
* On GPUs, **one worker process per GPU** by default, worker ``i`` pinned to ``cuda:i``: each loads its models
  once and converts segment after segment, so a GPU holds one copy of the weights. An explicit ``--workers N``
  deals the GPUs out round-robin (more than one per GPU only when asked for).
* On the CPU, one worker per core by default, each with an equal share of the cores for its torch threads.
* Frames per batch on a GPU follow the free memory (``batch_frames_for_memory``); on the CPU the engine works a
  frame at a time and the batch is only the pipeline's unit (``DEFAULT_BATCH_FRAMES``).
* The neural models' number format (``inference_dtype``): fp16 on CUDA, bf16 for a model known to overflow in
  fp16 (where the GPU computes bf16), fp32 on the CPU; ``--precision`` asks for one.
* The encoder: NVENC (``h264_nvenc``) when a GPU does the work and FFmpeg's NVENC opens on this machine, libx264
  otherwise. Every encoder carries the same frame-packing signalling (``media/encode.py``: ``sei_writer``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import torch

from stereo_spot.errors import UserError

#: Frames handed to the engine at once on the CPU (and at least this many on a GPU when memory allows).
DEFAULT_BATCH_FRAMES = 8
#: Most frames per batch on a GPU: beyond this a batch only adds latency and memory.
MAX_GPU_BATCH_FRAMES = 64
#: Share of the free GPU memory a batch may plan to use (the rest: allocator slack, the codec, other tensors).
GPU_MEMORY_SHARE = 0.6
#: Bytes of engine working memory per full-resolution pixel of a frame on a GPU: the float frame, the warp's
#: buffers (tap positions, weights, z-buffer, accumulators, int64 indices), disparity, hole mask, the packed
#: output and temporaries. About 90 B are the warp's named buffers; the rest covers temporaries.
ENGINE_BYTES_PER_PIXEL = 192


class DeviceError(UserError):
    """The requested device does not exist on this machine; the message says what does."""


class GpuMemoryError(UserError):
    """The GPU ran out of memory even at the smallest batch; the message names the resolution and batch."""


# --- asking the machine (thin) ---------------------------------------------------------------------------


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def usable_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: every CPU torch runs on; GPUs from Ampere (compute capability
    8) on. Older GPUs only emulate it, slower than fp32."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (``torch.cuda.mem_get_info``), None elsewhere."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def memory_info(device: torch.device | str) -> tuple[int, int] | None:
    """(free, total) bytes on a CUDA device, None elsewhere or where the driver cannot say."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return None
    return int(free), int(total)


# --- decisions (plain functions) -------------------------------------------------------------------------


def resolve_devices(requested: str | None, cuda_count: int) -> list[str]:
    """The devices a run uses, from ``--device`` and the number of visible GPUs.

    >>> resolve_devices(None, 2), resolve_devices("cuda:1", 2), resolve_devices(None, 0)
    (['cuda:0', 'cuda:1'], ['cuda:1'], ['cpu'])
    """
    text = (requested or "").strip().lower()
    if not text:
        return [f"cuda:{i}" for i in range(cuda_count)] or ["cpu"]
    if text == "cpu":
        return ["cpu"]
    if text == "cuda":
        if cuda_count == 0:
            raise DeviceError("--device cuda: no CUDA GPU is visible on this machine (use --device cpu)")
        return [f"cuda:{i}" for i in range(cuda_count)]
    if text.startswith("cuda:"):
        index_text = text[len("cuda:"):]
        if not index_text.isdigit():
            raise DeviceError(f"--device {requested}: write cuda:N with N a GPU number, e.g. cuda:0")
        index = int(index_text)
        if index >= cuda_count:
            seen = f"GPUs 0..{cuda_count - 1} are visible" if cuda_count else "no CUDA GPU is visible"
            raise DeviceError(f"--device {requested}: there is no GPU {index} on this machine ({seen})")
        return [f"cuda:{index}"]
    raise DeviceError(f"--device {requested} is not a device: use cpu, cuda or cuda:N")


def check_device(requested: str | None) -> list[str]:
    """``resolve_devices`` against this machine: raises ``DeviceError`` for a device it does not have."""
    return resolve_devices(requested, cuda_device_count())


@dataclass(frozen=True)
class WorkerPlan:
    """How a run spreads segments over processes: ``devices[i]`` is worker ``i``'s device."""

    devices: tuple[str, ...]
    threads: int  # torch intra-op threads per worker

    @property
    def workers(self) -> int:
        return len(self.devices)

    @property
    def on_gpu(self) -> bool:
        return self.devices[0].startswith("cuda")


def plan_workers(devices: list[str], cores: int, workers: int | None = None, segments: int | None = None
                 ) -> WorkerPlan:
    """Worker processes for ``devices`` (from ``resolve_devices``): one per GPU, or one per core on the CPU,
    unless ``workers`` says otherwise; never more than ``segments``. Each worker gets an equal share of the
    cores for its torch threads (on a GPU they mostly feed the codec and the depth cues' CPU parts)."""
    if not devices:
        raise ValueError("plan_workers needs at least one device")
    gpu = devices[0].startswith("cuda")
    count = workers if workers is not None else (len(devices) if gpu else cores)
    if segments is not None:
        count = min(count, segments)
    count = max(1, count)
    chosen = tuple(devices[i % len(devices)] for i in range(count))
    return WorkerPlan(devices=chosen, threads=max(1, cores // count))


def batch_frames_for_memory(free_bytes: int | None, width: int, height: int, *,
                            bytes_per_pixel: int = ENGINE_BYTES_PER_PIXEL, share: float = GPU_MEMORY_SHARE,
                            minimum: int = 1, maximum: int = MAX_GPU_BATCH_FRAMES,
                            default: int = DEFAULT_BATCH_FRAMES) -> int:
    """Frames per batch that fit in ``share`` of ``free_bytes`` at ``bytes_per_pixel`` per frame pixel
    (``default`` where the free memory is unknown: the CPU), within ``minimum``..``maximum``.

    >>> batch_frames_for_memory(80 * 2**30, 1920, 1080)   # an idle 80 GB GPU: capped
    64
    >>> batch_frames_for_memory(4 * 2**30, 1920, 1080)    # 4 GB free
    6
    """
    if free_bytes is None:
        return default
    per_frame = max(1, width * height * bytes_per_pixel)
    fits = int(free_bytes * share // per_frame)
    return max(minimum, min(maximum, fits))


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def inference_dtype(device_type: str, requested: str = "auto", *, bf16: bool = True,
                    overflows_in_fp16: bool = False) -> torch.dtype:
    """The number format a neural model runs in, from the device type ("cuda", "cpu"), the job's ``--precision``,
    whether the device computes bf16 (``bf16_supported``) and whether the model is known to overflow in fp16
    (a VAE whose config says ``force_upcast``: its activations pass fp16's 65504).

    ========== ============ ===========================================================================
    requested  CPU          CUDA
    ========== ============ ===========================================================================
    auto       fp32         fp16 (half the memory, tensor cores); a model that overflows: bf16, else fp32
    fp32       fp32         fp32
    fp16       fp32 [1]_    fp16; a model that overflows: as auto (its output would be inf/NaN)
    bf16       bf16         bf16 where the GPU computes it, else fp32 (emulated bf16 is slower than fp32)
    ========== ============ ===========================================================================

    .. [1] the CPU has no fast fp16 arithmetic: fp16 there would be slower than fp32 and save nothing that
       matters. bf16 on the CPU is honoured (it runs, at about fp32's speed, and tests use it).

    >>> inference_dtype("cuda"), inference_dtype("cuda", overflows_in_fp16=True), inference_dtype("cpu")
    (torch.float16, torch.bfloat16, torch.float32)
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return torch.float32
    if device_type != "cuda":
        return torch.bfloat16 if requested == "bf16" else torch.float32
    if requested == "bf16" or overflows_in_fp16:
        return torch.bfloat16 if bf16 else torch.float32
    return torch.float16


def dtype_for(device: torch.device | str, requested: str = "auto", *, overflows_in_fp16: bool = False
              ) -> torch.dtype:
    """``inference_dtype`` with this machine's facts about ``device``."""
    device = torch.device(device)
    return inference_dtype(device.type, requested, bf16=bf16_supported(device), overflows_in_fp16=overflows_in_fp16)


#: Encoders in order of preference when a GPU does the work and the job leaves the choice to the machine. Only
#: H.264, the codec every player and headset decodes; ``--codec hevc_nvenc`` is there for a smaller file (both
#: carry the frame-packing SEI, written into the packets by ``media/encode.py``).
GPU_ENCODERS = ("h264_nvenc",)
CPU_ENCODER = "libx264"


def choose_encoder(available: Iterable[str], gpu: bool, usable: Iterable[str] = ()) -> str:
    """The video encoder: the first of ``GPU_ENCODERS`` that FFmpeg has (``available``) and that opened on this
    machine (``usable``: NVENC is compiled into PyAV's FFmpeg even where no NVIDIA driver is present) when a
    GPU does the work; libx264 otherwise."""
    available, usable = set(available), set(usable)
    if gpu:
        for codec in GPU_ENCODERS:
            if codec in available and codec in usable:
                return codec
    return CPU_ENCODER


@functools.cache
def nvenc_usable(codec: str = "h264_nvenc") -> bool:
    """Whether FFmpeg's NVENC encoder opens here (a driver and a GPU with an encoder are present): encodes a
    few black frames in memory, once per process."""
    import av

    if codec not in av.codecs_available:
        return False
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
        frame = av.VideoFrame(256, 256, "yuv420p")
        frame.pts = 0
        context.encode(frame)
        context.encode(None)
        return True
    except Exception:  # noqa: BLE001 - any failure to open means "not usable here"
        return False


def encoder_for(device: torch.device | str, requested: str = "auto") -> str:
    """The encoder for a conversion running on ``device``: the job's choice, or for ``auto`` the machine's facts
    fed to ``choose_encoder``. An NVENC encoder chosen where it does not open is a clear error."""
    if requested != "auto":
        if requested.endswith("_nvenc") and not nvenc_usable(requested):
            from stereo_spot.media.errors import MediaError

            raise MediaError(f"--codec {requested} needs an NVIDIA GPU with a driver FFmpeg can open; it does not "
                             "open on this machine (choose --codec auto or libx264)")
        return requested
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_ENCODER
    import av

    usable = [codec for codec in GPU_ENCODERS if nvenc_usable(codec)]
    return choose_encoder(av.codecs_available, gpu=True, usable=usable)


def default_device() -> torch.device:
    """The device when none is asked for: the first GPU, else the CPU."""
    return torch.device(resolve_devices(None, cuda_device_count())[0])

