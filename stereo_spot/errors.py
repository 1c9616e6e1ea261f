"""Errors a user can act on. Their message is shown as it is (one line, no traceback) and recorded as a failed
job's reason; anything else reaching the CLI or UI is a bug and is reported as one."""

from __future__ import annotations

from enum import StrEnum


class UserError(Exception):
    """Something about the input or the request is wrong; the message says what and what to do."""


class JobNotFound(UserError):
    pass


class StepError(UserError):
    """A pipeline step cannot go on with the job in its current state (missing segments, deleted job...)."""


class Failure(StrEnum):
    """What kind of failure an exception is: the one decision the CLI, the engine components, the embedded runner
    and the SQS worker all take from ``classify``."""

    USER = "user"  # the input or the request is wrong: fail the job at once with the message; never retried
    TRANSIENT = "transient"  # a store, the network or the disk: shown as its message; retried (exit code 1)
    INTERNAL = "internal"  # anything else is a bug: reported as an internal error; retried (exit code 1)


# Files the user named that are missing or unreadable: a retry cannot fix them.
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError)


def classify(exc: BaseException) -> Failure:
    from pydantic import ValidationError

    from stereo_spot.keys import InvalidKey
    from stereo_spot.ports import NotFound, StoreError

    if isinstance(exc, (UserError, InvalidKey, ValidationError, NotFound, *_USER_OS_ERRORS)):
        return Failure.USER
    if _undecodable_media(exc):
        return Failure.USER
    if isinstance(exc, (StoreError, OSError)):  # ConflictError too: a lost race is decided again by a retry
        return Failure.TRANSIENT
    return Failure.INTERNAL


def _undecodable_media(exc: BaseException) -> bool:
    """An FFmpeg error that says the file's data is what is wrong (damaged, or a codec or container FFmpeg does
    not know), where the media layer did not already turn it into a MediaError: retrying cannot fix it."""
    import av.error

    return isinstance(exc, (av.error.InvalidDataError, av.error.DecoderNotFoundError,
                            av.error.DemuxerNotFoundError, av.error.PatchWelcomeError))


def is_user_error(exc: BaseException) -> bool:
    """Exit code 2 on the engines: the job is marked failed at once and the step is not retried."""
    return classify(exc) is Failure.USER


def failure_reason(exc: BaseException) -> str:
    """The one line recorded on a failed job and shown to the user: the message itself for what the user or the
    operator can act on, marked as an internal error for a bug."""
    if classify(exc) is Failure.INTERNAL:
        return f"internal error: {one_line(exc)}"
    if _undecodable_media(exc):
        from pathlib import Path

        name = Path(exc.filename).name if getattr(exc, "filename", None) else "the video"
        return one_line(f"{name} cannot be decoded: {exc.strerror or exc}")
    return one_line(exc)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """A failure reason fit for a job record and a status line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def install_hint(extra: str) -> str:
    """How to add an optional dependency group to this installation: from a checkout set up by
    ``scripts/setup`` (an editable install) that is the checkout's own pip, otherwise pip and the extra."""
    import json
    import sys
    from importlib.metadata import distributions
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    pip = Path(sys.executable).with_name("pip")
    # the installed record, not a build's egg-info that the working folder may put first on the path
    records = [d.read_text("direct_url.json") for d in distributions(name="stereo-spot")]
    try:
        origin = json.loads(next((r for r in records if r), "{}"))
    except ValueError:
        origin = {}
    if origin.get("dir_info", {}).get("editable") and origin.get("url", "").startswith("file://"):
        checkout = Path(unquote(urlparse(origin["url"]).path))
        if checkout == Path.cwd():
            return f"{pip.relative_to(checkout) if pip.is_relative_to(checkout) else pip} install -e '.[{extra}]'"
        return f"{pip} install -e '{checkout}[{extra}]'"
    return f"{pip} install 'stereo-spot[{extra}]'"


def require_extra(module: str, extra: str, what: str) -> None:
    """Optional dependency groups (``pipelines``, ``ui``, ``models``): say which to install instead of failing
    with an ImportError deep inside a step."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the optional {extra!r} dependencies: {install_hint(extra)} "
                        f"(or scripts/setup --dev for everything)")
