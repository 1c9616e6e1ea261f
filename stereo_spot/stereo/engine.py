"""The per-frame stereo pipeline: depth → disparity → forward warp → hole fill → pack.

``StereoEngine`` holds the pieces chosen by ``ConversionSettings`` and the temporal state of one shot or segment.
Frames come in and go out as uint8 NHWC numpy batches (what decoders and encoders use); in between everything is
float torch on the engine's device. The hot path is: one upload and uint8→float conversion (as a channels-last
NCHW view, no transposing copy), depth at low resolution, warp and fill at full resolution, and packing straight
into the uint8 output buffer, whose left half is a byte copy of the source.

Threads: the engine never calls ``torch.set_num_threads``; the process that runs it decides (the runner gives
each of its worker processes a share of the cores).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import cv2
import numpy as np
import torch

from stereo_spot.media.depth_video import dequantise, quantise
from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.depth import DepthEstimator, create_depth_estimator
from stereo_spot.stereo.depth.given import GivenDepth
from stereo_spot.stereo.devices import DEFAULT_BATCH_FRAMES, batch_frames_for_memory, default_device, free_memory
from stereo_spot.stereo.disparity import depth_to_disparity
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.fill import Inpainter, create_inpainter
from stereo_spot.stereo.pack import depth_picture, pack_uint8
from stereo_spot.stereo.pack import output_size as packed_size
from stereo_spot.stereo.screen_plane import ScreenPlane
from stereo_spot.stereo.stats import ComfortStats
from stereo_spot.stereo.warp import WarpWorkspace, forward_warp
from stereo_spot.stereo.window import FloatingWindow, apply_window, viewer_disparity, viewer_swapped

__all__ = ["DEFAULT_BATCH_FRAMES", "StereoEngine", "check_model_choice", "default_device", "frames_to_tensor"]


#: Models that cannot run without weights: their ``--*-weights`` option is required.
_NEEDS_WEIGHTS = {"depth-anything": "--depth-weights", "diffusion": "--inpaint-weights"}


def check_model_choice(settings: ConversionSettings) -> None:
    """Refuse unknown model names and missing or unusable weights before any work starts (no model is loaded).
    Raises ``StereoInputError`` with the option to fix."""
    from stereo_spot import hub_models
    from stereo_spot.errors import require_extra
    from stereo_spot.stereo.depth import known_depth_estimators
    from stereo_spot.stereo.fill import known_inpainters

    hub_model = hub_models.lookup(settings.depth_model)
    if hub_model is not None:
        require_extra("transformers", "models", f"--depth-model {settings.depth_model}")
        hub_models.refuse_weights(settings.depth_model, settings.depth_weights)
        hub_models.announce_licence(settings.depth_model)
        if hub_models.offline():
            hub_models.resolve(settings.depth_model, download=False)  # offline and not cached: say so now
    choices = (("--depth-model", settings.depth_model, settings.depth_weights, known_depth_estimators()),
               ("--inpaint", settings.inpaint, settings.inpaint_weights, known_inpainters()))
    for option, name, weights, known in choices:
        if option == "--depth-model" and hub_model is not None:
            continue
        if name not in known:
            raise StereoInputError(f"{option} {name!r} is not known; choose one of {', '.join(known)}")
        flag = _NEEDS_WEIGHTS.get(name)
        if flag:
            require_extra("diffusers" if option == "--inpaint" else "transformers", "models", f"{option} {name}")
        if flag and not weights:
            raise StereoInputError(f"{option} {name} needs {flag}: a folder or an s3:// prefix with its weights")
        if weights and name in ("heuristic", "classical"):
            raise StereoInputError(f"{option} {name} takes no weights (drop the weights option or choose a model "
                                   f"that needs them: {', '.join(_NEEDS_WEIGHTS)})")
        if weights and not weights.startswith("s3://"):
            from pathlib import Path

            if not Path(weights).expanduser().is_dir():
                raise StereoInputError(f"the weights {weights} for {option} {name} are not a folder")


def frames_to_tensor(frames_uint8: np.ndarray, device: torch.device, staging: _PinnedStaging | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,H,W,3] numpy → (the uint8 batch on the device, float [N,3,H,W] 0..1, contiguous planes).

    Planar float is what the warp reads; on CPU OpenCV splits the interleaved bytes (several times faster than
    a transposing float copy), on a GPU the transpose happens there.
    """
    if frames_uint8.dtype != np.uint8 or frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3:
        raise StereoInputError(f"frames must be uint8 [N,H,W,3], got {frames_uint8.dtype} {frames_uint8.shape}")
    frames_uint8 = np.ascontiguousarray(frames_uint8)
    if device.type != "cpu":
        if staging is not None:
            u8 = staging.upload(frames_uint8, device)
        else:
            u8 = torch.from_numpy(frames_uint8).to(device)
        return u8, u8.permute(0, 3, 1, 2).contiguous().to(torch.float32).mul_(1.0 / 255.0)
    n, h, w, c = frames_uint8.shape
    planar = torch.empty((n, c, h, w), dtype=torch.float32)
    for i, frame in enumerate(frames_uint8):
        for ch, plane in enumerate(cv2.split(frame)):
            planar[i, ch].copy_(torch.from_numpy(plane))
    return torch.from_numpy(frames_uint8), planar.mul_(1.0 / 255.0)


class _PinnedStaging:
    """Page-locked host buffers for a GPU's uploads and downloads, reused from batch to batch: copies from
    pinned memory run at the bus's full speed and asynchronously (``non_blocking``), where pageable memory is
    first copied again by the driver. The upload buffer is refilled only after the previous upload finished
    (an event), the download waits for its copy."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self._uploaded: torch.cuda.Event | None = None

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < int(np.prod(shape)):
            buffer = torch.empty(int(np.prod(shape)), dtype=torch.uint8, pin_memory=True)
            self._buffers[name] = buffer
        return buffer[: int(np.prod(shape))].view(shape)

    def upload(self, frames_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
        if self._uploaded is not None:
            self._uploaded.synchronize()
        host = self._buffer("in", frames_uint8.shape)
        host.numpy()[...] = frames_uint8
        on_device = host.to(device, non_blocking=True)
        self._uploaded = torch.cuda.Event()
        self._uploaded.record(torch.cuda.current_stream(device))
        return on_device

    def download(self, packed: torch.Tensor, out: np.ndarray) -> None:
        host = self._buffer("out", tuple(packed.shape))
        host.copy_(packed, non_blocking=True)
        torch.cuda.current_stream(packed.device).synchronize()
        out[...] = host.numpy()


class StereoEngine:
    """Converts consecutive frames of one shot or segment to packed stereo frames.

    Holds the depth estimator and inpainter chosen by ``settings`` (or given), their temporal state, and the
    warp's reusable buffers. Not thread-safe: one engine per worker.
    """

    def __init__(
        self,
        settings: ConversionSettings,
        device: str | torch.device | None = None,
        depth: DepthEstimator | None = None,
        inpainter: Inpainter | None = None,
    ) -> None:
        self.settings = settings
        self.device = torch.device(device) if device is not None else default_device()
        if depth is None and settings.depth_video:  # the depth comes with the frames: no model is loaded
            depth = GivenDepth()
        self.depth = depth or create_depth_estimator(settings.depth_model, settings.depth_weights, self.device,
                                                     settings.precision)
        #: depth handed in with the frames being converted (``convert_batch``/``warm_up``), not yet used
        self._given: torch.Tensor | None = None
        if inpainter is None and not settings.renders_stereo_pair:
            inpainter = create_inpainter("classical")  # never called: no second eye, no holes; costs nothing
        self.inpainter = inpainter or create_inpainter(settings.inpaint, settings.inpaint_weights, self.device,
                                                       settings.precision)
        # On CPU a frame at a time: the warp's buffers (one frame's worth, reused) and the temporaries stay
        # small; batches gain nothing on CPU and make every temporary a fresh, page-faulted mapping.
        # A GPU takes the whole batch at once.
        self.chunk_frames = 1 if self.device.type == "cpu" else 1_000_000
        self._warp_workspace = WarpWorkspace()
        self._staging = _PinnedStaging() if self.device.type == "cuda" else None
        #: comfort statistics of the frames converted since ``reset`` (None: not collected)
        self.stats: ComfortStats | None = None
        #: seconds spent in depth estimation since ``reset`` (measured around each call; on a GPU after a sync)
        self.depth_seconds = 0.0
        # Temporal state after the depth, finite memory too: the automatic screen plane and the floating window.
        self.screen_plane = ScreenPlane()
        self.window = FloatingWindow()
        #: the convergence of each frame of the last batch when it is automatic (None: the fixed setting)
        self.last_convergence: torch.Tensor | None = None

    @property
    def batch_frames(self) -> int:
        """How many consecutive frames to hand to ``convert_batch`` at once when the frame size is not known: a
        temporal inpainter wants whole chunks of frames."""
        return max(DEFAULT_BATCH_FRAMES, int(getattr(self.inpainter, "frames_per_call", 1)))

    def batch_frames_for(self, width: int, height: int) -> int:
        """Frames per batch for frames of ``width`` x ``height``: on a GPU as many as its free memory holds
        (``devices.batch_frames_for_memory``), at least a temporal inpainter's chunk; ``batch_frames`` on CPU."""
        if self.device.type != "cuda":
            return self.batch_frames
        fits = batch_frames_for_memory(free_memory(self.device), width, height)
        return max(fits, int(getattr(self.inpainter, "frames_per_call", 1)))

    @property
    def warmup_frames(self) -> int:
        """Frames of history the depth estimator, the automatic screen plane and the floating window need to reach
        the state of a continuous run."""
        depth = int(getattr(self.depth, "memory_frames", 0) or 0)
        plane = self.screen_plane.memory if self.settings.auto_convergence else 0
        return max(depth, plane, self.window.memory if self.settings.floating_window else 0)

    def _estimate(self, frames: torch.Tensor) -> torch.Tensor:
        """The depth of the next frames: handed in with them (a depth video), else the estimator's."""
        if self._given is None:
            return self.depth.estimate(frames)
        count = len(frames)
        if len(self._given) < count:
            raise StereoInputError(f"{len(self._given)} depth frames given for {count} frames")
        depth01, self._given = self._given[:count], self._given[count:]
        return depth01

    @contextmanager
    def _giving(self, depth: np.ndarray | None, frames: int):
        """Hand ``depth`` (uint16 [N,H,W] as a depth video holds it, or float [N,H,W] 0..1) to the frames
        converted inside, one frame each, in order."""
        if depth is None:
            if self.settings.depth_video:
                raise StereoInputError("this conversion renders from a depth video: give each frame's depth")
            yield
            return
        if len(depth) != frames:
            raise StereoInputError(f"{len(depth)} depth frames given for {frames} frames")
        given = torch.from_numpy(dequantise(depth) if depth.dtype == np.uint16
                                 else np.ascontiguousarray(depth, dtype=np.float32)).to(self.device)
        self._given = given.unsqueeze(1)
        try:
            yield
            if len(self._given):
                raise StereoInputError(f"{len(self._given)} depth frames given were not used")
        finally:
            self._given = None

    def _timed_depth(self, frames: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        depth01 = self._estimate(frames)
        if depth01.device.type == "cuda":
            torch.cuda.synchronize(depth01.device)
        self.depth_seconds += time.perf_counter() - started
        return depth01

    def reset(self) -> None:
        """Start a new shot: forget the depth, inpainting, screen plane and window state."""
        self.depth.reset()
        self.inpainter.reset()
        self.screen_plane.reset()
        self.window.reset()
        self.depth_seconds = 0.0

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        return packed_size(width, height, self.settings.output_format)

    def disparity(self, frames: torch.Tensor) -> torch.Tensor:
        """Depth for float frames [N,3,H,W] → disparity in pixels [N,1,H,W] (crossed positive)."""
        return self._depth_to_disparity(self._timed_depth(frames))

    def _depth_to_disparity(self, depth01: torch.Tensor) -> torch.Tensor:
        settings = self.settings
        convergence: float | torch.Tensor = settings.convergence
        self.last_convergence = None
        if settings.auto_convergence:
            convergence = self.last_convergence = self.screen_plane.update(depth01, settings.divergence,
                                                                           settings.convergence)
        return depth_to_disparity(depth01, depth01.shape[-1], settings.divergence, convergence)

    def _window_widths(self, disparity: torch.Tensor) -> torch.Tensor | None:
        """The floating window's widths [N,2] for the next frames' disparities (None: the window is off)."""
        if not self.settings.floating_window:
            return None
        return self.window.update(viewer_disparity(disparity, self._viewer_swapped))

    @property
    def _viewer_swapped(self) -> bool:
        return viewer_swapped(self.settings.output_format, self.settings.swap_eyes)

    @torch.inference_mode()
    def warm_up(self, frames_uint8: np.ndarray, rendered: int | None = None, depth: np.ndarray | None = None
                ) -> None:
        """Feed frames that precede the segment through the engine's temporal state, without output: all of them
        through the depth estimator, and the last ``rendered`` through warp and fill too (default: as many as
        the inpainter keeps as context; a video inpainter continues from the frames it filled last). ``depth``:
        the frames' depth from a depth video, instead of the estimator's."""
        if len(frames_uint8) == 0:
            return
        with self._giving(depth, len(frames_uint8)):
            self._warm_up(frames_uint8, rendered)

    def _warm_up(self, frames_uint8: np.ndarray, rendered: int | None) -> None:
        if rendered is None:
            rendered = int(getattr(self.inpainter, "context_frames", 0) or 0)
        context = min(len(frames_uint8), rendered)
        head = len(frames_uint8) - context
        for start in range(0, head, self.chunk_frames):
            _, frames = frames_to_tensor(frames_uint8[start : min(head, start + self.chunk_frames)], self.device,
                                         self._staging)
            depth01 = self._estimate(frames)
            if self.settings.auto_convergence or self.settings.floating_window:
                self._window_widths(self._depth_to_disparity(depth01))
        if context:
            self._render_batch(frames_uint8[head:], observe=None)

    def render_right(self, left: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
        """Right views [N,C,H,W] for float left views and disparities in pixels: warp + fill. The result may
        live in the engine's scratch buffers: use it (or clone it) before the next call."""
        right, holes, warped_disparity = forward_warp(left, disparity, workspace=self._warp_workspace)
        return self.inpainter.inpaint(right, holes, warped_disparity, left)

    @torch.inference_mode()
    def right_views(self, frames: np.ndarray | torch.Tensor, disparity: np.ndarray | torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Right views (float [N,3,H,W] 0..1, a new tensor) for uint8 NHWC or float NCHW frames; the disparity
        [N,1,H,W] or [N,H,W] in pixels is estimated when not given."""
        if isinstance(frames, np.ndarray):
            _, left = frames_to_tensor(frames, self.device)
        else:
            left = frames.to(self.device, torch.float32)
        if disparity is None:
            disp = self.disparity(left)
        else:
            disp = torch.as_tensor(disparity, dtype=torch.float32, device=self.device)
            if disp.dim() == 3:
                disp = disp.unsqueeze(1)
        return self.render_right(left, disp).clone()

    @torch.inference_mode()
    def convert_batch(self, frames_uint8: np.ndarray, observed: tuple[int, int] | None = None,
                      depth: np.ndarray | None = None) -> np.ndarray:
        """Consecutive frames uint8 [N,H,W,3] → packed stereo frames uint8 [N,H2,W2,3], or for a depth job
        (``depth_output``) their depth as uint16 [N,H,W] (``media.depth_video``). ``observed`` = (first,
        stop): the frames the comfort statistics count (default all); the others are a temporal inpainter's
        context before or after the output, converted with it and dropped by the caller. ``depth``: the
        frames' depth from a depth video (uint16 [N,H,W]), used instead of the estimator's."""
        if frames_uint8.ndim != 4:
            raise StereoInputError(f"frames must be uint8 [N,H,W,3], got shape {frames_uint8.shape}")
        with self._giving(depth, len(frames_uint8)):
            return self._render_batch(frames_uint8, observe=observed or (0, len(frames_uint8)))

    def _warped_chunks(self, frames_uint8: np.ndarray, observe: tuple[int, int] | None):
        """Yield (start, stop, u8, left, warped, holes, warped_disparity, window widths or None) for each chunk
        of the batch; ``observe`` = the (first, stop) frames the comfort statistics count. The warp reuses its
        workspace, so a chunk's tensors are valid until the next one is produced."""
        for start in range(0, len(frames_uint8), self.chunk_frames):
            stop = min(len(frames_uint8), start + self.chunk_frames)
            u8, left = frames_to_tensor(frames_uint8[start:stop], self.device, self._staging)
            disparity = self.disparity(left)
            widths = self._window_widths(disparity)
            warped, holes, warped_disparity = forward_warp(left, disparity, workspace=self._warp_workspace)
            if observe and self.stats is not None:
                lo, hi = max(observe[0], start) - start, min(observe[1], stop) - start
                if hi > lo:
                    # with swapped eyes the statistics stay those of the rendered disparity, as they always
                    # were, which the window's widths (measured on the viewer's) do not apply to
                    window = None if self._viewer_swapped or widths is None else widths[lo:hi]
                    convergence = None if self.last_convergence is None else self.last_convergence[lo:hi]
                    self.stats.observe(left[lo:hi], disparity[lo:hi], holes[lo:hi], window=window,
                                       convergence=convergence)
            yield start, stop, u8, left, warped, holes, warped_disparity, widths

    def _output_array(self, frames_uint8: np.ndarray) -> np.ndarray:
        n, h, w = frames_uint8.shape[:3]
        out_w, out_h = self.output_size(w, h)
        return np.empty((n, out_h, out_w, 3), dtype=np.uint8)

    def _render_batch(self, frames_uint8: np.ndarray, observe: tuple[int, int] | None) -> np.ndarray:
        if self.settings.depth_output:
            return self._render_batch_depth(frames_uint8)
        if self.settings.output_format.is_rgbd:
            return self._render_batch_rgbd(frames_uint8)
        if getattr(self.inpainter, "frames_per_call", 1) > 1:
            return self._render_batch_temporal(frames_uint8, observe)
        out = self._output_array(frames_uint8)
        for start, stop, u8, left, warped, holes, warped_disparity, widths in self._warped_chunks(frames_uint8,
                                                                                                  observe):
            right = self.inpainter.inpaint(warped, holes, warped_disparity, left)
            self._pack_into(out, start, stop, u8, left, right, widths)
        return out

    def _render_batch_rgbd(self, frames_uint8: np.ndarray) -> np.ndarray:
        """Each frame beside the depth the estimator gave it: no disparity, no warp, no window, no statistics
        (there is no stereo pair to measure)."""
        out = self._output_array(frames_uint8)
        for start in range(0, len(frames_uint8), self.chunk_frames):
            stop = min(len(frames_uint8), start + self.chunk_frames)
            u8, left = frames_to_tensor(frames_uint8[start:stop], self.device, self._staging)
            depth = depth_picture(self._timed_depth(left), u8.shape[-1])
            self._pack_into(out, start, stop, u8, left, depth)
        return out

    def _render_batch_depth(self, frames_uint8: np.ndarray) -> np.ndarray:
        """The depth the warp would use, quantised to 16 bits (``media.depth_video.quantise``): uint16 [N,H,W]."""
        n, h, w = frames_uint8.shape[:3]
        out = np.empty((n, h, w), dtype=np.uint16)
        for start in range(0, n, self.chunk_frames):
            stop = min(n, start + self.chunk_frames)
            _, left = frames_to_tensor(frames_uint8[start:stop], self.device, self._staging)
            out[start:stop] = quantise(self._timed_depth(left)[:, 0].float().cpu().numpy())
        return out

    def _render_batch_temporal(self, frames_uint8: np.ndarray, observe: tuple[int, int] | None) -> np.ndarray:
        """The whole batch warped first, then inpainted in one call: a video inpainter fills holes from the
        frames around them."""
        out = self._output_array(frames_uint8)
        u8s, lefts, rights, hole_masks, disparities, windows = [], [], [], [], [], []
        for _, _, u8, left, warped, holes, warped_disparity, widths in self._warped_chunks(frames_uint8, observe):
            windows.append(widths)
            u8s.append(u8)
            lefts.append(left)
            rights.append(warped.clone())  # the workspace is reused by the next warp
            hole_masks.append(holes.clone())
            disparities.append(warped_disparity.clone())
        left_all = torch.cat(lefts)
        right_all = self.inpainter.inpaint(torch.cat(rights), torch.cat(hole_masks), torch.cat(disparities),
                                           left_all)
        position = 0
        for u8, left, widths in zip(u8s, lefts, windows, strict=True):
            stop = position + len(left)
            self._pack_into(out, position, stop, u8, left, right_all[position:stop], widths)
            position = stop
        return out

    def _pack_into(self, out: np.ndarray, start: int, stop: int, u8: torch.Tensor, left: torch.Tensor,
                   right: torch.Tensor, window: torch.Tensor | None = None) -> None:
        if window is not None:  # each eye's edge masked before packing: every layout carries the window
            u8, left = apply_window(u8, left, right, window, self._viewer_swapped)
        if self.device.type == "cpu":  # pack straight into the returned array
            pack_uint8(u8, left, right, self.settings.output_format, self.settings.anaglyph,
                       swap_eyes=self.settings.swap_eyes, out=torch.from_numpy(out[start:stop]))
        else:
            packed = pack_uint8(u8, left, right, self.settings.output_format, self.settings.anaglyph,
                                swap_eyes=self.settings.swap_eyes)
            if self._staging is not None:
                self._staging.download(packed, out[start:stop])
            else:
                out[start:stop] = packed.cpu().numpy()
