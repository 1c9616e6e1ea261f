"""Jobs: in progress, completed and failed, newest first, a page at a time through the store's cursors."""

from collections.abc import Callable

import streamlit as st

from stereo_spot.models import IN_PROGRESS_STATUSES, Job, JobStatus, Page
from stereo_spot.ports import Backend
from stereo_spot.ui import context, services

# How often the in-progress list redraws itself.
REFRESH_SECONDS = 5.0

backend: Backend = context.backend()
mine = context.identity().owner_filter  # None for admins: everyone's jobs
md = services.escape_markdown

st.title("Jobs")
top = st.columns([1, 1, 4], vertical_alignment="bottom")
per_page = int(top[0].number_input("Jobs per page", min_value=1, max_value=100, value=10, step=1,
                                   key="per_page"))
if top[1].button("Refresh", icon=":material/refresh:"):
    st.rerun()


def pager(name: str) -> services.Pager:
    key = f"pager-{name}-{per_page}"  # a new page size starts again from the newest
    if key not in st.session_state:
        st.session_state[key] = services.Pager.start()
    return st.session_state[key]


def paging_buttons(name: str, state: services.Pager, page: Page) -> None:
    cols = st.columns([1, 1, 6], vertical_alignment="center")
    if cols[0].button("Newer", key=f"newer-{name}", disabled=not state.has_newer, icon=":material/chevron_left:"):
        state.newer()
        st.rerun()
    if cols[1].button("Older", key=f"older-{name}", disabled=page.next_cursor is None,
                      icon=":material/chevron_right:", icon_position="right"):
        state.older(page.next_cursor)
        st.rerun()
    cols[2].caption(f"page {state.number}")


def link(job: Job) -> None:
    st.page_link("pages/job.py", label=md(job.title or job.job_id), query_params={"job": job.job_id},
                 icon=":material/movie:")


def section(name: str, heading: str, load: Callable[[str | None], Page],
            row: Callable[[Job], None], headers: list[str], widths: list[float]) -> None:
    st.subheader(heading)
    state = pager(name)
    with context.store_errors():
        page = load(state.cursor)
    if not page.items:
        st.caption("none" if not state.has_newer else "no more jobs")
    else:
        cols = st.columns(widths)
        for col, header in zip(cols, headers, strict=True):
            col.markdown(f"**{header}**")
        with context.store_errors():
            for job in page.items:
                row(job)
    if state.has_newer or page.next_cursor:
        paging_buttons(name, state, page)


IN_PROGRESS_WIDTHS = [3, 2, 2, 3, 1.5]


def in_progress_row(job: Job) -> None:
    progress = services.job_progress(job, backend.completions.query_by_job(job.job_id))
    cols = st.columns(IN_PROGRESS_WIDTHS, vertical_alignment="center")
    with cols[0]:
        link(job)
    cols[1].write(services.product_label(job))
    cols[2].write(progress.stage)
    cols[3].progress(progress.fraction, text=f"segments {progress.segments_text}")
    cols[4].write(services.format_age(job.created_at))


COMPLETED_WIDTHS = [3, 2, 1.5, 1.5, 1.5, 1.5]


def completed_row(job: Job) -> None:
    cols = st.columns(COMPLETED_WIDTHS, vertical_alignment="center")
    with cols[0]:
        link(job)
    cols[1].write(services.product_label(job))
    cols[2].write(f"{job.total_segments or '–'}")
    cols[3].write(services.format_duration(job.conversion_seconds))
    cols[4].write(services.speed_text(job))
    cols[5].write(services.format_age(job.completed_at or job.created_at))


FAILED_WIDTHS = [3, 2, 5, 1.5]


def failed_row(job: Job) -> None:
    cols = st.columns(FAILED_WIDTHS, vertical_alignment="center")
    with cols[0]:
        link(job)
    cols[1].write(services.product_label(job))
    cols[2].write(md(job.failure_reason or "unknown reason"))
    cols[3].write(services.format_age(job.updated_at))




@st.fragment(run_every=REFRESH_SECONDS)
def in_progress_section() -> None:
    """Redrawn by itself every few seconds, so running jobs move without a reload."""
    section("in-progress", "In progress",
            lambda cursor: services.merged_page(backend.jobs, IN_PROGRESS_STATUSES, per_page, cursor,
                                                 owner=mine),
            in_progress_row, ["Title", "Format", "Status", "Progress", "Age"], IN_PROGRESS_WIDTHS)


in_progress_section()
section("completed", "Completed",
        lambda cursor: backend.jobs.list_completed(limit=per_page, cursor=cursor, owner=mine),
        completed_row, ["Title", "Format", "Segments", "Conversion time", "Speed", "Finished"], COMPLETED_WIDTHS)
section("failed", "Failed",
        lambda cursor: backend.jobs.list_by_status(JobStatus.FAILED, limit=per_page, cursor=cursor,
                                                    owner=mine),
        failed_row, ["Title", "Format", "Reason", "Age"], FAILED_WIDTHS)
