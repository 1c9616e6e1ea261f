"""The one decision on failures: user error (exit 2, the job failed at once, never retried), transient or a bug
(both retried) — and that every caller takes it from stereo_spot.errors."""

from __future__ import annotations

import re
from pathlib import Path

import av.error
import pytest
from pydantic import BaseModel, ValidationError

from stereo_spot import keys
from stereo_spot.errors import Failure, StepError, UserError, classify, failure_reason, is_user_error
from stereo_spot.media.errors import MediaError
from stereo_spot.ports import ConflictError, NotFound, StoreError
from stereo_spot.weights import WeightsError

ROOT = Path(__file__).resolve().parent.parent


def _validation_error() -> ValidationError:
    class Settings(BaseModel):
        divergence: float

    try:
        Settings(divergence="far")
    except ValidationError as exc:
        return exc
    raise AssertionError("no validation error")


@pytest.mark.parametrize("exc,kind", [
    (UserError("bad"), Failure.USER),
    (StepError("job is deleted"), Failure.USER),
    (MediaError("not a video"), Failure.USER),
    (WeightsError("no config.json"), Failure.USER),
    (keys.InvalidKey("not an input key"), Failure.USER),
    (NotFound("object does not exist"), Failure.USER),
    (_validation_error(), Failure.USER),
    (FileNotFoundError("input.mp4"), Failure.USER),
    (StoreError("DynamoDB timed out"), Failure.TRANSIENT),
    (ConflictError("lost a race"), Failure.TRANSIENT),
    (NotADirectoryError("scratch"), Failure.TRANSIENT),
    (OSError(28, "No space left on device"), Failure.TRANSIENT),
    (av.error.InvalidDataError(1094995529, "Invalid data found when processing input", "clip.avi"), Failure.USER),
    (av.error.DecoderNotFoundError(1128613112, "Decoder not found"), Failure.USER),
    (av.error.BugError(558323010, "Internal bug, should not have happened"), Failure.INTERNAL),
    (RuntimeError("CUDA error: an illegal memory access"), Failure.INTERNAL),
    (ZeroDivisionError("division by zero"), Failure.INTERNAL),
])
def test_classify(exc, kind):
    assert classify(exc) is kind
    assert is_user_error(exc) is (kind is Failure.USER)
    assert failure_reason(exc).startswith("internal error: ") is (kind is Failure.INTERNAL)


def test_an_undecodable_file_says_so():
    exc = av.error.InvalidDataError(1094995529, "Invalid data found when processing input", "/tmp/work/clip.avi")
    assert failure_reason(exc) == "clip.avi cannot be decoded: Invalid data found when processing input"


def test_no_caller_keeps_its_own_list_of_user_errors():
    """The CLI, the components, the runner and the worker ask stereo_spot.errors; none lists exception types
    of its own to decide between a user error and a retry."""
    pattern = re.compile(r"isinstance\(exc, \((?:[\w.]+, )*(?:UserError|StoreError|InvalidKey)")
    for path in ["stereo_spot/cli/main.py", "stereo_spot/cli/aws.py", "stereo_spot/runner.py",
                 "stereo_spot/cluster/worker.py",
                 *[str(p.relative_to(ROOT)) for p in (ROOT / "components").glob("*.py")]]:
        assert not pattern.search((ROOT / path).read_text()), path
