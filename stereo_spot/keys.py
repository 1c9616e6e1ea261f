"""Object-key conventions. Every key the project reads or writes is built and parsed here, nowhere else.

    input/{job_id}/source.mp4                                         input bucket
    input/{job_id}/depth.mkv                                          input bucket (a depth video to render from)
    segments/{job_id}/{segment_index:05d}_{total_segments:05d}_{mode}.mp4   input bucket (chunk output)
    jobs/{job_id}/segments/{segment_index}.mp4                         output bucket (convert output)
    jobs/{job_id}/final.mp4                                            output bucket
    jobs/{job_id}/report.json                                          output bucket (comfort report)
    argo-artifacts/{workflow}/{pod}/...                                output bucket (Argo's logs and artifacts)

A job id is a canonical lowercase UUID, checked before any key is built from it, so a crafted id can never
reach outside its own prefix (``../``, ``/``, empty).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote_plus


class InvalidKey(ValueError):
    """A job id or object key that does not follow the conventions."""


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MODE = re.compile(r"^[a-z0-9-]{1,16}$")
_INPUT = re.compile(r"^input/(?P<job_id>[^/]+)/source\.mp4$")
_SEGMENT = re.compile(
    r"^segments/(?P<job_id>[^/]+)/(?P<index>\d{5})_(?P<total>\d{5})_(?P<mode>[a-z0-9-]+)\.mp4$"
)
_OUTPUT_SEGMENT = re.compile(r"^jobs/(?P<job_id>[^/]+)/segments/(?P<index>\d+)\.mp4$")

# Argo's artifact repository (step logs, run outputs) writes under this prefix of the output bucket, with the
# keyFormat ``argo-artifacts/{{workflow.name}}/{{pod.name}}`` (manifests/overlays/aws/artifact-repositories.yaml):
# the workflow identity's IAM policy allows exactly this prefix beside the pipeline's own.
ARGO_ARTIFACTS_PREFIX = "argo-artifacts/"


def new_job_id() -> str:
    return str(uuid.uuid4())


def is_job_id(text: str) -> bool:
    return isinstance(text, str) and _UUID.match(text) is not None


def is_job_id_prefix(text: str) -> bool:
    """Whether ``text`` could begin a job id (what a person types for a short id)."""
    template = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    return 0 < len(text) <= len(template) and all(
        (c == "-") if t == "-" else c in "0123456789abcdef" for c, t in zip(text, template, strict=False))


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _UUID.match(job_id):
        raise InvalidKey(f"invalid job id {job_id!r}: expected a lowercase UUID like {new_job_id()}")
    return job_id


def input_key(job_id: str) -> str:
    return f"input/{validate_job_id(job_id)}/source.mp4"


def depth_video_key(job_id: str) -> str:
    """Where a job's depth video to render from is stored: under the job's own input prefix, so whatever may
    read the job's source may read it, and not ending in .mp4, so its upload starts no run."""
    return f"input/{validate_job_id(job_id)}/depth.mkv"


def segment_key(job_id: str, segment_index: int, total_segments: int, mode: str) -> str:
    validate_job_id(job_id)
    if not 0 <= segment_index < total_segments <= 99999:
        raise InvalidKey(f"segment {segment_index} of {total_segments} is out of range")
    if not _MODE.match(mode):
        raise InvalidKey(f"invalid mode {mode!r}")
    return f"segments/{job_id}/{segment_index:05d}_{total_segments:05d}_{mode}.mp4"


def segments_prefix(job_id: str) -> str:
    return f"segments/{validate_job_id(job_id)}/"


def output_segment_key(job_id: str, segment_index: int) -> str:
    if segment_index < 0:
        raise InvalidKey(f"negative segment index {segment_index}")
    return f"jobs/{validate_job_id(job_id)}/segments/{segment_index}.mp4"


def job_output_prefix(job_id: str) -> str:
    return f"jobs/{validate_job_id(job_id)}/"


def final_key(job_id: str) -> str:
    return f"jobs/{validate_job_id(job_id)}/final.mp4"


def report_key(job_id: str) -> str:
    return f"jobs/{validate_job_id(job_id)}/report.json"


def normalize_event_key(raw_key: str) -> str:
    """S3 event notifications URL-encode keys (spaces become '+'): decode before parsing."""
    return unquote_plus(raw_key)


def parse_input_key(key: str) -> str:
    """Return the job id of ``input/{job_id}/source.mp4``; raise InvalidKey for anything else."""
    match = _INPUT.match(key)
    if not match:
        raise InvalidKey(f"{key!r} is not an input key (expected input/<job id>/source.mp4)")
    return validate_job_id(match["job_id"])


def job_id_from_event_key(raw_key: str) -> str:
    """The job id of an uploaded source named by a key as an event carries it: S3 events URL-encode keys and
    Argo Events' templates cannot decode them, so every step decodes the raw key it is given."""
    return parse_input_key(normalize_event_key(raw_key))


def is_input_key(key: str) -> bool:
    try:
        parse_input_key(key)
    except InvalidKey:
        return False
    return True


@dataclass(frozen=True)
class SegmentKey:
    job_id: str
    segment_index: int
    total_segments: int
    mode: str

    @property
    def key(self) -> str:
        return segment_key(self.job_id, self.segment_index, self.total_segments, self.mode)


def parse_segment_key(key: str) -> SegmentKey:
    match = _SEGMENT.match(key)
    if not match:
        raise InvalidKey(f"{key!r} is not a segment key")
    parsed = SegmentKey(validate_job_id(match["job_id"]), int(match["index"]), int(match["total"]),
                        match["mode"])
    if parsed.segment_index >= parsed.total_segments:
        raise InvalidKey(f"{key!r}: segment index beyond the total")
    return parsed


def parse_output_segment_key(key: str) -> tuple[str, int]:
    match = _OUTPUT_SEGMENT.match(key)
    if not match:
        raise InvalidKey(f"{key!r} is not an output segment key")
    return validate_job_id(match["job_id"]), int(match["index"])
