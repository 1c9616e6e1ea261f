"""Logging for everything that runs unattended (pipeline steps, the SQS worker, the operator commands): one JSON
object per line on stderr, so a log pipeline (Loki, CloudWatch, Elasticsearch) can filter by job and segment
without parsing prose.

Each line has ``time``, ``level``, ``logger``, ``message`` and, when known, ``job_id``, ``segment`` and ``step``:
from ``log_context(job_id=..., segment=...)`` around the work (a context variable, so threads started inside
inherit nothing by accident) or from ``extra={...}`` on one call. A traceback travels in ``exc_info`` as one
string field, so it stays one line.

``STEREO_SPOT_LOG_FORMAT=json|text`` chooses the format; by default JSON unless stderr is a terminal (a person
at a shell reads text). ``STEREO_SPOT_LOG_LEVEL`` sets the level (INFO).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("job_id", "segment", "step")
# Never mutated: log_context() sets a new dict, so the shared empty default is safe.
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "stereo_spot_log_context", default={})  # noqa: B039
# Attributes every LogRecord has; anything else on a record came from ``extra`` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (job_id, segment, step, ...) to every line logged inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context.get())
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and value is not None:
                line[name] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with the context appended (``job=… segment=…``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {**_context.get(), **{k: getattr(record, k) for k in CONTEXT_FIELDS
                                       if getattr(record, k, None) is not None}}
        return text + "".join(f" {k}={v}" for k, v in fields.items())


def wants_json(stream: Any = None) -> bool:
    from stereo_spot.config import reporting_settings

    choice = reporting_settings().stereo_spot_log_format
    if choice in ("json", "text"):
        return choice == "json"
    stream = stream or sys.stderr
    return not (hasattr(stream, "isatty") and stream.isatty())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each line (it is swapped by test runners and by
    ``stdout_to_stderr`` in the components), never to a stream closed since."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str | None = None, stream: Any = None) -> None:
    """One handler on stderr (or ``stream``) in the chosen format. Replaces a previous one of ours and the plain
    handler ``logging.basicConfig`` installs; other handlers (a test runner's capture) stay."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if wants_json(stream) else TextFormatter())
    handler._stereo_spot = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_stereo_spot", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    from stereo_spot.config import reporting_settings

    root.setLevel((level or reporting_settings().stereo_spot_log_level or "INFO").upper())
