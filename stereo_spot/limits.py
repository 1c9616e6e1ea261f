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


# Peak memory of a conversion per pixel of one frame (the float32 RGB frame, its depth, the warped eyes, the
# holes and the packed output, at once): stereo-spot convert of a one-frame 8192×8192 video peaked at 6.9 GB RSS,
# about 103 bytes a pixel; one-frame 1024², 2048² and 3072² videos peaked at 0.52, 0.83 and 1.31 GB, 94-99 bytes
# a pixel more per pixel. 128 leaves room for the rest of the process.
BYTES_PER_FRAME_PIXEL = 128


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the system does not say."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_frame_fits(name: str, width: int, height: int, max_frame_pixels: int | None = None, *,
                     memory_bytes: int | None = None) -> None:
    """The command line's guard: LimitExceeded when one frame would need more memory than this machine has
    (``BYTES_PER_FRAME_PIXEL`` a pixel), or more pixels than ``max_frame_pixels`` when that is given (it replaces
    the machine's limit, to raise or lower it). Decided by check_frame_pixels, as the app's MAX_FRAME_PIXELS is."""
    from stereo_spot.units import format_bytes

    if max_frame_pixels is not None:
        check_frame_pixels(name, width, height, max_frame_pixels, "--max-frame-pixels")
        return
    memory = memory_bytes or machine_memory_bytes()
    if memory is None:
        return
    check_frame_pixels(name, width, height, memory // BYTES_PER_FRAME_PIXEL,
                       f"what {format_bytes(memory)} of memory converts at about {BYTES_PER_FRAME_PIXEL} bytes a "
                       "pixel; --max-frame-pixels raises it")


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
