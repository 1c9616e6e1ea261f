"""What a failed model load tells the user: the folder and the reason in one line, never a traceback.

Loading through ``transformers``/``diffusers`` fails in many ways (a truncated safetensors file, a config.json
that is not JSON, weights whose shapes do not fit the architecture, an unknown model type, a missing file), with
exceptions of many types and messages that are sometimes a page long. ``loading_error`` turns any of them into a
``WeightsError`` naming the folder and saying what is wrong; ``quiet_loading`` keeps the libraries' own
warnings (a table per mismatched tensor) off the user's terminal while loading.

A GPU that is too full to take the weights is not a fault of the weights: ``load_on_device`` frees the cached
memory and loads once more, then fails with a ``GpuMemoryError`` naming the device, the model, the free memory
and the size of the weights (``load_memory_message``).
"""

from __future__ import annotations

import gc
import json
import logging
import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from stereo_spot.stereo.devices import GpuMemoryError, memory_info
from stereo_spot.weights import WeightsError

_LIBRARY_LOGGERS = ("transformers", "diffusers")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
GiB = 2**30
T = TypeVar("T")


def _causes(exc: BaseException):
    """``exc`` and the exceptions it was raised from (the libraries wrap the safetensors error)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    damaged = next((e for e in _causes(exc) if type(e).__name__ == "SafetensorError"
                    or "deserializing header" in str(e)), None)
    if damaged is not None:
        return f"a weights file is damaged or incomplete (safetensors: {' '.join(str(damaged).split())})"
    if "mismatch" in text.lower() or "size mismatch" in text or "ignore_mismatched_sizes" in text:
        return ("the weights do not fit the architecture its config.json describes (tensor shapes differ: "
                "the config was changed, or the weights belong to another model)")
    missing = re.search(r"no file named (\S+)\.bin found in directory (\S+?)\.?$", text)
    if missing:  # diffusers looked for the .safetensors file first, then for the .bin one
        return f"{missing[2]} has no weights file ({missing[1]}.safetensors or {missing[1]}.bin)"
    if isinstance(exc, MemoryError):
        return "not enough memory to hold the weights"
    return text or kind


def loading_error(what: str, folder: Path, exc: BaseException) -> WeightsError:
    """A one-line ``WeightsError`` for a failed load of ``what`` from ``folder``."""
    if isinstance(exc, WeightsError):
        return exc
    reason = _reason(exc)
    if len(reason) > 400:
        reason = reason[:399] + "…"
    return WeightsError(f"cannot load the {what} from {folder}: {reason}")


@contextmanager
def quiet_loading():
    """Keep the libraries' own warnings and errors off the terminal while loading (restored afterwards): a
    failed load is reported once, by ``loading_error``, and diffusers logs an error for a missing safetensors
    file before it tries the .bin one."""
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def read_config(path: Path) -> dict[str, Any]:
    """A JSON configuration file of a checkpoint, or a ``WeightsError`` naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({' '.join(str(exc).split())})") from None


# --- a GPU too full to take the weights ------------------------------------------------------------------


def weights_bytes(folder: Path) -> int:
    """Bytes of the weight files under ``folder`` (what the model takes on the device at the stored precision)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())


def load_memory_message(what: str, folder: Path, device: str, memory: tuple[int, int] | None, weights: int,
                        detail: str = "") -> str:
    """The one line for a model that does not fit on ``device``: ``memory`` is its (free, total) bytes after
    the cache was emptied (None: unknown), ``weights`` the weights' bytes on disk."""
    free = (f"{memory[0] / GiB:.1f} GiB free of {memory[1] / GiB:.1f} GiB" if memory is not None
            else "free memory unknown")
    size = f"{weights / GiB:.2f} GiB of weights on disk" if weights else "weights of unknown size"
    advice = ("another process may be holding the GPU's memory: free it, choose another GPU with --device cuda:N, "
              "or a smaller model")
    line = f"out of GPU memory on {device} loading the {what} from {folder} ({size}; {free}): {advice}"
    detail = " ".join(detail.split())
    return f"{line} ({detail[:160]})" if detail else line


def _free_cached_memory(device: torch.device) -> None:
    gc.collect()  # the half-moved model of the failed attempt
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_on_device(what: str, folder: Path, device: torch.device | str, load: Callable[[], T]) -> T:
    """``load()`` (read the weights and move them to ``device``). A CUDA out-of-memory empties the cached memory
    and loads once more; a second one fails with ``GpuMemoryError`` (``load_memory_message``)."""
    device = torch.device(device)
    try:
        return load()
    except torch.cuda.OutOfMemoryError:
        pass  # leaving the handler drops the exception and, with its frames, the half-moved model
    _free_cached_memory(device)
    try:
        return load()
    except torch.cuda.OutOfMemoryError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
    _free_cached_memory(device)
    raise GpuMemoryError(load_memory_message(what, folder, str(device), memory_info(device), weights_bytes(folder),
                                             detail))
