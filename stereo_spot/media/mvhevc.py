"""Two eyes as one MV-HEVC stream (ITU-T H.265 Annex G), the format of Apple's spatial video.

The left eye is the base layer (view 0, what a 2D player shows), the right eye the second layer (view 1),
predicted from the left. The encoder is the x265 command-line program built with ``ENABLE_MULTIVIEW``
(``scripts/build-x265-multiview``): the x265 inside PyAV's wheel has no multiview support. It reads the two eyes
packed side by side (its multiview config's ``--format 1``, ``--input-res`` being one eye's size) as raw
yuv420p on its standard input and writes an Annex B elementary stream, which is then put into an mp4 by stream
copy. FFmpeg's mp4 muxer writes the second layer's configuration (``lhvC``) next to ``hvcC`` only for a stream
marked multilayer (``AV_DISPOSITION_MULTILAYER``, libavformat/movenc.c ``mov_write_video_tag``), so the stream
is marked so. FFmpeg's HEVC decoder outputs the views named in its ``view_ids`` option (default: the base
view only), which is how the result is read back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from stereo_spot.media.errors import MediaError
from stereo_spot.media.frames import frame_to_rgb

#: Where ``scripts/build-x265-multiview`` installs the encoder by default
DEFAULT_X265 = Path("/opt/x265-mv/bin/x265")
#: Names another x265 with multiview support
X265_ENV = "STEREO_SPOT_X265_MULTIVIEW"
BASE_VIEW, SECOND_VIEW = 0, 1
_TAIL_LINES = 3


def _configured_x265() -> Path:
    from stereo_spot.config import get_settings

    return get_settings().stereo_spot_x265_multiview or DEFAULT_X265


def multiview_x265() -> Path | None:
    """The x265 program that encodes two views, or None where none is installed."""
    candidate = _configured_x265()
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        return None
    try:
        help_text = subprocess.run([str(candidate), "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return candidate if "--multiview-config" in help_text else None


def require_multiview_x265() -> Path:
    found = multiview_x265()
    if found is None:
        raise MediaError(f"--format spatial needs x265 built with multiview encoding, not found at "
                         f"{_configured_x265()}: "
                         f"run scripts/setup --spatial (or name one in {X265_ENV})")
    return found


def check_spatial_choice(pix_fmt: str | None) -> None:
    """Refuse --format spatial where it cannot be written, before any job exists: no multiview x265 here, or a
    pixel format other than the 8-bit 4:2:0 this encoder is fed."""
    if pix_fmt not in (None, "yuv420p"):
        raise MediaError(f"--format spatial is written as yuv420p; --pix-fmt {pix_fmt} cannot be used with it")
    require_multiview_x265()


class MultiviewEncoder:
    """Encode left/right eye pairs into an MV-HEVC elementary stream at ``out`` (Annex B)."""

    def __init__(self, out: Path | str, eye_width: int, height: int, fps: Fraction, *, crf: int = 18,
                 preset: str = "fast", threads: int = 0) -> None:
        if eye_width % 2 or height % 2:
            raise MediaError(f"MV-HEVC in 4:2:0 needs an even eye size, not {eye_width}x{height}")
        self.out = Path(out)
        self.eye_width, self.height = eye_width, height
        self.frames = 0
        self._dir = Path(tempfile.mkdtemp(prefix="mvhevc-"))
        config = self._dir / "multiview.cfg"
        # one input, the two views packed side by side (x265's doc/reST/cli.rst, --multiview-config)
        config.write_text("--num-views 2\n--format 1\n--input -\n")
        fps = Fraction(fps)
        command = [str(require_multiview_x265()), "--multiview-config", str(config),
                   "--input-res", f"{eye_width}x{height}", "--input-csp", "i420", "--input-depth", "8",
                   "--fps", f"{fps.numerator}/{fps.denominator}", "--crf", str(crf), "--preset", preset,
                   "--colorprim", "bt709", "--transfer", "bt709", "--colormatrix", "bt709", "--range", "limited",
                   "--log-level", "error", "--no-progress", "--output", str(self.out)]
        if threads:
            command += ["--pools", str(threads)]
        self._stderr = open(self._dir / "x265.log", "w+b")  # noqa: SIM115 (closed in close())
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=self._stderr)

    def write(self, left: np.ndarray, right: np.ndarray) -> None:
        """Add one frame of each eye (RGB, height x eye width x 3, uint8)."""
        expected = (self.height, self.eye_width, 3)
        if left.shape != expected or right.shape != expected:
            raise MediaError(f"an eye is {left.shape[1]}x{left.shape[0]} / {right.shape[1]}x{right.shape[0]}, "
                             f"the stream's eyes are {self.eye_width}x{self.height}")
        # the colour conversion and tags every other output of the project uses (frames.VideoWriter)
        packed = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.concatenate([left, right], axis=1)),
                                            format="rgb24").reformat(format="yuv420p",
                                                                     dst_colorspace=Colorspace.ITU709,
                                                                     dst_color_range=ColorRange.MPEG)
        try:
            self._process.stdin.write(_planes(packed))
        except BrokenPipeError:
            self._finish()
            raise MediaError(f"x265 stopped reading the eyes: {self._log_tail()}") from None
        self.frames += 1

    def close(self) -> None:
        self._finish()
        if self.frames == 0:
            raise MediaError("no frames were given to the MV-HEVC encoder")

    def _finish(self) -> None:
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass
        code = self._process.wait()
        tail = self._log_tail()
        self._stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        if code != 0:
            raise MediaError(f"x265 failed to encode the two views (exit status {code}): {tail}")

    def _log_tail(self) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return " / ".join(lines[-_TAIL_LINES:]) or "no message"

    def __enter__(self) -> MultiviewEncoder:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._process.kill()
            try:
                self._finish()
            except MediaError:
                pass  # the error already on its way is the one to report


def _planes(frame: av.VideoFrame) -> bytes:
    """A yuv420p frame's planes without line padding, as x265 reads raw input."""
    out = []
    for index, plane in enumerate(frame.planes):
        width = frame.width if index == 0 else frame.width // 2
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
        out.append(rows[:, :width].tobytes())
    return b"".join(out)


def mux_mvhevc(stream_path: Path | str, out: Path | str, fps: Fraction, first_frame: int = 0) -> int:
    """Put an MV-HEVC elementary stream into an mp4 (``hvc1`` with ``hvcC`` and ``lhvC``) by stream copy, the
    first frame shown at ``first_frame`` frame periods; the number of frames.

    An elementary stream has no timestamps, and with B-frames the display order is not the stream order, so
    each packet's display position is learned by decoding the base view once (a decoder hands every frame
    out with the timestamp of the packet that carried it)."""
    stream_path, out = Path(stream_path), Path(out)
    fps = Fraction(fps)
    display = _display_positions(stream_path, fps)
    if not display:
        raise MediaError(f"{stream_path.name} holds no MV-HEVC frames")
    delay = max(decoded - shown for decoded, shown in enumerate(display))
    with _open_stream(stream_path, fps) as src, \
            av.open(str(out), "w", format="mp4", container_options={"movflags": "+faststart"}) as dst:
        video_in = src.streams.video[0]
        video_out = dst.add_stream_from_template(video_in, opaque=True)
        video_out.codec_tag = "hvc1"  # parameter sets in the sample entry, as Apple's players require
        video_out.time_base = 1 / fps
        video_out.disposition = av.stream.Disposition.multilayer
        for index, packet in enumerate(p for p in src.demux(video_in) if p.size):
            packet.pts = first_frame + display[index]
            packet.dts = first_frame + index - delay
            packet.duration = 1
            packet.time_base = 1 / fps
            packet.stream = video_out
            dst.mux(packet)
    return len(display)


def _open_stream(path: Path, fps: Fraction):
    return av.open(str(path), format="hevc", options={"framerate": f"{fps.numerator}/{fps.denominator}"})


def _display_positions(path: Path, fps: Fraction) -> list[int]:
    """For each packet of the elementary stream in stream order, the position of its picture in display order."""
    shown: list[int] = []
    with _open_stream(path, fps) as src:
        stream = src.streams.video[0]
        count = 0
        for packet in src.demux(stream):
            if packet.size:
                packet.pts = packet.dts = count
                count += 1
            for frame in stream.codec_context.decode(packet if packet.size else None):
                shown.append(frame.pts)
    if sorted(shown) != list(range(count)):
        raise MediaError(f"{path.name}: {count} packets decoded to {len(shown)} pictures; the stream is damaged")
    position = {decoded: rank for rank, decoded in enumerate(shown)}
    return [position[k] for k in range(count)]


def decode_view(path: Path | str, view_id: int) -> Iterator[np.ndarray]:
    """The frames (RGB) of one view of the MV-HEVC video in ``path``: 0 the base (left eye), 1 the second."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"view_ids": str(view_id)}
        for frame in container.decode(stream):
            yield frame_to_rgb(frame)


class SpatialSegmentWriter:
    """A converted segment as spatial video, with ``frames.VideoWriter``'s interface: ``write(rgb, pts)`` takes
    the eyes packed side by side (left first, ``stereo.pack``), ``close()`` leaves an mp4 at ``path``.

    Frames are placed one period of ``fps`` apart from the first one's time (the source's, so segments join in
    order): a variable-rate source becomes constant-rate. An odd eye size is padded by one pixel (the last
    column or row repeated), as 4:2:0 needs."""

    def __init__(self, path: Path | str, width: int, height: int, time_base: Fraction, fps: Fraction, *,
                 crf: int, preset: str, threads: int = 0) -> None:
        self.path = Path(path)
        self.width, self.height = width, height
        self.time_base, self.fps = Fraction(time_base), Fraction(fps)
        self._eye = width // 2
        self._pad_w, self._pad_h = self._eye % 2, height % 2
        self._stream = self.path.with_name(f".{self.path.stem}.mvhevc")
        self._encoder = MultiviewEncoder(self._stream, self._eye + self._pad_w, height + self._pad_h, self.fps,
                                         crf=crf, preset=preset, threads=threads)
        self._first_pts: int | None = None

    @property
    def frames_written(self) -> int:
        return self._encoder.frames

    def write(self, rgb: np.ndarray, pts: int) -> None:
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"expected a ({self.height}, {self.width}, 3) frame, got {rgb.shape}")
        if self._first_pts is None:
            self._first_pts = pts
        pad = ((0, self._pad_h), (0, self._pad_w), (0, 0))
        left, right = rgb[:, :self._eye], rgb[:, self._eye:2 * self._eye]
        if self._pad_w or self._pad_h:
            left, right = np.pad(left, pad, mode="edge"), np.pad(right, pad, mode="edge")
        self._encoder.write(left, right)

    def close(self) -> None:
        try:
            self._encoder.close()
            first_frame = round(self._first_pts * self.time_base * self.fps)
            mux_mvhevc(self._stream, self.path, self.fps, first_frame)
        finally:
            self._stream.unlink(missing_ok=True)

    def __enter__(self) -> SpatialSegmentWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._encoder.__exit__(kind, value, traceback)
            self._stream.unlink(missing_ok=True)
