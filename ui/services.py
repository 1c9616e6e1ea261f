"""What the pages compute, kept free of Streamlit so it can be tested on its own: upload checks, paging across
statuses, progress, conversion speed and ETA, the M3U playlist, and the words the pages use."""

from __future__ import annotations

import base64
import heapq
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from stereo_spot.config import Settings
from stereo_spot.models import (
    AnaglyphMethod,
    ConversionSettings,
    Job,
    JobStatus,
    OutputFormat,
    Page,
    SegmentCompletion,
    utcnow,
)
from stereo_spot.ports import Backend, JobStore
from stereo_spot.ui.auth import Identity
from stereo_spot.ui.uploads import UploadError, format_bytes

MB = 1024 * 1024

FORMAT_HELP: dict[OutputFormat, str] = {
    OutputFormat.SBS: "Each eye at full resolution, left and right next to each other (twice as wide): VR headsets "
                      "and players that take full side-by-side.",
    OutputFormat.HSBS: "Both eyes squeezed into the original width: 3D TVs and projectors, and headsets that expect "
                       "half side-by-side.",
    OutputFormat.TB: "Each eye at full resolution, left above right (twice as tall): some headset players and "
                     "360/180 players.",
    OutputFormat.HTB: "Both eyes squeezed into the original height: 3D TVs (top-and-bottom mode) and some "
                      "streaming boxes.",
    OutputFormat.ANAGLYPH: "One picture for red-cyan glasses: plays on any screen, with some loss of colour.",
    OutputFormat.CROSS: "Right eye on the left, left eye on the right: view it cross-eyed on any screen, no "
                        "glasses.",
    OutputFormat.VR180: "Each eye projected onto a 180° dome, side by side, with the metadata headset players read: "
                        "the video floats in front of you as a screen with depth.",
    OutputFormat.RGBD: "The picture beside its depth map (near = bright), twice as wide: Looking Glass displays "
                       "and depth-aware players. Not a stereo pair.",
    OutputFormat.HALF_RGBD: "The picture and its depth map squeezed into the original width: Looking Glass and "
                            "depth-aware players that take half-width RGB-D.",
    OutputFormat.SPATIAL: "Apple's spatial video (MV-HEVC, two views in one stream) for the Vision Pro's Photos "
                          "and Files apps; Quest players cannot decode it. Needs x265 with multiview on the "
                          "machine that converts.",
}

# --format spatial's camera, which the file's vexu/hfov boxes declare to the player (media/vexu.py)
BASELINE_HELP = ("The distance between the two cameras the file declares, in millimetres (--baseline-mm); 64 is "
                 "the distance between a person's eyes.")
HFOV_HELP = ("The horizontal field of view the file declares, in degrees (--hfov): how wide the player shows the "
             "picture.")

ANAGLYPH_HELP: dict[AnaglyphMethod, str] = {
    AnaglyphMethod.DUBOIS: "Dubois: least ghosting, good colour (recommended).",
    AnaglyphMethod.COLOR: "Colour: red from the left eye, green and blue from the right; vivid but more ghosting.",
    AnaglyphMethod.HALF_COLOR: "Half colour: less eye strain on red objects, slightly duller colours.",
    AnaglyphMethod.GRAY: "Grey: no colour at all, the least eye strain.",
    AnaglyphMethod.DUBOIS2: "Dubois 2009: the revised least-squares matrices from his later note.",
    AnaglyphMethod.WIMMER: "Wimmer optimized: red from the left eye's green and blue; little ghosting, muted reds.",
    AnaglyphMethod.WIMMER2: "Wimmer improved: mixes some of each eye's red into its green and blue, so red "
                            "objects keep more of their brightness.",
}

DIVERGENCE_HELP = ("Strength of the 3D effect: the largest left-right shift, in % of the picture width. "
                   "2 is comfortable; above 4 tires the eyes.")
CONVERGENCE_HELP = ("Which depth sits on the screen plane: 0 puts the farthest things there (everything pops "
                    "out), 1 the nearest (everything goes behind the screen); 0.5 is balanced.")

STAGE_LABELS: dict[JobStatus, str] = {
    JobStatus.CREATED: "waiting to start",
    JobStatus.CHUNKING_IN_PROGRESS: "splitting into segments",
    JobStatus.CHUNKING_COMPLETE: "converting segments",
    JobStatus.REASSEMBLING: "joining segments",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.DELETED: "deleted",
}

# Players and headsets, and the format each takes (the "How to watch" page).
PLAYERS: list[tuple[str, str, str]] = [
    ("Meta Quest (Skybox, DeoVR, 4XVR, Moon Player)", "Full SBS or Half SBS",
     "Players pick the layout from the file name suffix (_LRF_Full_SBS, _Half_SBS)."),
    ("Apple Vision Pro (Moon Player, Reality Player)", "Full SBS", "Or convert to MV-HEVC with Apple's tools."),
    ("Pico, HTC Vive, Valve Index (DeoVR, Skybox, Virtual Desktop)", "Full SBS or Full TB", ""),
    ("3D TVs and projectors (LG, Samsung, Sony, Epson)", "Half SBS or Half TB",
     "Switch the TV's 3D mode to side-by-side or top-and-bottom while playing."),
    ("Nvidia 3D Vision, Bino, VLC 3.x with a 3D filter", "Full SBS", ""),
    ("Any screen with red-cyan glasses (browser, phone, laptop)", "Anaglyph", "Red lens on the left eye."),
    ("Kodi, Plex (3D-capable devices)", "Half SBS or Half TB", "Kodi detects the mode from the file name."),
]


# --- uploads --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSummary:
    name: str
    size_bytes: int
    duration_seconds: float
    width: int
    height: int
    fps: float
    has_audio: bool

    def details(self) -> str:
        """Everything but the name: size, duration, picture, sound."""
        audio = "with audio" if self.has_audio else "no audio"
        return (f"{format_bytes(self.size_bytes)} · {format_duration(self.duration_seconds)} · "
                f"{self.width}×{self.height} at {self.fps:.3g} fps · {audio}")

    def describe(self) -> str:
        return f"{self.name} · {self.details()}"


def check_video(path: Path, name: str, config: Settings | None = None) -> VideoSummary:
    """Probe a staged upload. Raises UploadError with a one-line reason for anything that is not a video
    the pipeline can convert (empty, not media, audio only, a still picture), or, with ``config``, a frame
    over MAX_FRAME_PIXELS (refused from the stream's parameters, before a frame is decoded)."""
    from stereo_spot.limits import LimitExceeded
    from stereo_spot.media.errors import MediaError
    from stereo_spot.media.probe import is_image, probe, require_video

    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{name} is empty (0 bytes); choose a video file")
    if is_image(path):
        raise UploadError(f"{name} is a still picture; the app converts videos "
                          "(for a picture use `stereo-spot convert picture.png`)")
    try:
        info = probe(path, max_frame_pixels=config.max_frame_pixels if config else None)
        video = require_video(info)
    except (MediaError, LimitExceeded) as exc:
        # The media layer names the file it read, which is staged under a fixed name: say the user's name.
        message = str(exc)
        if message.startswith(path.name):
            message = name + message[len(path.name):]
        raise UploadError(message) from exc
    except Exception as exc:  # noqa: BLE001 - FFmpeg can fail in ways the media layer does not classify
        raise UploadError(f"{name} is not a video file that can be read ({type(exc).__name__})") from exc
    width, height = video.display_size
    return VideoSummary(name=name, size_bytes=size, duration_seconds=info.duration_seconds, width=width,
                        height=height, fps=float(video.fps or 0), has_audio=info.has_audio)


DEPTH_OUTPUT_HELP = ("The depth video: the depth this job would render from, as 16-bit grey (near is bright), "
                     "lossless FFV1 in Matroska, frame for frame with the video. Edit it, then start a new "
                     "conversion of the same video that renders from it.")
DEPTH_VIDEO_HELP = ("Render from a depth video made here or by `stereo-spot depth` (edited or not) instead of "
                    "estimating depth: it must keep the video's frames, times and picture size, 16-bit grey and "
                    "its tags.")


def check_depth_video(path: Path, name: str, source: Path, settings: ConversionSettings) -> None:
    """Whether a staged depth video fits the staged source (``media.depth_video.check_fits``, the rule every
    engine applies): UploadError with one line saying how they differ, naming the user's file."""
    from stereo_spot.errors import UserError
    from stereo_spot.media.depth_video import check_fits
    from stereo_spot.media.probe import probe, require_video

    try:
        size = require_video(probe(source)).display_size
        check_fits(path, source, size=size, window=settings.window, max_fps=settings.max_fps)
    except UserError as exc:
        raise UploadError(naming_the_upload(exc, path, name)) from exc


def naming_the_upload(exc: BaseException, path: Path, name: str) -> str:
    """An error's line about a staged file, naming the file as the user uploaded it (staged files have a name of
    the app's own)."""
    from stereo_spot.errors import one_line

    return one_line(exc).replace(path.name, name)


DEPTH_MODEL_HELP = ("heuristic needs no weights and runs anywhere; a neural model estimates depth better and "
                    "needs its weights.")
INPAINT_HELP = "classical fills the holes beside near objects quickly; diffusion paints them, from its weights."


def depth_model_names() -> list[str]:
    from stereo_spot.stereo.depth import known_depth_estimators

    return sorted(known_depth_estimators(), key=lambda name: name != "heuristic")  # the default first


def inpainter_names() -> list[str]:
    from stereo_spot.stereo.fill import known_inpainters

    return sorted(known_inpainters(), key=lambda name: name != "classical")


def checked_settings(user: Identity, config: Settings | None = None, **choices) -> ConversionSettings:
    """The same validation as ``stereo-spot convert`` (``stereo_spot.choices``). Weights are an admin's choice,
    except under the s3:// prefixes ``UI_WEIGHTS_PREFIXES`` lists: anywhere else, a user could make the app read
    its own files, or another user's results from the output bucket (the preview downloads the weights)."""
    from stereo_spot.choices import conversion_settings

    if not user.admin:
        allowed = (config or Settings()).weights_prefixes
        for name in ("depth_weights", "inpaint_weights"):
            value = (choices.get(name) or "").strip()
            if value and not weights_allowed(value, allowed):
                listed = ", ".join(allowed) if allowed else "none are set"
                raise UploadError(f"{value} is not among the weights you may choose (UI_WEIGHTS_PREFIXES: "
                                  f"{listed}); an admin may choose any")
    return conversion_settings(**choices)


def weights_allowed(value: str, prefixes: Sequence[str]) -> bool:
    """True when ``value`` is one of the prefixes (each a folder ending in /) or under one, with no ``..`` or
    empty segment that a reader might resolve elsewhere."""
    if not value.startswith("s3://"):
        return False
    segments = value[len("s3://"):].rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in segments):
        return False
    folder = value.rstrip("/") + "/"
    return any(folder.startswith(prefix) for prefix in prefixes)


def preview_moment(summary: VideoSummary) -> float:
    """Where the preview starts: a third of the way in, past a title card or a fade from black."""
    return round(summary.duration_seconds / 3, 1)


def check_limits(summary: VideoSummary, settings: ConversionSettings | None, config: Settings) -> None:
    """UploadError when the video (or the part of it chosen) is over the app's limits."""
    from stereo_spot.limits import LimitExceeded, check_media_limits

    try:
        check_media_limits(summary.name, summary.width, summary.height, summary.fps, summary.duration_seconds,
                           config, start=settings.start if settings else None,
                           length=settings.duration if settings else None)
    except LimitExceeded as exc:
        raise UploadError(str(exc)) from exc


def create_user_job(backend: Backend, settings: ConversionSettings, title: str, user: Identity,
                    config: Settings) -> Job:
    """The user's new job; UploadError when they already have UI_MAX_JOBS_PER_USER in progress. The store counts
    and writes in one atomic step, so several tabs at once cannot pass the limit together."""
    from stereo_spot import steps
    from stereo_spot.ports import QuotaExceeded

    limit = config.ui_max_jobs_per_user or None
    try:
        return steps.create_job(backend, settings, title, owner=user.user, max_in_progress=limit)
    except QuotaExceeded as exc:
        raise UploadError(f"you have {exc.limit} conversions in progress, the most one user may have at once "
                          f"(UI_MAX_JOBS_PER_USER={exc.limit}); start this one when one of them is done") from exc


def default_title(file_name: str) -> str:
    stem = Path(file_name).stem.strip()
    return stem or "untitled"


# --- paging ---------------------------------------------------------------------------------------------

_EXHAUSTED = None


def encode_cursor(state: dict[str, str | None]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, sort_keys=True).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, str | None]:
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid page cursor {cursor!r}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"invalid page cursor {cursor!r}")
    return state


def merged_page(store: JobStore, statuses: Sequence[JobStatus], limit: int, cursor: str | None = None, *,
                owner: str | None = None) -> Page:
    """One page of the jobs in any of ``statuses``, newest ``created_at`` first, through the store's own
    per-status cursors (an indexed query each, never a scan).

    The merged cursor holds each status's position: "" = from the start, a store cursor = after it, null = done.
    A status whose page was only partly used gets its position from a second query of exactly the used length,
    because a store cursor is opaque and can only come from the end of a page."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    state: dict[str, str | None] = decode_cursor(cursor) if cursor else {s.value: "" for s in statuses}
    pages: dict[str, Page] = {}
    for status in statuses:
        position = state.get(status.value, _EXHAUSTED)
        if position is not _EXHAUSTED:
            pages[status.value] = store.list_by_status(status, limit=limit, cursor=position or None, owner=owner)
    tagged = ([(job.created_at, job.job_id, name, job) for job in page.items] for name, page in pages.items())
    merged = heapq.merge(*tagged, key=lambda t: (t[0], t[1]), reverse=True)
    taken = [next_item for _, next_item in zip(range(limit), merged, strict=False)]
    used: dict[str, int] = {}
    for _, _, name, _ in taken:
        used[name] = used.get(name, 0) + 1
    next_state: dict[str, str | None] = {s.value: state.get(s.value, _EXHAUSTED) for s in statuses}
    for name, page in pages.items():
        count = used.get(name, 0)
        if count == len(page.items):  # all used (or nothing there): continue after this page
            next_state[name] = page.next_cursor or _EXHAUSTED
        elif count:  # partly used: the position after exactly ``count`` items
            again = store.list_by_status(JobStatus(name), limit=count, cursor=state[name] or None, owner=owner)
            next_state[name] = again.next_cursor or _EXHAUSTED
        # unused: the same position next time
    more = any(value is not _EXHAUSTED for value in next_state.values())
    return Page(items=[item[3] for item in taken], next_cursor=encode_cursor(next_state) if more else None)


@dataclass
class Pager:
    """Newer/older navigation over cursor pages: a stack of the cursors that led to the current page."""

    stack: list[str | None]

    @classmethod
    def start(cls) -> Pager:
        return cls([None])

    @property
    def cursor(self) -> str | None:
        return self.stack[-1]

    @property
    def number(self) -> int:
        return len(self.stack)

    @property
    def has_newer(self) -> bool:
        return len(self.stack) > 1

    def older(self, next_cursor: str) -> None:
        self.stack.append(next_cursor)

    def newer(self) -> None:
        if len(self.stack) > 1:
            self.stack.pop()


# --- progress, speed, ETA -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobProgress:
    fraction: float  # 0..1 for the progress bar
    segments_done: int
    segments_total: int | None
    stage: str

    @property
    def segments_text(self) -> str:
        if not self.segments_total:
            return "–"
        return f"{self.segments_done}/{self.segments_total}"


# Share of the bar before conversion (chunking) and after it (joining): converting is most of the work.
_CHUNK_SHARE, _JOIN_SHARE = 0.05, 0.05


def job_progress(job: Job, completions: Iterable[SegmentCompletion]) -> JobProgress:
    total = job.total_segments
    done = len({c.segment_index for c in completions if total is None or c.segment_index < total})
    stage = STAGE_LABELS[job.status]
    if job.status == JobStatus.COMPLETED:
        return JobProgress(1.0, total or done, total, stage)
    if job.status in (JobStatus.CREATED, JobStatus.CHUNKING_IN_PROGRESS) or not total:
        return JobProgress(0.0 if job.status == JobStatus.CREATED else _CHUNK_SHARE / 2, 0, total, stage)
    converted = done / total
    fraction = _CHUNK_SHARE + (1 - _CHUNK_SHARE - _JOIN_SHARE) * converted
    if job.status == JobStatus.REASSEMBLING:
        fraction = 1 - _JOIN_SHARE / 2
    return JobProgress(min(1.0, fraction), done, total, stage)


def size_mb(job: Job) -> float | None:
    if not job.source_file_size_bytes:
        return None
    return job.source_file_size_bytes / MB


def seconds_per_mb(job: Job) -> float | None:
    """Conversion time per MB of source: the yardstick for estimating other jobs."""
    seconds, mb = job.conversion_seconds, size_mb(job)
    if seconds is None or not mb:
        return None
    return seconds / mb


def speed_text(job: Job) -> str:
    """How fast a finished job converted, in words a viewer reads: against real time (the film's own length),
    else frames per second, else nothing. Seconds per MB stays the estimator's internal yardstick."""
    seconds = job.conversion_seconds
    if not seconds or seconds <= 0:
        return "–"
    if job.source_duration_seconds:
        factor = job.source_duration_seconds / seconds
        return f"{factor:.2f}× real time" if factor < 10 else f"{factor:.0f}× real time"
    if job.source_frames:
        return f"{job.source_frames / seconds:.1f} fps"
    return "–"


def average_seconds_per_mb(jobs: Iterable[Job]) -> float | None:
    """Size-weighted: total seconds over total MB, so a few tiny clips (dominated by start-up) do not skew it."""
    seconds = mb = 0.0
    for job in jobs:
        if job.conversion_seconds is not None and size_mb(job):
            seconds += job.conversion_seconds
            mb += size_mb(job) or 0.0
    return seconds / mb if mb > 0 else None


@dataclass(frozen=True)
class Estimate:
    remaining_seconds: float | None
    basis: str  # what the figure rests on, shown next to it


def estimate_remaining(job: Job, progress: JobProgress, recent_seconds_per_mb: float | None,
                       now: datetime | None = None) -> Estimate:
    """Time left. From recent jobs' seconds per MB times this job's size, less the time it has run; once
    segments finish, this job's own pace is blended in, weighted by how far it has got."""
    if job.status.is_terminal:
        return Estimate(0.0 if job.status == JobStatus.COMPLETED else None, "")
    now = now or utcnow()
    started = job.uploaded_at or job.created_at
    elapsed = max(0.0, (now - started).total_seconds())
    by_history = None
    mb = size_mb(job)
    if recent_seconds_per_mb is not None and mb:
        by_history = recent_seconds_per_mb * mb
    by_pace = None
    if progress.fraction > _CHUNK_SHARE and progress.segments_done:
        by_pace = elapsed / progress.fraction
    if by_history is None and by_pace is None:
        return Estimate(None, "no completed jobs to compare with yet")
    if by_pace is None:
        total, basis = by_history, "from recent jobs' average seconds per MB"
    elif by_history is None:
        total, basis = by_pace, "from this job's pace so far"
    else:
        weight = progress.fraction
        total = (1 - weight) * by_history + weight * by_pace
        basis = "from recent jobs' seconds per MB and this job's pace"
    return Estimate(max(0.0, total - elapsed), basis)


# --- words ---

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$=^&])")


def escape_markdown(text: str) -> str:
    """User text (a title, a query parameter, a file name) shown as itself wherever Streamlit renders Markdown:
    no links, images, emphasis, ``:material/...:`` icons or HTML. Newlines become spaces (one-line labels)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


# --- words ----------------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_age(when: datetime, now: datetime | None = None) -> str:
    seconds = max(0.0, ((now or utcnow()) - when).total_seconds())
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''} ago"
    raise AssertionError("unreachable")


def product_label(job: Job) -> str:
    """What the job makes, as the lists show it: its 3D format, or the depth video."""
    if job.settings.depth_output:
        return "Depth video (16-bit, to edit)"
    return job.output_format.label + (" from a depth video" if job.settings.depth_video else "")


def settings_summary(job: Job) -> str:
    s = job.settings
    if s.depth_output:
        return f"{product_label(job)} · depth model {s.depth_model}"
    name = product_label(job)
    if s.output_format == OutputFormat.ANAGLYPH:
        name += f" ({s.anaglyph.value})"
    return f"{name} · divergence {s.divergence:g}% · convergence {s.convergence:g}"


# --- playlist -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlaylistEntry:
    title: str
    url: str
    duration_seconds: float | None = None


def playlist_m3u(entries: Iterable[PlaylistEntry]) -> str:
    """Extended M3U: VLC, Kodi, DeoVR and Skybox open it and show the titles."""
    lines = ["#EXTM3U"]
    for entry in entries:
        duration = -1 if entry.duration_seconds is None else round(entry.duration_seconds)
        title = " ".join(entry.title.replace(",", " ").split()) or "untitled"
        lines += [f"#EXTINF:{duration},{title}", entry.url]
    return "\n".join(lines) + "\n"


def delivered_outside_store(job: Job) -> str | None:
    """Where the command line wrote a finished job's result, when it moved it out of the store (``convert`` does
    that for its own jobs); None for a job whose result the app serves. The app never serves such a file: it is
    the user's, in their folder, and may have changed since (docs/app.md, "Results written by the command
    line")."""
    return job.delivered_to if job.status == JobStatus.COMPLETED and job.delivered_to else None


def iter_completed(store: JobStore, limit: int, page_size: int = 50, *, owner: str | None = None) -> list[Job]:
    """The newest ``limit`` completed jobs (of ``owner``, or everyone's), page by page through the store's cursor."""
    jobs: list[Job] = []
    cursor = None
    while len(jobs) < limit:
        page = store.list_completed(limit=min(page_size, limit - len(jobs)), cursor=cursor, owner=owner)
        jobs.extend(page.items)
        cursor = page.next_cursor
        if not cursor:
            break
    return jobs
