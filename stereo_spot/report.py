"""The comfort report of a job (``jobs/{job_id}/report.json``): how strong and how comfortable its 3D is.

Convert samples statistics while it converts a segment (``stereo/stats.py``) and stores them with the segment's
completion; concat merges them (histograms and sums add up exactly) into the job's report. Every parallax is in
**percent of the image width**, negative = crossed (in front of the screen), positive = uncrossed (behind it).

Report fields (``version`` 1):

``hole_ratio``                 share of right-view pixels the warp left empty (filled by the inpainter)
``flicker_index``              mean frame-to-frame change of the parallax on static pixels, as a share of the
                               job's parallax span (p2..p98): 0 is rock steady
``border_violation_ratio``     share of sampled frames where something in front of the screen touches the left
                               or right frame edge (a window violation), measured on the disparity as rendered:
                               the figure without a floating window
``border_violation_ratio_after_window``  the same after the floating window: an edge object counts only where it
                               comes forward beyond the window's own parallax at that edge (equal to the figure
                               above when the window is off)
``window``                     the floating window: on or off, its width per edge (mean and max, % of the width)
                               and the share of frames with a mask
``convergence_chosen``         with ``--convergence auto``: the screen plane chosen (mean, min, max over frames)
``max_crossed_pct``            how far the nearest 1 % of the picture comes out of the screen (p1, as a positive %)
``max_uncrossed_pct``          how far the farthest 1 % sits behind the screen (p99)
``disparity``                  ``percentiles`` of all pixels, ``crossed_percentiles`` / ``uncrossed_percentiles`` of
                               the pixels in front of / behind the screen, ``crossed_share``, ``histogram``
``border``, ``flicker``        the details behind the headline numbers (per side, per segment)
``limits``                     the comfort limits the warnings use, and where they come from
``settings``                   divergence and convergence used (chosen ones with ``--auto-divergence``), models
``sampling``                   frames, sampled frames, picture size
``segments``                   per segment: frames, timings (convert, warm-up, engine, depth) and its own figures
``warnings``                   readable sentences for every limit exceeded

Comfort limits (rules of thumb of stereography): behind the screen, parallax must stay below the viewer's eye
separation (about 65 mm) on the screen the video is watched on, or the eyes have to diverge: 65 mm is 2 % of a
3.25 m wide screen and 1 % of a 6.5 m one (guides for cinema release keep uncrossed parallax at or under 1 %,
0.5-0.75 % for the biggest screens). In front of the screen viewers tolerate two to three times more, about 3 %
of the width, as long as it is not sustained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import numpy as np

from stereo_spot import keys
from stereo_spot.models import Job, SegmentCompletion
from stereo_spot.ports import Backend
from stereo_spot.stereo.stats import BIN_PCT, BINS, RANGE_PCT, histogram_counts

log = logging.getLogger(__name__)

REPORT_VERSION = 1
CROSSED_LIMIT_PCT = 3.0
UNCROSSED_LIMIT_PCT = 2.0
UNCROSSED_LARGE_SCREEN_PCT = 1.0
BORDER_WARNING_RATIO = 0.1
FLICKER_WARNING = 0.02
HOLE_WARNING_RATIO = 0.05
EYE_SEPARATION_M = 0.065
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
LIMITS_SOURCE = ("uncrossed parallax below the eye separation (~65 mm) on the target screen: 65 mm / screen "
                 "width (2 % of a 3.25 m screen, 1 % of a 6.5 m one); crossed parallax tolerated about 2-3x "
                 "more (~3 % of the width)")
_EDGES = np.linspace(-RANGE_PCT, RANGE_PCT, BINS + 1)


def _percentile(counts: np.ndarray, q: float) -> float:
    """The q-th percentile (0..100) of a histogram over ``_EDGES``, interpolated within the bin."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    cumulative = np.cumsum(counts)
    target = q / 100.0 * total
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, len(counts) - 1)
    before = cumulative[index - 1] if index > 0 else 0
    inside = counts[index]
    fraction = (target - before) / inside if inside > 0 else 0.5
    return float(_EDGES[index] + np.clip(fraction, 0.0, 1.0) * BIN_PCT)


def _percentiles(counts: np.ndarray, qs: Iterable[float]) -> dict[str, float]:
    return {f"p{q:g}": round(_percentile(counts, q), 3) for q in qs}


def _coarse_histogram(counts: np.ndarray, max_bins: int = 40) -> dict:
    """Bins wide enough for a chart: the occupied range in at most ``max_bins`` bins, as shares of pixels."""
    nonzero = np.flatnonzero(counts)
    if not len(nonzero):
        return {"edges": [], "counts": []}
    first, last = int(nonzero[0]), int(nonzero[-1]) + 1
    group = max(1, int(np.ceil((last - first) / max_bins)))
    last = first + int(np.ceil((last - first) / group)) * group
    padded = np.zeros(last - first, np.int64)
    span = counts[first:last]
    padded[: len(span)] = span
    grouped = padded.reshape(-1, group).sum(axis=1)
    total = counts.sum()
    edges = [round(float(_EDGES[first] + i * group * BIN_PCT), 4) for i in range(len(grouped) + 1)]
    return {"edges": edges, "counts": [round(float(c) / total, 6) for c in grouped]}


def _segment_row(completion: SegmentCompletion) -> dict:
    stats = completion.stats or {}
    timings = stats.get("timings") or {}
    row = {"segment_index": completion.segment_index, "frames": completion.frames,
           "convert_seconds": round(float(timings.get("convert_seconds", completion.convert_seconds)), 3)}
    for name in ("warmup_seconds", "engine_seconds", "depth_seconds"):
        if name in timings:
            row[name] = round(float(timings[name]), 3)
    pixels = int(stats.get("pixels") or 0)
    if pixels:
        row["hole_ratio"] = round(int(stats.get("hole_pixels") or 0) / pixels, 5)
        border = stats.get("border_violation_frames") or {}
        row["border_violation_frames"] = int(border.get("left", 0)) + int(border.get("right", 0))
        after = _after_window(stats)
        row["border_violation_frames_after_window"] = after[0] + after[1]
    return row


def _after_window(stats: dict) -> tuple[int, int]:
    """(left, right) sampled frames violating an edge after the floating window; statistics from before the
    window was measured have only the figure without it."""
    after = stats.get("window_violation_frames") or stats.get("border_violation_frames") or {}
    return int(after.get("left", 0)), int(after.get("right", 0))


class _WindowTotals:
    """The floating window's and the automatic screen plane's figures, summed over segments."""

    def __init__(self) -> None:
        self.on = False
        self.left = self.right = self.frames = self.active = 0
        self.sum_pct = [0.0, 0.0]
        self.max_pct = [0.0, 0.0]
        self.plane_frames, self.plane_sum = 0, 0.0
        self.plane_min, self.plane_max = float("inf"), float("-inf")

    def add(self, stats: dict) -> None:
        left, right = _after_window(stats)
        self.left, self.right = self.left + left, self.right + right
        self.on = self.on or bool(stats.get("floating_window"))
        self.frames += int(stats.get("window_frames") or 0)
        self.active += int(stats.get("window_active_frames") or 0)
        sums, maxima = stats.get("window_sum_pct") or {}, stats.get("window_max_pct") or {}
        for i, side in enumerate(("left", "right")):
            self.sum_pct[i] += float(sums.get(side, 0.0))
            self.max_pct[i] = max(self.max_pct[i], float(maxima.get(side, 0.0)))
        plane = stats.get("convergence") or {}
        if int(plane.get("frames") or 0):
            self.plane_frames += int(plane["frames"])
            self.plane_sum += float(plane.get("sum") or 0.0)
            self.plane_min = min(self.plane_min, float(plane.get("min", 0.0)))
            self.plane_max = max(self.plane_max, float(plane.get("max", 0.0)))

    def window(self) -> dict:
        frames = max(self.frames, 1)
        return {"on": self.on, "unit": "% of the image width",
                "mean_pct": {side: round(self.sum_pct[i] / frames, 4) for i, side in enumerate(("left", "right"))},
                "max_pct": {side: round(self.max_pct[i], 4) for i, side in enumerate(("left", "right"))},
                "active_share": round(self.active / frames, 4), "frames": self.frames}

    def plane(self) -> dict | None:
        if not self.plane_frames:
            return None
        return {"mean": round(self.plane_sum / self.plane_frames, 4), "min": round(self.plane_min, 4),
                "max": round(self.plane_max, 4), "frames": self.plane_frames}


def build_report(job: Job, completions: list[SegmentCompletion]) -> dict:
    """Merge the segments' statistics into the job's report (see the module docstring for the fields)."""
    completions = sorted(completions, key=lambda c: c.segment_index)
    counts = np.zeros(BINS, np.int64)
    frames = sampled = pixels = holes = flicker_pixels = left = right = 0
    flicker_sum = 0.0
    width = height = 0
    extreme_min, extreme_max, border_worst = 0.0, 0.0, 0.0
    violating_segments, after_segments = [], []
    window = _WindowTotals()
    for completion in completions:
        stats = completion.stats or {}
        if not stats.get("sampled_frames"):
            continue
        counts += histogram_counts(stats)
        frames += int(stats.get("frames") or 0)
        sampled += int(stats["sampled_frames"])
        pixels += int(stats.get("pixels") or 0)
        holes += int(stats.get("hole_pixels") or 0)
        flicker_sum += float(stats.get("flicker_sum_pct") or 0.0)
        flicker_pixels += int(stats.get("flicker_pixels") or 0)
        border = stats.get("border_violation_frames") or {}
        left += int(border.get("left", 0))
        right += int(border.get("right", 0))
        if int(border.get("left", 0)) + int(border.get("right", 0)):
            violating_segments.append(completion.segment_index)
        window.add(stats)
        if sum(_after_window(stats)):
            after_segments.append(completion.segment_index)
        border_worst = min(border_worst, float(stats.get("border_worst_pct") or 0.0))
        extreme_min = min(extreme_min, float(stats.get("parallax_min_pct") or 0.0))
        extreme_max = max(extreme_max, float(stats.get("parallax_max_pct") or 0.0))
        width, height = int(stats.get("width") or width), int(stats.get("height") or height)

    settings = job.settings
    report: dict = {"version": REPORT_VERSION, "job_id": job.job_id}
    segments = [_segment_row(c) for c in completions]
    timings = {"convert_seconds": round(sum(r["convert_seconds"] for r in segments), 3)}
    for name in ("warmup_seconds", "engine_seconds", "depth_seconds"):
        if any(name in r for r in segments):
            timings[name] = round(sum(r.get(name, 0.0) for r in segments), 3)
    if sampled:
        all_pixels = counts.sum()
        p1, p99 = _percentile(counts, 1), _percentile(counts, 99)
        span = max(_percentile(counts, 98) - _percentile(counts, 2), 0.05)
        flicker_pct = flicker_sum / flicker_pixels if flicker_pixels else 0.0
        crossed_mask = _EDGES[1:] <= 0.0  # bins entirely in front of the screen
        uncrossed_mask = _EDGES[:-1] >= 0.0
        crossed, uncrossed = np.where(crossed_mask, counts, 0), np.where(uncrossed_mask, counts, 0)
        report.update({
            "hole_ratio": round(holes / pixels, 5) if pixels else 0.0,
            "flicker_index": round(flicker_pct / span, 5),
            "border_violation_ratio": round((left + right) / (2 * sampled), 4),
            "border_violation_ratio_after_window": round((window.left + window.right) / (2 * sampled), 4),
            "window": window.window(),
            "max_crossed_pct": round(max(0.0, -p1), 3),
            "max_uncrossed_pct": round(max(0.0, p99), 3),
            "disparity": {
                "unit": "% of the image width; negative = crossed (in front of the screen), positive = "
                        "uncrossed (behind it)",
                "percentiles": _percentiles(counts, PERCENTILES),
                # percentiles of the crossed pixels by how far they come out: p50 is the median pop-out
                "crossed_percentiles": {f"p{q}": round(-abs(_percentile(crossed, 100 - q)), 3)
                                        for q in (50, 90, 99)} if crossed.sum() else {},
                "uncrossed_percentiles": _percentiles(uncrossed, (50, 90, 99)) if uncrossed.sum() else {},
                "crossed_share": round(float(crossed.sum()) / all_pixels, 4),
                "extremes": {"min_pct": round(extreme_min, 3), "max_pct": round(extreme_max, 3)},
                "histogram": _coarse_histogram(counts),
            },
            "border": {"left_frames": left, "right_frames": right, "sampled_frames": sampled,
                       "worst_parallax_pct": round(border_worst, 3), "segments": violating_segments,
                       "after_window": {"left_frames": window.left, "right_frames": window.right,
                                        "segments": after_segments}},
            "flicker": {"mean_abs_change_pct": round(flicker_pct, 5), "static_pixels": flicker_pixels,
                        "parallax_span_pct": round(span, 3)},
        })
    report["limits"] = {"crossed_pct": CROSSED_LIMIT_PCT, "uncrossed_pct": UNCROSSED_LIMIT_PCT,
                        "uncrossed_large_screen_pct": UNCROSSED_LARGE_SCREEN_PCT, "source": LIMITS_SOURCE}
    report["settings"] = {"output_format": settings.output_format.value, "divergence": settings.divergence,
                          "convergence": "auto" if settings.auto_convergence else settings.convergence,
                          "auto_divergence": settings.auto_divergence, "floating_window": settings.floating_window,
                          "depth_model": settings.depth_model, "inpaint": settings.inpaint}
    if window.plane() is not None:
        report["convergence_chosen"] = window.plane()
    report["sampling"] = {"frames": frames, "sampled_frames": sampled, "width": width, "height": height}
    report["segments"] = segments
    report["timings"] = timings
    report["warnings"] = warnings_for(report)
    return report


def warnings_for(report: dict) -> list[str]:
    """Readable sentences for the limits the job exceeds."""
    out: list[str] = []
    if "max_crossed_pct" not in report:
        return out
    crossed, uncrossed = report["max_crossed_pct"], report["max_uncrossed_pct"]
    if crossed > CROSSED_LIMIT_PCT:
        out.append(f"Objects come out of the screen by up to {crossed:.1f} % of the picture width (comfortable: "
                   f"about {CROSSED_LIMIT_PCT:g} % or less); lower --divergence or raise --convergence.")
    if uncrossed > UNCROSSED_LIMIT_PCT:
        out.append(f"The background sits {uncrossed:.1f} % of the width behind the screen: more than the eye "
                   f"separation on screens wider than {EYE_SEPARATION_M / (uncrossed / 100):.1f} m, where the eyes "
                   f"would have to diverge; lower --divergence or --convergence.")
    elif uncrossed > UNCROSSED_LARGE_SCREEN_PCT:
        out.append(f"The background sits {uncrossed:.1f} % of the width behind the screen: fine on TVs, monitors "
                   f"and headsets, too deep for screens wider than {EYE_SEPARATION_M / (uncrossed / 100):.1f} m.")
    window_on = bool((report.get("window") or {}).get("on"))
    # with the floating window on, what the viewer sees is the figure after it
    ratio_key = "border_violation_ratio_after_window" if window_on else "border_violation_ratio"
    if report.get(ratio_key, 0.0) > BORDER_WARNING_RATIO:
        border = report.get("border", {})
        counted = border.get("after_window", {}) if window_on else border
        sides = " and ".join(side for side in ("left", "right") if counted.get(f"{side}_frames"))
        remedy = ("raise --convergence (or --convergence auto) so the edges sit behind the screen" if window_on
                  else "keep the floating window on (--floating-window) or raise --convergence")
        out.append(f"Something in front of the screen touches the {sides} frame edge in "
                   f"{100 * report[ratio_key]:.0f} % of the sampled frames"
                   f"{' even with the floating window' if window_on else ''} (segments "
                   f"{', '.join(map(str, counted.get('segments', [])[:10]))}): the edge cuts an object that should "
                   f"stand in front of it; {remedy}.")
    if report.get("flicker_index", 0.0) > FLICKER_WARNING:
        out.append(f"The depth flickers: static parts move by {100 * report['flicker_index']:.1f} % of the depth "
                   f"range from frame to frame.")
    if report.get("hole_ratio", 0.0) > HOLE_WARNING_RATIO:
        out.append(f"{100 * report['hole_ratio']:.1f} % of the right view had to be filled in (disocclusions); "
                   f"a lower --divergence or --inpaint diffusion makes them less visible.")
    return out


def write_report(backend: Backend, job: Job, completions: list[SegmentCompletion]) -> dict:
    report = build_report(job, completions)
    window, plane = report.get("window") or {}, report.get("convergence_chosen")
    if window.get("on"):
        log.info("job %s: floating window %.2f %% / %.2f %% of the width on average (left / right edge), at most "
                 "%.2f %% / %.2f %%; border violations in %.1f %% of the sampled frames (%.1f %% without it)",
                 job.job_id, window["mean_pct"]["left"], window["mean_pct"]["right"], window["max_pct"]["left"],
                 window["max_pct"]["right"], 100 * report.get("border_violation_ratio_after_window", 0.0),
                 100 * report.get("border_violation_ratio", 0.0))
    if plane:
        log.info("job %s: automatic convergence %.3f on average (%.3f .. %.3f)", job.job_id, plane["mean"],
                 plane["min"], plane["max"])
    backend.objects.write_bytes(backend.output_bucket, keys.report_key(job.job_id),
                                json.dumps(report, indent=1).encode(), content_type="application/json")
    return report
