"""One job: live progress and ETA, the failure reason, operator links; for a finished job the player, the
download, a still preview, the comfort report and delete."""

import pandas as pd
import streamlit as st

from stereo_spot import keys, steps
from stereo_spot.errors import UserError, one_line
from stereo_spot.models import Job, JobStatus, utcnow
from stereo_spot.naming import result_file_name
from stereo_spot.ports import Backend
from stereo_spot.ui import auth, context, services
from stereo_spot.ui.preview import job_preview
from stereo_spot.ui.report import ReportUnreadable, load_report
from stereo_spot.ui.routes import video_path
from stereo_spot.ui.submission import stop_run
from stereo_spot.ui.uploads import format_bytes

# How often the progress bar asks the store (a few small reads per tick).
PROGRESS_EVERY_SECONDS = 2.0

backend: Backend = context.backend()
user = context.identity()
md = services.escape_markdown

job_id = st.query_params.get("job", "")
if not job_id:
    st.title("Job")
    st.info("Choose a job on the Jobs page.")
    st.page_link("pages/jobs.py", label="Jobs", icon=":material/list:")
    st.stop()
try:
    keys.validate_job_id(job_id)
except keys.InvalidKey:
    st.title("Job")
    st.error(f"{md(repr(job_id))} is not a job id.")
    st.stop()

with context.store_errors():
    job = auth.visible_job(backend.jobs, job_id, user)  # someone else's job reads exactly like a missing one
if job is None:
    st.title("Job")
    st.error(f"There is no job {job_id}.")
    st.page_link("pages/jobs.py", label="Jobs", icon=":material/list:")
    st.stop()

# the browser tab and history name the film, not the page's generic "Job" or its id
st.set_page_config(page_title=f"{job.title or 'untitled'} · stereo-spot")
st.title(md(job.title or "untitled"))
details = [services.settings_summary(job), f"created {services.format_age(job.created_at)}"]
if job.source_file_size_bytes:
    details.append(format_bytes(job.source_file_size_bytes))
if user.admin and job.owner and job.owner != user.user:
    details.append(f"owner {md(job.owner)}")
st.caption(" · ".join(details) + f" · job {job.job_id}")

if notice := st.session_state.pop("job_notice", None):
    st.success(notice, icon=":material/check_circle:")

if job.status == JobStatus.DELETED:
    st.info("This job was deleted; its files are gone.", icon=":material/delete:")
    st.stop()


def operator_links(current: Job) -> None:
    if backend.links is None:
        return
    run, logs = backend.links.run_link(current.job_id), backend.links.logs_link(current.job_id)
    if run or logs:
        cols = st.columns(4)
        if run:
            cols[0].link_button("Pipeline run", run, icon=":material/account_tree:")
        if logs:
            cols[1].link_button("Logs", logs, icon=":material/article:")


def segment_timings_chart(completions) -> None:
    timed = [c for c in completions if c.convert_seconds]
    if not timed:
        return
    st.markdown("**Seconds per segment**")
    st.bar_chart(pd.DataFrame({"segment": [c.segment_index for c in timed],
                               "seconds": [c.convert_seconds for c in timed]}).set_index("segment"),
                 height=220, y_label="seconds", x_label="segment", sort=False)


def queue_note(current: Job) -> None:
    """Local runs wait their turn (MAX_CONCURRENT_JOBS): say how many jobs are ahead."""
    if current.status != JobStatus.CREATED or backend.name != "local" or current.uploaded_at is None:
        return
    from stereo_spot.ui.local_queue import place

    config = context.settings()
    position = place(backend, config.stereo_spot_home, current.job_id)
    if position is not None:
        ahead = position - 1
        st.info(f"Waiting in the queue: {ahead} job{'s' if ahead != 1 else ''} ahead of this one (at most "
                f"{config.max_concurrent_jobs} convert at once on this machine).", icon=":material/hourglass_top:")


@st.fragment(run_every=PROGRESS_EVERY_SECONDS if not job.status.is_terminal else None)
def live_progress() -> None:
    with context.store_errors():
        current = backend.jobs.get(job_id)
        completions = backend.completions.query_by_job(job_id) if current else []
    if current is None or (current.status != job.status and current.status.is_terminal):
        st.rerun()  # finished, failed or deleted since the page was drawn: draw the whole page again
    queue_note(current)
    progress = services.job_progress(current, completions)
    estimate = services.estimate_remaining(current, progress, context.recent_seconds_per_mb())
    eta = services.format_duration(estimate.remaining_seconds) if estimate.remaining_seconds is not None else "–"
    st.progress(progress.fraction, text=f"{progress.stage} · segments {progress.segments_text}")
    elapsed = (utcnow() - (current.uploaded_at or current.created_at)).total_seconds()
    cols = st.columns(3)
    cols[0].metric("Segments done", progress.segments_text)
    cols[1].metric("Running for", services.format_duration(elapsed))
    cols[2].metric("Time left", eta, help=estimate.basis or None)
    if estimate.basis:
        st.caption(f"Time left: {estimate.basis}.")
    segment_timings_chart(completions)


if not job.status.is_terminal:
    live_progress()
    operator_links(job)

if job.status == JobStatus.FAILED:
    st.error(f"The conversion failed: {md(job.failure_reason or 'no reason was recorded')}",
             icon=":material/error:")
    operator_links(job)
    if backend.name == "local":
        from stereo_spot.runner import log_path

        path = log_path(context.settings().stereo_spot_home, job.job_id)
        if path.is_file():
            with st.expander("Runner log (last lines)"):
                st.code("\n".join(path.read_text(errors="replace").splitlines()[-30:]) or "(empty)")


def render_report(current: Job) -> None:
    try:
        with context.store_errors():
            report = load_report(backend, current.job_id)
    except ReportUnreadable as exc:
        st.warning(str(exc))
        return
    if report is None or report.empty:
        st.caption("This job has no comfort report.")
        return
    for warning in report.warnings:
        st.warning(md(warning), icon=":material/visibility:")
    if report.metrics:
        cols = st.columns(min(len(report.metrics), 6))
        for col, (label, value) in zip(cols, report.metrics.items(), strict=False):
            col.metric(label.capitalize(), f"{value:.3g}")
    if report.percentiles:
        st.markdown("**Disparity distribution** (percentile → % of the picture width; negative = in front of "
                    "the screen)")
        st.altair_chart(report.percentile_chart(), width="stretch")
    if report.histogram:
        centres, counts = report.histogram
        st.markdown("**Disparity histogram** (% of width)")
        st.bar_chart(pd.DataFrame({"disparity": [round(c, 3) for c in centres], "share": counts})
                     .set_index("disparity"), height=200, sort=False)
    if report.segment_timings:
        st.markdown("**Per-segment timings** (seconds)")
        st.bar_chart(pd.DataFrame.from_dict(report.segment_timings, orient="index").sort_index(), height=220,
                     stack=False, sort=False)


if job.status == JobStatus.COMPLETED:
    file_name = result_file_name(job.title, job.settings)
    base = context.origin()
    speed = services.speed_text(job)
    st.progress(1.0, text=f"completed in {services.format_duration(job.conversion_seconds)}"
                + (f" · {speed}" if speed != "–" else ""))
    delivered = services.delivered_outside_store(job)
    if delivered is not None:  # the store holds no result to play, download or preview: say where it is
        st.info(md(f"Converted on the command line: written to {delivered}"), icon=":material/folder:")
        report_tab, timing_tab = st.tabs(["Comfort report", "Segments"])
    elif job.settings.depth_output:  # 16-bit FFV1 that no browser plays: a download, to edit and upload again
        st.link_button(f"Download {md(file_name)}", base + video_path(job.job_id, download=True),
                       icon=":material/download:", type="primary")
        st.caption(services.DEPTH_OUTPUT_HELP)
        report_tab = None
        (timing_tab,) = st.tabs(["Segments"])
    else:
        # The route streams the local file (with Range requests, for seeking) or redirects to a freshly
        # presigned S3 URL, so these links work however long the page stays open.
        st.video(base + video_path(job.job_id))
        st.link_button(f"Download {md(file_name)}", base + video_path(job.job_id, download=True),
                       icon=":material/download:", type="primary")
        preview_tab, report_tab, timing_tab = st.tabs(["Still preview", "Comfort report", "Segments"])
        with preview_tab:
            try:
                with context.store_errors():
                    frame = job_preview(backend, job)
                st.image(frame, caption=f"A frame from the middle, {job.output_format.label.lower()} "
                                        f"({frame.shape[1]}×{frame.shape[0]} shown)")
            except (UserError, ValueError) as exc:
                st.warning(f"No preview: {one_line(exc)}")
            except Exception as exc:  # noqa: BLE001 - a broken preview must not hide the player and download
                st.warning(f"No preview: the video could not be decoded ({one_line(exc)})")
    operator_links(job)
    if report_tab is not None:
        with report_tab:
            render_report(job)
    with timing_tab:
        with context.store_errors():
            segment_timings_chart(backend.completions.query_by_job(job.job_id))

st.divider()
if not st.session_state.get(f"confirm-delete-{job_id}"):
    if st.button("Delete this job", icon=":material/delete:"):
        st.session_state[f"confirm-delete-{job_id}"] = True
        st.rerun()
else:
    st.warning("Delete this job and all its files (source, segments, result)? This cannot be undone.")
    yes, no, _ = st.columns([1, 1, 4])
    if yes.button("Yes, delete", type="primary", icon=":material/delete_forever:"):
        try:
            with context.store_errors():
                warning = None
                if not job.status.is_terminal:  # stop the work first: nothing more is computed or written
                    warning = stop_run(backend, context.settings(), job_id)
                steps.delete_job(backend, job_id)
            if warning:
                st.session_state["job_notice"] = f"Deleted; {warning}."
        except UserError as exc:
            st.error(one_line(exc))
            st.stop()
        st.session_state.pop(f"confirm-delete-{job_id}", None)
        st.rerun()
    if no.button("Cancel"):
        st.session_state.pop(f"confirm-delete-{job_id}", None)
        st.rerun()
