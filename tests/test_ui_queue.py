"""Local mode runs at most MAX_CONCURRENT_JOBS conversions at once; the rest wait their turn and start by
themselves, and the job page says how many are ahead.

Deterministic: the test holds the first job's chunk lease (a live owner, this process), so the first runner
waits at chunking for as long as the test looks at the queue, whatever the machine's speed; it lets go once the
page was read. "Never two at once" is read from the jobs' own records afterwards (each job started chunking after
the previous one completed), not sampled while they run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from stereo_spot import leases, steps
from stereo_spot.config import Settings
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import stop_all_background
from stereo_spot.ui import local_queue, submission
from tests.media_fixtures import make_clip

APP = str(Path(__file__).resolve().parent.parent / "ui" / "streamlit_app.py")
LIMIT_SECONDS = 300  # guards against a hang only: the test waits on the jobs' completion, not on a clock


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + LIMIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {LIMIT_SECONDS} s"
        time.sleep(0.1)


@pytest.mark.slow  # over 10 s
def test_jobs_queue_behind_the_cap_and_start_by_themselves(home, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "1")
    config = Settings()
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.5, fps=12, size=(64, 48))
    job_ids = [steps.create_job(backend, ConversionSettings(), f"clip {index}", owner="local").job_id
               for index in range(3)]
    gate, owner = leases.chunk_lease(job_ids[0]), leases.this_owner()
    assert leases.try_take(backend, gate, owner)
    try:
        with leases.holding(backend, gate, owner):  # the first runner waits here until the page was read
            for index, job_id in enumerate(job_ids):
                steps.store_source(backend, job_id, clip)
                started = submission.start_pipeline(backend, config, job_id)
                assert started.how.startswith("Converting" if index == 0 else "Queued"), started.how
            _wait_until(lambda: local_queue.runner_alive(home, job_ids[0]), "the first runner's start")
            assert local_queue.place(backend, home, job_ids[0]) is None  # running
            assert [local_queue.place(backend, home, j) for j in job_ids[1:]] == [1, 2]

            at = AppTest.from_file(APP, default_timeout=60)
            at.run()
            at.switch_page("pages/job.py")
            at.query_params["job"] = job_ids[2]
            at.run()
            assert any("Waiting in the queue: 1 job ahead" in i.value for i in at.info), [i.value for i in at.info]
            assert backend.jobs.get(job_ids[1]).chunking_started_at is None  # still waiting its turn

        _wait_until(lambda: all(backend.jobs.get(j).status.is_terminal for j in job_ids), "every job's end")
        jobs = [backend.jobs.get(j) for j in job_ids]
        assert [job.status for job in jobs] == [JobStatus.COMPLETED] * 3
        for before, after in zip(jobs, jobs[1:], strict=False):  # never two at once, in the order they came
            assert after.chunking_started_at >= before.completed_at, (before, after)
    finally:
        stop_all_background(home)
