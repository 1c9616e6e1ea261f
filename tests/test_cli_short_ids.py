"""Job ids typed short, as git takes abbreviated hashes: every command that takes a job id accepts a unique
prefix of four or more characters, and an ambiguous or unknown one is named in one line.

What each test is there to catch: a prefix matched with SQL wildcards (``_`` or ``%`` typed by a person), a
prefix that matches several jobs silently taking the first, a delete that removes some jobs before finding that
a later argument is bad, and the DynamoDB store answering differently from SQLite.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stereo_spot import steps
from stereo_spot.adapters.aws import aws_backend
from stereo_spot.cli.main import app
from stereo_spot.errors import JobNotFound, UserError
from stereo_spot.models import ConversionSettings, Job, JobStatus
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401

IDS = ("a0f71c2e-1111-4aaa-8aaa-000000000001", "a0f71c2e-2222-4bbb-8bbb-000000000002",
       "b3c4d5e6-3333-4ccc-8ccc-000000000003")


def _seed(backend) -> None:
    for job_id in IDS:
        backend.jobs.put(Job(job_id=job_id, title=f"clip {job_id[:4]}", settings=ConversionSettings()))


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request, tmp_path):
    if request.param == "sqlite":
        from stereo_spot.adapters.local import local_backend

        backend = local_backend(tmp_path / "home")
    else:
        backend = aws_backend(request.getfixturevalue("aws_settings"))
    _seed(backend)
    return backend


def test_a_unique_prefix_names_its_job(store):
    assert steps.resolve_job_id(store, "b3c4") == IDS[2]
    assert steps.resolve_job_id(store, "A0F71C2E-1") == IDS[0]  # typed in capitals, across the first dash
    assert steps.resolve_job_id(store, IDS[1]) == IDS[1]


def test_an_ambiguous_prefix_lists_the_matches(store):
    with pytest.raises(UserError) as caught:
        steps.resolve_job_id(store, "a0f71c2e")
    message = str(caught.value)
    assert "matches 2 jobs" in message and IDS[0] in message and IDS[1] in message


@pytest.mark.parametrize("typed", ["ffff", "a0f", "a0_7", "a0%%", "../x"])
def test_an_unknown_short_or_odd_prefix_names_no_job(store, typed):
    with pytest.raises(JobNotFound):
        steps.resolve_job_id(store, typed)


def test_delete_takes_an_eight_character_prefix(home, backend):
    _seed(backend)
    result = CliRunner().invoke(app, ["delete", "b3c4d5e6"])
    assert result.exit_code == 0, result.output
    assert f"deleted {IDS[2]}" in result.output
    assert backend.jobs.get(IDS[2]).status == JobStatus.DELETED


def test_delete_checks_every_id_before_deleting_any(home, backend):
    _seed(backend)
    result = CliRunner().invoke(app, ["delete", "b3c4", "a0f71c2e"])
    assert result.exit_code == 1 and "matches 2 jobs" in result.output and "Traceback" not in result.output
    assert backend.jobs.get(IDS[2]).status != JobStatus.DELETED


def test_resume_takes_a_prefix(home, backend):
    _seed(backend)
    backend.jobs.update(IDS[2], status=JobStatus.DELETED)
    result = CliRunner().invoke(app, ["resume", "b3c4"])  # found by its prefix, then refused for its state
    assert result.exit_code == 1 and f"job {IDS[2]} was deleted" in result.output
