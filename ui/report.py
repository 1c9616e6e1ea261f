"""Reading a job's comfort report (``jobs/{job_id}/report.json``) into what the page charts.

The conversion writes the report (``stereo_spot.report``: its docstring lists the fields). The page needs a few
shapes out of it, found by name so that a new field does not break the page: disparity percentiles (a mapping like
``{"p5": -0.4, "p50": 0.9}`` or a list of ``{"percentile": 5, "value": -0.4}``), an optional histogram
(``{"edges"|"bins": [...], "counts": [...]}``), per-segment timings (a list of records with a segment index and
``*seconds`` fields), a few headline numbers (hole ratio, flicker index, border violations, the largest parallax
in front of and behind the screen) and warnings. The report's detail sections (limits, settings, sampling, the
border and flicker details, totals) are for people reading the JSON, not headline figures.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from stereo_spot import keys
from stereo_spot.ports import Backend, NotFound, StoreError

_PERCENTILE_KEY = re.compile(r"^p?(\d+(?:\.\d+)?)$", re.IGNORECASE)
_INDEX_FIELDS = ("segment_index", "index", "segment")
_MAX_METRICS = 6
_IGNORED = {"version", "schema_version", "schema", "job_id", "unit", "limits", "settings", "sampling", "border",
            "flicker", "timings", "extremes", "crossed_share", "window", "convergence_chosen"}
# Headline figures of ``stereo_spot.report`` whose field names say less than a label can.
_LABELS = {"max_crossed_pct": "max in front (% of width)", "max_uncrossed_pct": "max behind (% of width)",
           "border_violation_ratio": "border violations (share of frames)",
           "border_violation_ratio_after_window": "border violations after the floating window"}


@dataclass
class ComfortReport:
    percentiles: dict[str, dict[float, float]] = field(default_factory=dict)  # series -> percentile -> % width
    histogram: tuple[list[float], list[float]] | None = None  # (bin centres, counts)
    segment_timings: dict[int, dict[str, float]] = field(default_factory=dict)  # index -> {field: seconds}
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def percentile_chart(self):
        """The percentiles as grouped bars, one colour per series, in percentile order (p1 … p90, p99) whatever
        order the series name them in. The order is given to the chart explicitly: a chart of the table alone
        orders the axis by first appearance in its long form, so a percentile only a later series has (p90)
        lands after p99."""
        import altair as alt
        import pandas as pd

        rows = [(f"p{p:g}", p, series, value) for series, points in self.percentiles.items()
                for p, value in points.items()]
        data = pd.DataFrame(rows, columns=["percentile", "rank", "series", "% of width"])
        order = [f"p{p:g}" for p in sorted(set(data["rank"]))]
        return alt.Chart(data, height=240).mark_bar().encode(
            x=alt.X("percentile:N", sort=order, title="percentile", axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("series:N"),
            y=alt.Y("% of width:Q"),
            color=alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["series", "percentile", "% of width"])

    @property
    def empty(self) -> bool:
        return not (self.percentiles or self.histogram or self.segment_timings or self.metrics or self.warnings)


class ReportUnreadable(ValueError):
    pass


def load_report(backend: Backend, job_id: str) -> ComfortReport | None:
    """None where the job has no report (older jobs, or a conversion that does not write one)."""
    try:
        raw = backend.objects.read_bytes(backend.output_bucket, keys.report_key(job_id))
    except NotFound:
        return None
    except StoreError:
        raise
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReportUnreadable(f"the comfort report of job {job_id} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ReportUnreadable(f"the comfort report of job {job_id} is not a JSON object")
    return parse_report(data)


def parse_report(data: dict[str, Any]) -> ComfortReport:
    report = ComfortReport()
    _walk(data, "", report, depth=0)
    return report


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _as_percentiles(value: Any) -> dict[float, float] | None:
    points: dict[float, float] = {}
    if isinstance(value, dict):
        for name, number in value.items():
            match = _PERCENTILE_KEY.match(str(name))
            if match and _number(number) is not None:
                points[float(match[1])] = _number(number)  # type: ignore[assignment]
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and _number(item.get("percentile")) is not None \
                    and _number(item.get("value")) is not None:
                points[float(item["percentile"])] = float(item["value"])
    return dict(sorted(points.items())) or None


def _as_histogram(value: Any) -> tuple[list[float], list[float]] | None:
    if not isinstance(value, dict):
        return None
    counts = value.get("counts")
    edges = value.get("edges", value.get("bins"))
    if not isinstance(counts, list) or not isinstance(edges, list) or not counts:
        return None
    if len(edges) == len(counts) + 1:
        centres = [(float(a) + float(b)) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    elif len(edges) == len(counts):
        centres = [float(e) for e in edges]
    else:
        return None
    return centres, [float(c) for c in counts]


def _as_segment_timings(value: Any) -> dict[int, dict[str, float]] | None:
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        return None
    timings: dict[int, dict[str, float]] = {}
    for position, item in enumerate(value):
        index = next((int(item[f]) for f in _INDEX_FIELDS if _number(item.get(f)) is not None), position)
        numbers = {name: float(v) for name, v in item.items()
                   if "second" in name and _number(v) is not None}
        if numbers:
            timings[index] = numbers
    return timings or None


def _label(path: str) -> str:
    return path.replace("_", " ").strip() or "value"


def _walk(data: dict[str, Any], prefix: str, report: ComfortReport, depth: int) -> None:
    for name, value in data.items():
        lowered = name.lower()
        if lowered in _IGNORED:
            continue
        path = f"{prefix} {name}".strip()
        if "warning" in lowered:
            items = value if isinstance(value, list) else [value]
            report.warnings += [str(item) for item in items if item]
            continue
        if "percentile" in lowered or (isinstance(value, dict) and value and
                                       all(_PERCENTILE_KEY.match(str(k)) for k in value)):
            points = _as_percentiles(value)
            if points:
                report.percentiles[_label(path.replace("percentiles", "").replace("percentile", ""))] = points
                continue
        if "histogram" in lowered and (hist := _as_histogram(value)):
            report.histogram = hist
            continue
        if "segment" in lowered and (timings := _as_segment_timings(value)):
            report.segment_timings = timings
            continue
        number = _number(value)
        if number is not None:
            if len(report.metrics) < _MAX_METRICS:
                report.metrics[_LABELS.get(name) if depth == 0 and name in _LABELS else _label(path)] = number
            continue
        if isinstance(value, dict) and depth < 2:
            _walk(value, path, report, depth + 1)
