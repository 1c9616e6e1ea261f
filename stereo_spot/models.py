"""Domain records shared by every engine and adapter.

These are plain pydantic models: the stores persist them with ``model_dump(mode="json")`` and read them back
with ``model_validate``, so a record looks the same in SQLite, DynamoDB and a workflow parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stereo_spot.keys import validate_job_id


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(StrEnum):
    CREATED = "created"
    CHUNKING_IN_PROGRESS = "chunking_in_progress"
    CHUNKING_COMPLETE = "chunking_complete"
    REASSEMBLING = "reassembling"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DELETED)


IN_PROGRESS_STATUSES = (
    JobStatus.CREATED,
    JobStatus.CHUNKING_IN_PROGRESS,
    JobStatus.CHUNKING_COMPLETE,
    JobStatus.REASSEMBLING,
)


class OutputFormat(StrEnum):
    """Stereo layouts. The value is the CLI spelling and the ``{mode}`` in segment keys."""

    SBS = "sbs"  # Full side-by-side: 2W x H
    HSBS = "hsbs"  # Half side-by-side: W x H, each eye squeezed horizontally
    TB = "tb"  # Full top-bottom: W x 2H
    HTB = "htb"  # Half top-bottom: W x H, each eye squeezed vertically
    ANAGLYPH = "anaglyph"  # red-cyan, W x H
    CROSS = "cross"  # Full side-by-side with the right eye on the left (2W x H): cross-eyed free viewing
    VR180 = "vr180"  # each eye projected onto a 180 degree equirectangular half, side by side (2S x S)
    # Colour on the left, its depth as grey on the right (near = bright), as iw3's --rgbd writes it for Looking
    # Glass and depth-aware players: 2W x H. Not a stereo pair.
    RGBD = "rgbd"
    HALF_RGBD = "half-rgbd"  # the same squeezed into the source's width, as iw3's --half-rgbd: W x H
    SPATIAL = "spatial"  # Apple's spatial video: the eyes as the two views of one MV-HEVC stream (media/mvhevc.py)

    @property
    def label(self) -> str:
        return {
            OutputFormat.SBS: "Full side-by-side",
            OutputFormat.HSBS: "Half side-by-side",
            OutputFormat.TB: "Full top-bottom",
            OutputFormat.HTB: "Half top-bottom",
            OutputFormat.ANAGLYPH: "Anaglyph (red-cyan)",
            OutputFormat.CROSS: "Cross-eyed (right-left side-by-side)",
            OutputFormat.VR180: "VR180 (equirectangular side-by-side)",
            OutputFormat.RGBD: "RGB-D (colour and depth side-by-side)",
            OutputFormat.HALF_RGBD: "Half RGB-D (colour and depth squeezed side-by-side)",
            OutputFormat.SPATIAL: "Spatial video (MV-HEVC, Apple Vision Pro)",
        }[self]

    @property
    def is_rgbd(self) -> bool:
        """Colour and depth rather than a stereo pair: nothing is rendered, no eye is swapped, and neither the
        stereo signalling nor the comfort report applies."""
        return self in (OutputFormat.RGBD, OutputFormat.HALF_RGBD)


def left_eye_first(output_format: OutputFormat | str, swap_eyes: bool = False) -> bool:
    """Whether the left eye takes the first half (the left, or the top) of a two-view layout: every layout but
    the cross-eyed one, unless the eyes are swapped. Packing, the bitstream's and the container's stereo
    signalling all follow it."""
    return (OutputFormat(output_format) is not OutputFormat.CROSS) != swap_eyes


class AnaglyphMethod(StrEnum):
    DUBOIS = "dubois"  # least-squares red-cyan matrices: the least ghosting and retinal rivalry
    COLOR = "color"  # red from the left eye, green+blue from the right
    HALF_COLOR = "half-color"  # left eye's red channel replaced by its luma: less rivalry on red objects
    GRAY = "gray"  # luma of each eye: no colour, no rivalry
    DUBOIS2 = "dubois2"  # Dubois' revised (2009) least-squares matrices
    WIMMER = "wimmer"  # Wimmer's optimized anaglyph: red from the left eye's green and blue
    WIMMER2 = "wimmer2"  # Wimmer's improved method: red hues kept in the green/blue mix, gamma on the red channel


class VideoCodec(StrEnum):
    """The encoder of the converted video."""

    AUTO = "auto"  # NVENC H.264 when a GPU converts and NVENC opens there, libx264 otherwise
    LIBX264 = "libx264"
    LIBX265 = "libx265"
    H264_NVENC = "h264_nvenc"
    HEVC_NVENC = "hevc_nvenc"


class Precision(StrEnum):
    """The number format the neural models compute in (``stereo.devices.inference_dtype`` decides for auto)."""

    AUTO = "auto"  # fp16 on a GPU (bf16 for a model that overflows in fp16), fp32 on the CPU
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # fp32's range at half the memory: for models that overflow in fp16


class PixelFormat(StrEnum):
    YUV420P = "yuv420p"  # 8-bit 4:2:0: what every player decodes
    YUV420P10LE = "yuv420p10le"  # 10-bit 4:2:0: smoother gradients, fewer hardware decoders
    YUV444P = "yuv444p"  # full-resolution colour (anaglyph's default: red and cyan fringes stay sharp)


# What a spatial video's vexu/hfov boxes may declare (media/vexu.py checks the same bounds): a baseline above 0 and
# at most a metre, a horizontal field of view above 0 and below 180 degrees.
MAX_BASELINE_MM = 1000.0
MAX_HFOV_DEGREES = 180.0


class ConversionSettings(BaseModel):
    """What the user chose for a job. Travels with the Job so every step converts the same way."""

    model_config = ConfigDict(extra="forbid")

    output_format: OutputFormat = OutputFormat.SBS
    anaglyph: AnaglyphMethod = AnaglyphMethod.DUBOIS
    swap_eyes: bool = False  # put the right eye where the layout puts the left one (and the left where the right)
    codec: VideoCodec = VideoCodec.AUTO
    crf: int | None = Field(None, ge=0, le=51, description="constant quality; None: STEREO_SPOT_CRF or 18")
    preset: str | None = Field(None, pattern=r"^[a-z0-9]{1,16}$", description="the encoder's speed preset")
    pix_fmt: PixelFormat | None = None  # None: yuv444p for anaglyph, yuv420p otherwise
    max_fps: float | None = Field(None, gt=0.0, le=480.0, description="drop frames above this rate")
    divergence: float = Field(2.0, ge=0.0, le=10.0, description="max disparity, % of the image width")
    convergence: float = Field(0.5, ge=0.0, le=1.0, description="normalised depth that sits on the screen")
    # --convergence auto: the screen plane follows what touches the frame edges, frame by frame, never in front
    # of ``convergence`` (stereo/screen_plane.py)
    auto_convergence: bool = False
    # masks at the frame edges that keep the stereo window in front of what the edges cut (stereo/window.py)
    floating_window: bool = True
    depth_model: str = "heuristic"
    depth_weights: str | None = None  # local folder or s3:// prefix for neural depth models
    inpaint: str = "classical"
    inpaint_weights: str | None = None
    precision: Precision = Precision.AUTO  # of the neural depth and inpainting models
    auto_divergence: bool = False
    # --format spatial: the distance between the eyes' cameras and the horizontal field of view its vexu/hfov
    # boxes declare (media/vexu.py)
    baseline_mm: float = Field(64.0, gt=0.0, le=MAX_BASELINE_MM)
    hfov: float = Field(63.0, gt=0.0, lt=MAX_HFOV_DEGREES)
    # `stereo-spot depth`: the job's result is its depth video (media/depth_video.py) instead of a 3D video
    depth_output: bool = False
    # render from the job's depth video (keys.depth_video_key: input/{job}/depth.mkv) instead of estimating depth
    depth_video: bool = False
    segment_seconds: float = Field(10.0, gt=0.0, le=3600.0)
    start: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    duration: float | None = Field(None, gt=0.0, allow_inf_nan=False)

    @property
    def window(self) -> tuple[float | None, float | None]:
        """The part of the source to convert, as (start, end) seconds (None: from the start, to the end)."""
        end = (self.start or 0.0) + self.duration if self.duration is not None else None
        return self.start, end

    @property
    def renders_stereo_pair(self) -> bool:
        """Whether the result holds a second eye: not colour + depth, not the depth video. Only a second eye has
        holes to fill and a comfort to measure."""
        return not self.output_format.is_rgbd and not self.depth_output


class Job(BaseModel):
    model_config = ConfigDict(extra="ignore")

    job_id: str
    status: JobStatus = JobStatus.CREATED
    settings: ConversionSettings = Field(default_factory=ConversionSettings)
    title: str = ""
    # The signed-in identity that created the job (the app's pages and routes show a user only their own);
    # None for jobs from the command line or a storage event.
    owner: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    uploaded_at: datetime | None = None
    source_file_size_bytes: int | None = None
    # Degrees to turn the decoded picture clockwise so it displays upright (phone videos). Chunk records it from
    # the source's display matrix and convert turns the pixels, so the 3D output is upright with no matrix left.
    source_rotation: int = 0
    source_duration_seconds: float | None = None
    source_frames: int | None = None  # frames to convert (within --start/--duration): the progress total
    # With a depth video (settings.depth_video): the source time of its first frame, found by chunk
    # (media.depth_video.check_fits); each segment reads the depth frame at the same time from there.
    depth_origin_seconds: float | None = None
    # Identifies "the same input with the same settings" so re-running an interrupted command resumes its job.
    source_fingerprint: str | None = None
    chunking_started_at: datetime | None = None
    total_segments: int | None = None
    reassembly_started_at: datetime | None = None
    completed_at: datetime | None = None
    failure_reason: str | None = None
    # Size and SHA-256 of jobs/{job}/final.mp4 as the join wrote it: checked before the result is delivered.
    final_size_bytes: int | None = None
    final_sha256: str | None = None
    # where the command line moved the result out of the store (its absolute path): a second run of the same job
    # (two commands started together, a re-run after a delivery) and the app find it there
    delivered_to: str | None = None

    @field_validator("job_id")
    @classmethod
    def _valid_job_id(cls, value: str) -> str:
        return validate_job_id(value)

    @property
    def output_format(self) -> OutputFormat:
        return self.settings.output_format

    @property
    def mode(self) -> str:
        """The ``{mode}`` part of segment keys."""
        return self.settings.output_format.value

    @property
    def conversion_seconds(self) -> float | None:
        start = self.uploaded_at or self.created_at
        if self.completed_at is None:
            return None
        return max(0.0, (self.completed_at - start).total_seconds())


class SegmentCompletion(BaseModel):
    """Written by convert when a segment's 3D output is stored; concat reads these instead of listing a bucket."""

    job_id: str
    segment_index: int = Field(ge=0)
    total_segments: int = Field(ge=1)
    output_key: str
    frames: int = Field(0, ge=0)
    duration_seconds: float = 0.0
    convert_seconds: float = 0.0
    completed_at: datetime = Field(default_factory=utcnow)
    # Comfort statistics and timings of the segment (sampled while converting); concat aggregates them into
    # the job's report. Small: a histogram and a few numbers.
    stats: dict | None = None
    # Size and SHA-256 of the stored segment (``output_key``), checked before the join. None in records written
    # before checksums were recorded: then only the segment's presence is checked.
    size_bytes: int | None = Field(None, ge=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("job_id")
    @classmethod
    def _valid_job_id(cls, value: str) -> str:
        return validate_job_id(value)


class Page(BaseModel):
    """One page of a listing and the opaque cursor for the next (None at the end)."""

    items: list[Job]
    next_cursor: str | None = None


# --- event payloads -------------------------------------------------------------------------------------


class ObjectCreated(BaseModel):
    """An upload that should start a pipeline run: what the Sensor or worker hands to ``chunk``."""

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    size: int | None = None


class SegmentTask(BaseModel):
    """One item of the fan-out: small on purpose (Argo caps a step's output at 256 kB)."""

    job_id: str
    segment_index: int = Field(ge=0)
    total_segments: int = Field(ge=1)


class ChunkResult(BaseModel):
    job_id: str
    total_segments: int
    segment_indices: list[int]
