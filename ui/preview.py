"""A still of one frame of a finished job, in its 3D format (side-by-side, top-bottom or anaglyph)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import av
import numpy as np

from stereo_spot import keys
from stereo_spot.media.containers import open_input
from stereo_spot.models import Job
from stereo_spot.ports import Backend, NotFound

# Wide enough to judge the 3D on screen; a full SBS 4K frame (7680 px) would only slow the page down.
MAX_PREVIEW_WIDTH = 1600


def frame_at(path: Path | str, fraction: float = 0.5, max_width: int = MAX_PREVIEW_WIDTH) -> np.ndarray:
    """RGB (H, W, 3) uint8 of the first frame at or after ``fraction`` of the video's duration."""
    with open_input(path) as container:  # the same container whitelist as every source
        stream = container.streams.video[0]
        duration = None
        if container.duration:
            duration = container.duration / av.time_base
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        target = (duration or 0.0) * min(max(fraction, 0.0), 1.0)
        if target > 0:
            container.seek(int(target * av.time_base), any_frame=False, backward=True)
        last = None
        for frame in container.decode(stream):
            last = frame
            if frame.time is None or frame.time >= target - 1e-3:
                break
        if last is None:
            raise ValueError(f"{Path(path).name} has no video frames")
        rgb = last.to_ndarray(format="rgb24")
    if rgb.shape[1] > max_width:
        import cv2

        height = max(1, round(rgb.shape[0] * max_width / rgb.shape[1]))
        rgb = cv2.resize(rgb, (max_width, height), interpolation=cv2.INTER_AREA)
    return rgb


def job_preview(backend: Backend, job: Job) -> np.ndarray:
    """A frame from the middle of the job's result. Local storage reads the final video in place; object storage
    downloads one converted segment (seconds long) rather than the whole final video."""
    local_path = getattr(backend.objects, "local_path", None)
    if local_path is not None:
        return frame_at(local_path(backend.output_bucket, keys.final_key(job.job_id)))
    with tempfile.TemporaryDirectory(prefix="stereo-spot-preview-") as tmp:
        path = Path(tmp) / "part.mp4"
        total = job.total_segments or 0
        try:
            if not total:
                raise NotFound("no segments")
            backend.objects.download_file(backend.output_bucket, keys.output_segment_key(job.job_id, total // 2),
                                          path)
            fraction = 0.5 if total % 2 else 0.0  # odd count: the middle of the middle segment; even: its start
        except NotFound:
            backend.objects.download_file(backend.output_bucket, keys.final_key(job.job_id), path)
            fraction = 0.5
        return frame_at(path, fraction)
