"""Converting a segment with a video inpainter so that it reproduces what a single pass over the video computes.

A video inpainter (``inpaint_diffusion``) fills holes in temporal chunks, each continuing from the frames the
previous chunk filled (its context): a chain. A segment converted on its own can only give the single pass's
output if every chunk it runs holds the same frames, with the same context and the same noise, as the single
pass's chunk at that place. Three rules make that so:

* **The chain restarts on the timeline.** The first frame at or after every ``restart_seconds`` of the video's
  timeline (counted from the start of the job's window, exact in the frames' own time base) starts the chain
  afresh: a chunk without context, the noise seeded again. Restarts are placed in time, not by frame count, so
  a segment finds them from its frames' timestamps alone — variable frame rates and dropped frames included.
* **Chunks are counted from the restart** (``chunk_end``), and the frames go to the engine in batches cut on
  chunk ends and restarts, so no chunk is split between two calls and the grid does not depend on batch sizes
  (or on a GPU's free memory).
* **A segment warms up from the last restart before it**: the frames from that restart to its first frame are
  converted again (their output dropped), after the depth estimator's own warm-up before the restart; and
  the chunk that straddles the segment's end is run whole with the first frames of the next segment
  (``lookahead``). The extra diffusion per segment is at most ``restart_seconds`` of frames before it plus one
  chunk after it.

With ``restart_seconds`` 0 the chain never restarts and a segment starts a new chain ``overlap`` frames before
its first frame: the context is regenerated rather than reproduced, and the seams are not exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

from stereo_spot.models import ConversionSettings
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.segment_stages import (
    EncoderThread,
    depth_warmup_seconds,
    encode_settings,
    finish_segment,
    output_fps,
    segment_writer,
    stack_frames,
    threaded,
    warmup_sources,
)
from stereo_spot.stereo.stats import ComfortStats

# What a decoded frame is for: the depth's warm-up only; rendered as the inpainter's context before the
# segment (output dropped); the segment's output; rendered after it to finish the last chunk (output dropped).
DEPTH, CONTEXT, OUTPUT, AHEAD = "depth", "context", "output", "ahead"


class RestartClock:
    """Which restart slot of the timeline a frame is in: slots of ``seconds`` from ``origin`` (the start of the
    job's window, 0 without one); the first frame of each slot restarts the inpainter's chain. ``seconds`` 0:
    one slot, no restart."""

    def __init__(self, origin: float | None, seconds: float) -> None:
        self.origin = Fraction(origin or 0.0)
        self.period = Fraction(seconds).limit_denominator(1_000_000) if seconds > 0 else None

    def slot(self, frame) -> int:
        if self.period is None:
            return 0
        return math.floor((frame.pts * frame.time_base - self.origin) / self.period)

    def slot_start(self, slot: int) -> float:
        return float(self.origin + slot * (self.period or 0))


def _time(frame) -> Fraction:
    return frame.pts * frame.time_base


def warmup_items(sources: Sequence[Path], first, clock: RestartClock, depth_seconds: float, context_frames: int,
                 read: Callable[..., Iterator]) -> Iterator[tuple[object, str]]:
    """The frames before the segment's first frame ``first``, with their role: from the chain's last restart
    (``CONTEXT``), and the depth estimator's history before that (``DEPTH``); never before the window's start.
    Without restarts, the last ``context_frames`` frames are the context."""
    first_time, first_slot = _time(first), clock.slot(first)
    chain_start = clock.slot_start(first_slot) if clock.period is not None else float(first_time)
    depth_start = max(float(clock.origin), chain_start - depth_seconds)
    window_start = depth_start - 1.0  # decode from a little earlier; the roles are decided on exact times
    buffered: deque = deque()
    for source in sources:
        for frame in read(source, (window_start, None)):
            moment = _time(frame)
            if moment >= first_time:
                break
            if moment < clock.origin:
                continue
            if clock.period is not None and clock.slot(frame) == first_slot:
                yield frame, CONTEXT
            elif float(moment) >= depth_start:
                if clock.period is not None:
                    yield frame, DEPTH
                else:  # the last context_frames frames become the context of a chain started there
                    buffered.append(frame)
                    if len(buffered) > context_frames:
                        yield buffered.popleft(), DEPTH
    for frame in buffered:
        yield frame, CONTEXT


def _stream(src: Path, window, warmup_sources: Sequence[Path], lookahead_src: Path | None, clock: RestartClock,
            depth_seconds: float, context_frames: int, read: Callable[..., Iterator], batch: int
            ) -> Iterator[list[tuple[object, str]]]:
    """Every frame the segment's conversion touches, in order, with its role, in lists of ``batch``."""
    peek = read(src, window)
    head = next(peek, None)  # the segment's first frame: where the warm-up ends
    peek.close()

    def items():
        if head is None:
            return
        yield from warmup_items(warmup_sources, head, clock, depth_seconds, context_frames, read)
        for frame in read(src, window):
            yield frame, OUTPUT
        if lookahead_src is not None:
            for frame in read(lookahead_src, (None, window[1])):
                yield frame, AHEAD

    pending: list = []
    for item in items():
        pending.append(item)
        if len(pending) == batch:
            yield pending
            pending = []
    if pending:
        yield pending


def convert_chained(engine: StereoEngine, src: Path, dst: Path, settings: ConversionSettings, video, rotation: int,
                    window: tuple[float | None, float | None], warmup_src: Path | Sequence[Path] | None,
                    lookahead_src: Path | None, batch_size: int, progress: Callable[[int], None] | None,
                    started: float, collect_stats: bool, codec_threads: int = 0, codec: str = "libx264"):
    """``segment.convert_segment`` for an engine whose inpainter chains chunks (see the module's docstring)."""
    from stereo_spot.media.frames import VideoWriter, read_frames

    chain = engine.inpainter
    engine.reset()
    engine.stats = ComfortStats() if collect_stats else None
    fps = output_fps(video, settings)
    clock = RestartClock(window[0], float(getattr(chain, "restart_seconds", 0.0) or 0.0))
    sources = warmup_sources(warmup_src)

    def read(path: Path, span) -> Iterator:
        return read_frames(path, rotation=rotation, window=span, threads=codec_threads, max_fps=settings.max_fps)

    encode = encode_settings(settings, codec_threads, codec)
    time_base: Fraction | None = None
    first_pts: int | None = None
    last_pts, frames, rendered_without_output = 0, 0, 0
    warmup_seconds = engine_seconds = 0.0

    def make_writer(width: int, height: int) -> VideoWriter:
        return segment_writer(dst, width, height, time_base, fps, encode, settings)

    encoder = EncoderThread(make_writer)
    stop = threading.Event()
    depth_batch: list = []
    pending: list = []  # (frame, role) of whole chunks, converted in one call
    chain_slot: int | None = None
    position = 0  # frames since the chain's restart
    chunk_stop = 0  # where the chunk in progress ends (``position == chunk_stop``: none in progress)

    def run_depth() -> None:
        nonlocal warmup_seconds
        if depth_batch:
            began = time.perf_counter()
            engine.warm_up(stack_frames([f for f, _ in depth_batch]), rendered=0)
            warmup_seconds += time.perf_counter() - began
            depth_batch.clear()

    def run_pending() -> None:
        nonlocal warmup_seconds, engine_seconds, time_base, first_pts, last_pts, frames, rendered_without_output
        if not pending:
            return
        began = time.perf_counter()
        roles = [role for _, role in pending]
        rendered_without_output += len(roles) - roles.count(OUTPUT)
        rgb = stack_frames([f for f, _ in pending])
        if OUTPUT not in roles:
            depth_seconds = engine.depth_seconds  # the segment's depth time counts its own frames
            engine.warm_up(rgb, rendered=len(rgb))
            engine.depth_seconds = depth_seconds
            warmup_seconds += time.perf_counter() - began
        else:
            lo, hi = roles.index(OUTPUT), len(roles) - roles[::-1].index(OUTPUT)
            packed = engine.convert_batch(rgb, observed=(lo, hi))
            engine_seconds += time.perf_counter() - began
            outputs = [f for f, _ in pending[lo:hi]]
            if time_base is None:
                time_base, first_pts = outputs[0].time_base, outputs[0].pts
            pts = [f.pts for f in outputs]
            encoder.put(packed[lo:hi], pts)
            frames += len(outputs)
            last_pts = pts[-1]
            if progress is not None:
                progress(len(outputs))
        pending.clear()

    try:
        batches = _stream(src, window, sources, lookahead_src, clock, depth_warmup_seconds(engine, float(fps)),
                          int(getattr(chain, "context_frames", 0) or 0), read, batch_size)
        done = False
        decoded = threaded(batches, stop, "stereo-decode")
        for batch in decoded:
            for frame, role in batch:
                if role == DEPTH:
                    depth_batch.append((frame, role))
                    if len(depth_batch) >= batch_size:
                        run_depth()
                    continue
                run_depth()
                slot = clock.slot(frame)
                if role == AHEAD and (position == chunk_stop or slot != chain_slot):
                    done = True  # the last chunk is complete (or the next one starts a new chain)
                    break
                if chain_slot is None or slot != chain_slot:  # a restart: the chain starts afresh here
                    run_pending()
                    chain.reset()
                    chain_slot, position, chunk_stop = slot, 0, 0
                if position == chunk_stop:  # a new chunk begins
                    chunk_stop = chain.chunk_end(position)
                pending.append((frame, role))
                position += 1
                if position == chunk_stop and len(pending) + chain.chunk_end(position) - position > batch_size:
                    run_pending()  # the next chunk would not fit in this call
            if done:
                decoded.close()  # stops the reader thread: the rest of the next segment is not needed
                break
        run_depth()
        run_pending()
    except BaseException:
        stop.set()
        encoder.close(raise_errors=False)
        raise
    return finish_segment(engine, encoder, src, frames=frames, first_pts=first_pts, last_pts=last_pts,
                          time_base=time_base, fps=fps, started=started, warmup_seconds=warmup_seconds,
                          engine_seconds=engine_seconds, batch_size=batch_size, codec=codec,
                          warmup_frames=rendered_without_output)
