"""What a finished run shows in the engines' UIs: the job's comfort report as Markdown, a still of the final video,
and both on one HTML page.

Kubeflow renders a component's Markdown and HTML output artifacts as visualisations (concat's kfp component). Argo
shows a step's output artifacts from the artifact repository: concat writes the files to ``ARGO_OUTPUTS_DIR``, and
only the aws overlay declares them as outputs (manifests/overlays/aws/run-outputs.yaml), because a stock Argo
install has no repository to put them in and the executor fails a step whose output artifact has nowhere to go.

The still is taken from the final video in place: PyAV seeks in it through a presigned URL (HTTP range reads), so
concat does not download the film again. The outputs are a view of the job: one that cannot be made is logged and
left out, never a failed run.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

from stereo_spot import keys
from stereo_spot.models import Job
from stereo_spot.ports import Backend

log = logging.getLogger(__name__)

ARGO_OUTPUTS_DIR = "/tmp/stereo-spot-outputs"
REPORT_MARKDOWN = "report.md"
PREVIEW_STILL = "preview.png"
REPORT_HTML = "report.html"
# where in the final video the still is taken (seconds), the first that exists: past a fade-in, else the start
STILL_AT_SECONDS = (3.0, 0.0)
STILL_WIDTH = 960


def _percent(value) -> str:
    return "—" if value is None else f"{float(value):.2f} %"


def _ratio(value) -> str:
    return "—" if value is None else f"{float(value) * 100:.1f} %"


def report_markdown(job: Job, report: dict | None) -> str:
    """The comfort report's headline figures and warnings, as Markdown."""
    settings = job.settings
    lines = [f"# {job.title or job.job_id}", "",
             f"Job `{job.job_id}`: {settings.output_format.value}, status {job.status.value}.", ""]
    if report is None:
        return "\n".join([*lines, "No comfort report for this job.", ""])
    used = report.get("settings", {})
    rows = [("divergence", _percent(used.get("divergence"))),
            ("convergence", "—" if used.get("convergence") is None else f"{used['convergence']}"),
            ("nearest 1 % in front of the screen", _percent(report.get("max_crossed_pct"))),
            ("farthest 1 % behind the screen", _percent(report.get("max_uncrossed_pct"))),
            ("holes filled", _ratio(report.get("hole_ratio"))),
            ("flicker index", "—" if report.get("flicker_index") is None else f"{report['flicker_index']:.3f}"),
            ("frames touching an edge in front of the screen", _ratio(report.get("border_violation_ratio")))]
    lines += ["| comfort | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows), ""]
    warnings = report.get("warnings") or []
    lines += ["## Warnings", "", *(f"- {w}" for w in warnings)] if warnings else ["No comfort warnings."]
    return "\n".join([*lines, ""])


def _frame_at(url: str, seconds: float):
    """The first video frame at or after ``seconds`` (RGB array), or None. PyAV's libavformat reads http(s) with
    range requests: a seek in a film reads a few megabytes of it."""
    import av

    with av.open(url, timeout=60) as container:
        stream = container.streams.video[0]
        if seconds > 0:
            container.seek(int(seconds * av.time_base), any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None or frame.time >= seconds or seconds == 0:
                return frame.to_ndarray(format="rgb24")
    return None


def preview_still(backend: Backend, job_id: str, path: Path) -> bool:
    """Write a PNG still of the job's final video to ``path``; False when there is none to take."""
    import cv2

    final = keys.final_key(job_id)
    if not backend.objects.exists(backend.output_bucket, final):
        return False
    url = backend.objects.presign_download(backend.output_bucket, final, expires_seconds=600)
    for at in STILL_AT_SECONDS:
        rgb = _frame_at(url, at)
        if rgb is None:
            continue
        height, width = rgb.shape[:2]
        if width > STILL_WIDTH:
            rgb = cv2.resize(rgb, (STILL_WIDTH, max(2, round(height * STILL_WIDTH / width))),
                             interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if ok:
            path.write_bytes(png.tobytes())
            return True
    log.warning("no still of %s: the video has no frame to take", final)
    return False


def report_html(markdown_text: str, still: bytes | None) -> str:
    """One page for a UI that shows HTML: the still above the report (kept as preformatted Markdown)."""
    image = (f'<img alt="preview" style="max-width:100%" src="data:image/png;base64,'
             f'{base64.b64encode(still).decode()}">' if still else "<p>No preview still.</p>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>stereo-spot</title></head><body>{image}"
            f"<pre style=\"white-space:pre-wrap\">{html.escape(markdown_text)}</pre></body></html>\n")


def write_run_outputs(backend: Backend, job_id: str, folder: Path | str) -> dict[str, Path]:
    """Write the report (Markdown), the still (PNG, when the final video exists) and the HTML page into
    ``folder``; returns what was written, by file name. Nothing raised: the outputs are a view, not the work."""
    from stereo_spot.report import warnings_for

    folder = Path(folder)
    written: dict[str, Path] = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        job = backend.jobs.get(job_id)
        if job is None:
            return written
        report = None
        if backend.objects.exists(backend.output_bucket, keys.report_key(job_id)):
            import json

            report = json.loads(backend.objects.read_bytes(backend.output_bucket, keys.report_key(job_id)))
            report.setdefault("warnings", warnings_for(report))
        text = report_markdown(job, report)
        (folder / REPORT_MARKDOWN).write_text(text, encoding="utf-8")
        written[REPORT_MARKDOWN] = folder / REPORT_MARKDOWN
        still = folder / PREVIEW_STILL
        if preview_still(backend, job_id, still):
            written[PREVIEW_STILL] = still
        (folder / REPORT_HTML).write_text(report_html(text, still.read_bytes() if PREVIEW_STILL in written
                                                      else None), encoding="utf-8")
        written[REPORT_HTML] = folder / REPORT_HTML
    except Exception as exc:  # noqa: BLE001 - a view of the job must never fail the run that made it
        log.warning("the run outputs of job %s were not written: %s", job_id, exc)
    return written
