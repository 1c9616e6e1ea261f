"""A synthetic sample clip, so the converter can be tried (and benchmarked) with nothing downloaded.

The scene is layered like a real shot: a textured far wall, a mid-distance panel and a near card that sits lower
in the frame and moves faster (more motion parallax), over a tone on the audio track. Its true depth is known,
which is what the quality checks need.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Layer:
    """A textured rectangle at a relative inverse depth (0 far .. 1 near)."""

    depth: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
    speed: float  # horizontal motion in fractions of the width per second
    seed: int


LAYERS = (
    Layer(0.0, (0.0, 0.0, 1.0, 1.0), 0.01, 1),  # far wall
    Layer(0.45, (0.15, 0.2, 0.55, 0.7), 0.04, 2),  # mid panel
    Layer(0.9, (0.55, 0.5, 0.85, 0.95), 0.09, 3),  # near card, lower and faster
)


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """A colourful texture with detail at several scales (warping and depth cues need something to see)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, size=(3,), dtype=np.int32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pattern = np.zeros((height, width, 3), np.float32)
    for scale in (6.0, 17.0, 43.0):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        pattern += 28 * np.sin(xx[..., None] / scale + phase) * np.cos(yy[..., None] / (scale * 1.3) + phase[::-1])
    checks = (((xx // 16) + (yy // 16)) % 2)[..., None] * 30
    noise = rng.normal(0, 10, size=(height, width, 3))
    return np.clip(base + pattern + checks + noise, 0, 255).astype(np.uint8)


def render_frame(t: float, width: int, height: int, layers: tuple[Layer, ...] = LAYERS,
                 textures: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (rgb HxWx3 uint8, depth HxW float32) of the scene at time ``t`` seconds."""
    textures = textures if textures is not None else {}
    frame = np.zeros((height, width, 3), np.uint8)
    depth = np.zeros((height, width), np.float32)
    for layer in sorted(layers, key=lambda layer: layer.depth):
        x0, y0, x1, y1 = layer.box
        shift = layer.speed * t
        left = int(round((x0 + shift) % 1.0 * width)) if layer.box != (0.0, 0.0, 1.0, 1.0) else 0
        top, w, h = int(y0 * height), max(1, int((x1 - x0) * width)), max(1, int((y1 - y0) * height))
        if layer.seed not in textures:
            textures[layer.seed] = _texture(h, w + width, layer.seed)
        texture = textures[layer.seed]
        offset = int(round(shift * width)) % width if layer.box == (0.0, 0.0, 1.0, 1.0) else 0
        patch = texture[:h, offset:offset + w]
        right = min(width, left + w)
        frame[top:top + h, left:right] = patch[:, : right - left]
        depth[top:top + h, left:right] = layer.depth
    return frame, depth


def write_sample(path: Path | str, seconds: float = 6.0, size: tuple[int, int] = (640, 360), fps: int = 30,
                 audio: bool = True, gop: int | None = None) -> Path:
    """Write an H.264 + AAC mp4 of the layered scene."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    frames = max(1, int(round(seconds * fps)))
    textures: dict[int, np.ndarray] = {}
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        # 4:2:0 needs even dimensions; odd-sized samples (for edge cases) use 4:4:4
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        video.options = {"crf": "20", "preset": "veryfast", "g": str(gop or fps), "keyint_min": str(gop or fps),
                         "sc_threshold": "0"}
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48000)
            sound.layout = "stereo"
        for index in range(frames):
            rgb, _ = render_frame(index / fps, width, height, textures=textures)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            write_tone(container, sound, frames / fps)
    return path


def write_tone(container, stream, seconds: float, hz: float = 440.0, sample_rate: int = 48000) -> None:
    """Encode a stereo sine tone of ``seconds`` into an open audio stream and flush it."""
    import av

    block = 1024
    total = int(round(seconds * sample_rate))
    for start in range(0, total, block):
        n = min(block, total - start)
        t = np.arange(start, start + n, dtype=np.float64) / sample_rate
        wave = (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
