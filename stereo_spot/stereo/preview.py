"""One converted frame of a video, to tune divergence and convergence before a long job.

The frame is converted the way the job would convert it: the frames just before it go through the engine
first, so the depth estimator's temporal state (motion parallax needs the previous frames, the range
normalisation its recent history) is what it would be in the middle of the run, capped at
``WARMUP_SECONDS_MAX`` so a preview takes seconds. With a depth video (``depth_video``), each frame's depth is
read from it, as the job would read it, after the same check that it fits the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stereo_spot.errors import UserError
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.engine import StereoEngine

#: At most this much video before the previewed frame warms up the engine.
WARMUP_SECONDS_MAX = 1.0


def preview_frame(src: Path | str, at: float, settings: ConversionSettings, *, device: str | None = None,
                  engine: StereoEngine | None = None, depth_video: Path | str | None = None) -> np.ndarray:
    """The packed stereo frame (uint8 H2×W2×3, RGB) of the picture shown ``at`` seconds into the video;
    rendered from ``depth_video``'s depth where one is given (``settings.depth_video`` must say so)."""
    from stereo_spot.media.frames import read_frames
    from stereo_spot.media.probe import probe, require_video
    from stereo_spot.stereo.segment import warmup_seconds_needed

    src = Path(src)
    info = probe(src)
    video = require_video(info)
    if not np.isfinite(at) or at < 0:
        raise UserError(f"--at {at} is not a time in the video: give seconds from 0")
    if info.duration_seconds and at > info.duration_seconds:
        raise UserError(f"--at {at:g} s is past the end of {src.name} ({info.duration_seconds:.2f} s long)")
    engine = engine or StereoEngine(settings, device=device)
    engine.reset()
    fps = float(video.fps or 25)
    warm = min(WARMUP_SECONDS_MAX, warmup_seconds_needed(engine, fps))
    target = video.start_seconds + at
    window = (max(video.start_seconds, target - warm - 1.0 / fps), target + 1.0 / fps)
    frames = list(read_frames(src, rotation=video.rotation, window=window, max_fps=settings.max_fps))
    if not frames:
        raise UserError(f"{src.name} has no picture at {at:g} s")
    # the picture on screen at `at`: the last frame that starts at or before it (the first one if none does)
    shown = max((i for i, f in enumerate(frames) if f.seconds <= target + 1e-6), default=0)
    if depth_video is None:
        history = np.stack([f.rgb for f in frames[:shown]]) if shown else np.empty((0,), np.uint8)
        engine.warm_up(history)
        return engine.convert_batch(frames[shown].rgb[None])[0]
    with _depth_frames(Path(depth_video), src, video, settings) as depth:
        if not depth.covers(frames[shown].seconds):
            raise UserError(f"{Path(depth_video).name} has no depth at {at:g} s: it covers the part the job "
                            "converts (its --start and --duration)")
        before = [f for f in frames[:shown] if depth.covers(f.seconds)]
        if before:
            engine.warm_up(np.stack([f.rgb for f in before]), depth=depth.frames_at([f.seconds for f in before]))
        return engine.convert_batch(frames[shown].rgb[None], depth=depth.frames_at([frames[shown].seconds]))[0]


def _depth_frames(depth_video: Path, src: Path, video, settings: ConversionSettings):
    """The depth video opened at its place on the source's timeline, once it is shown to fit the source the way
    the job will check it (``check_fits``: size, frame count and times over the part converted)."""
    from stereo_spot.media.depth_video import DepthFrames, check_fits

    if not settings.depth_video:
        raise ValueError("a depth video is given but the settings estimate the depth")
    origin = check_fits(depth_video, src, size=video.display_size, window=settings.window, max_fps=settings.max_fps)
    return DepthFrames(depth_video, origin)


def write_png(path: Path | str, rgb: np.ndarray) -> Path:
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise UserError(f"cannot write {path}: OpenCV could not encode a PNG there")
    return path
