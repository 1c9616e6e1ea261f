"""Bounds on what one job may cost, checked on the probe of its source before any work (and before a job exists
where the app receives the file). A few kilobytes can declare hours of 8K at 240 fps: the compute a job needs
follows from the declared picture size, rate and length, not from the file's size.

    MAX_FRAME_PIXELS       width × height of one frame (default 1920×1080: 4K costs four times as much)
    MAX_FPS                frames per second (default 120)
    MAX_DURATION_SECONDS   seconds converted (the --start/--duration window when given; default 4 h)
    MAX_FRAMES_PER_JOB     frames converted, duration × fps (default 4 h at 60 fps)
"""

from __future__ import annotations

from stereo_spot.config import Settings
from stereo_spot.errors import UserError


class LimitExceeded(UserError):
    pass


def check_frame_pixels(name: str, width: int, height: int, limit: int, setting: str = "MAX_FRAME_PIXELS") -> None:
    """LimitExceeded when one frame is over ``limit`` pixels; ``setting`` names what raises the limit."""
    pixels = int(width) * int(height)
    if pixels > limit:
        raise LimitExceeded(f"{name} is {width}×{height} ({pixels:,} pixels a frame); the limit is {limit:,} "
                            f"({setting})")


def converted_seconds(duration: float, start: float | None, length: float | None) -> float:
    """Seconds of the source a job converts: its window within the video."""
    begin = min(start or 0.0, duration)
    end = duration if length is None else min(duration, begin + length)
    return max(0.0, end - begin)


def check_media_limits(name: str, width: int, height: int, fps: float, duration: float, config: Settings, *,
                       start: float | None = None, length: float | None = None) -> None:
    """LimitExceeded with one line saying which limit, by how much, and which setting raises it."""
    check_frame_pixels(name, width, height, config.max_frame_pixels)
    if fps > config.max_fps:
        raise LimitExceeded(f"{name} runs at {fps:.3g} fps; the limit is {config.max_fps:g} fps (MAX_FPS)")
    seconds = converted_seconds(duration, start, length)
    if seconds > config.max_duration_seconds:
        raise LimitExceeded(f"{name} would convert {seconds:.0f} s; the limit is {config.max_duration_seconds:g} s "
                            "(MAX_DURATION_SECONDS); choose a start and duration within it")
    frames = round(seconds * fps)
    if frames > config.max_frames_per_job:
        raise LimitExceeded(f"{name} would convert {frames:,} frames ({seconds:.0f} s at {fps:.3g} fps); the limit "
                            f"is {config.max_frames_per_job:,} (MAX_FRAMES_PER_JOB)")


def check_found_frames(name: str, frames: int, config: Settings) -> None:
    """The frame limit on the frames chunking actually found (counted from the packets), so a header that
    understates the length cannot carry a job past it. The picture size of what was found is checked with
    check_frame_pixels."""
    if frames > config.max_frames_per_job:
        raise LimitExceeded(f"{name} holds more than {config.max_frames_per_job:,} frames (MAX_FRAMES_PER_JOB); "
                            "choose a start and duration within it")
