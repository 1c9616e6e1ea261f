"""The app on the AWS backend (a real moto server): the upload stores the source in S3 and leaves the start to
the S3 event (or a configured engine), and the video route hands out freshly presigned URLs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from streamlit.testing.v1 import AppTest

from stereo_spot import keys, steps
from stereo_spot.adapters.aws import aws_backend
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.ui.auth import local_identity
from stereo_spot.ui.backend import staging_area
from stereo_spot.ui.routes import PRESIGN_SECONDS, _video_response
from tests.media_fixtures import make_clip
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401 - fixtures

APP = str(Path(__file__).resolve().parent.parent / "ui" / "streamlit_app.py")
_FIELDS = ("storage_adapter", "aws_region", "aws_endpoint_url", "input_bucket_name", "output_bucket_name",
           "jobs_table_name", "segment_completions_table_name", "reassembly_triggered_table_name",
           "event_dedup_table_name", "chunking_queue_url")


@pytest.fixture
def aws_env(aws_settings, monkeypatch, tmp_path):  # noqa: F811
    for name in _FIELDS:
        monkeypatch.setenv(name.upper(), str(getattr(aws_settings, name)))
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))  # the staging area for uploads
    monkeypatch.delenv("UI_SUBMIT_ENGINE", raising=False)
    return aws_settings


def _upload(at: AppTest, clip: Path) -> None:
    token = at.session_state["upload_token"]
    with open(clip, "rb") as source:
        staging_area().receive(token, clip.name, iter(lambda: source.read(8192), b""))
    at.run()
    assert not at.exception, at.exception


def test_upload_on_aws_stores_the_source_and_waits_for_the_event(aws_env, tmp_path):
    clip = make_clip(tmp_path / "street.mp4", seconds=1, fps=12, size=(160, 96))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    _upload(at, clip)
    next(b for b in at.button if b.label == "Convert to 3D").click().run()
    assert not at.exception, at.exception
    job_id = at.query_params["job"]
    job_id = job_id[0] if isinstance(job_id, list) else job_id
    backend = aws_backend(aws_env)
    job = backend.jobs.get(job_id)
    assert job.status == JobStatus.CREATED and job.title == "street"
    assert backend.objects.head(backend.input_bucket, keys.input_key(job_id)).size == clip.stat().st_size
    assert any("the storage event starts the conversion" in s.value for s in at.success)
    assert len(at.get("progress")) == 1


def test_direct_submission_failure_is_recorded_on_the_job(aws_env, tmp_path, monkeypatch):
    """UI_SUBMIT_ENGINE=argo with an Argo server that does not answer: the page says so and the job is marked
    failed with that reason (its source is stored, so it can be submitted again)."""
    monkeypatch.setenv("UI_SUBMIT_ENGINE", "argo")
    monkeypatch.setenv("ARGO_SERVER_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    clip = make_clip(tmp_path / "street.mp4", seconds=1, fps=12, size=(160, 96))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    _upload(at, clip)
    next(b for b in at.button if b.label == "Convert to 3D").click().run()
    assert not at.exception, at.exception
    assert any("cannot reach the Argo server at http://127.0.0.1:9" in e.value.replace("\\", "") for e in at.error)
    backend = aws_backend(aws_env)
    [failed] = backend.jobs.list_by_status(JobStatus.FAILED).items
    assert "cannot reach the Argo server" in failed.failure_reason
    assert backend.jobs.list_in_progress() == []
    assert [link.value for link in at.page_link if link.value == "Open the job"]


def test_video_route_redirects_to_a_fresh_presigned_url(aws_env, tmp_path):
    backend = aws_backend(aws_env)
    job = steps.create_job(backend, ConversionSettings(), "Night drive")
    final = make_clip(tmp_path / "final.mp4", seconds=1, fps=12, size=(320, 96))
    backend.objects.upload_file(backend.output_bucket, keys.final_key(job.job_id), final)
    owner = local_identity()  # UI_AUTH=none: the one local user, who sees every job
    assert _video_response(job.job_id, False, owner).status_code == 404  # not completed yet
    backend.jobs.update(job.job_id, status=JobStatus.COMPLETED, completed_at=job.created_at)

    answer = _video_response(job.job_id, True, owner)
    assert answer.status_code == 307
    location = answer.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert int(query["X-Amz-Expires"][0]) == PRESIGN_SECONDS
    assert "Night-drive-3d_LRF_Full_SBS.mp4" in query["response-content-disposition"][0]
    fetched = requests.get(location, timeout=30)
    assert fetched.status_code == 200 and fetched.content == final.read_bytes()
