"""Local mode runs at most MAX_CONCURRENT_JOBS conversions at once; the rest wait their turn and start by
themselves, and the job page says how many are ahead."""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from stereo_spot import steps
from stereo_spot.config import Settings
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import stop_all_background
from stereo_spot.ui import local_queue, submission
from tests.media_fixtures import make_clip

APP = str(Path(__file__).resolve().parent.parent / "ui" / "streamlit_app.py")
LIMIT_SECONDS = 300  # guards against a hang only


def test_jobs_queue_behind_the_cap_and_start_by_themselves(home, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "1")
    config = Settings()
    clip = make_clip(tmp_path / "clip.mp4", seconds=0.5, fps=12, size=(64, 48))
    job_ids = []
    try:
        for index in range(3):
            job = steps.create_job(backend, ConversionSettings(), f"clip {index}", owner="local")
            steps.store_source(backend, job.job_id, clip)
            started = submission.start_pipeline(backend, config, job.job_id)
            assert started.how.startswith("Converting" if index == 0 else "Queued"), started.how
            job_ids.append(job.job_id)
        assert local_queue.place(backend, home, job_ids[0]) is None  # running
        assert [local_queue.place(backend, home, j) for j in job_ids[1:]] == [1, 2]

        at = AppTest.from_file(APP, default_timeout=60)
        at.run()
        at.switch_page("pages/job.py")
        at.query_params["job"] = job_ids[2]
        at.run()
        assert any("Waiting in the queue: 1 job ahead" in i.value for i in at.info), [i.value for i in at.info]

        most = 0
        deadline = time.monotonic() + LIMIT_SECONDS
        while time.monotonic() < deadline:
            most = max(most, local_queue.running(backend, home))
            if all(backend.jobs.get(j).status.is_terminal for j in job_ids):
                break
            time.sleep(0.2)
        assert [backend.jobs.get(j).status for j in job_ids] == [JobStatus.COMPLETED] * 3
        assert most == 1  # never two at once
    finally:
        stop_all_background(home)
