"""Errors a user can act on. Their message is shown as it is (one line, no traceback) and recorded as a failed
job's reason; anything else reaching the CLI or UI is a bug and is reported as one."""

from __future__ import annotations


class UserError(Exception):
    """Something about the input or the request is wrong; the message says what and what to do."""


class JobNotFound(UserError):
    pass


class StepError(UserError):
    """A pipeline step cannot go on with the job in its current state (missing segments, deleted job...)."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """A failure reason fit for a job record and a status line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def require_extra(module: str, extra: str, what: str) -> None:
    """Optional dependency groups (``pipelines``, ``ui``, ``models``): say which to install instead of failing
    with an ImportError deep inside a step."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the optional {extra!r} dependencies: pip install 'stereo-spot[{extra}]' "
                        f"(or scripts/setup --dev)")
