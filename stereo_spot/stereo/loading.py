"""What a failed model load tells the user: the folder and the reason in one line, never a traceback.

Loading through ``transformers``/``diffusers`` fails in many ways (a truncated safetensors file, a config.json
that is not JSON, weights whose shapes do not fit the architecture, an unknown model type, a missing file), with
exceptions of many types and messages that are sometimes a page long. ``loading_error`` turns any of them into a
``WeightsError`` naming the folder and saying what is wrong; ``quiet_loading`` keeps the libraries' own
warnings (a table per mismatched tensor) off the user's terminal while loading.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from stereo_spot.weights import WeightsError

_LIBRARY_LOGGERS = ("transformers", "diffusers")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    if kind == "SafetensorError" or "deserializing header" in text:
        return f"a weights file is damaged or incomplete (safetensors: {text})"
    if "mismatch" in text.lower() or "size mismatch" in text or "ignore_mismatched_sizes" in text:
        return ("the weights do not fit the architecture its config.json describes (tensor shapes differ: "
                "the config was changed, or the weights belong to another model)")
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
    """Raise the libraries' log level to errors while loading (restored afterwards)."""
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
