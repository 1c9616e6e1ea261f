"""The DynamoDB stores against a moto server over HTTP: every operation, pagination over 1,000+ jobs, the
reassembly lock under concurrent concat attempts, event dedup and readable errors."""

from __future__ import annotations

import pickle
import threading
from datetime import timedelta

import pytest

from stereo_spot.adapters.aws import AwsClients, AwsConfig, DynamoJobStore, aws_backend
from stereo_spot.adapters.aws.dynamodb import serialize_item, timestamp
from stereo_spot.keys import new_job_id
from stereo_spot.models import ConversionSettings, Job, JobStatus, OutputFormat, SegmentCompletion, utcnow
from stereo_spot.ports import ConflictError, NotFound, StoreError
from tests.moto_server import aws_settings, moto_endpoint  # noqa: F401


@pytest.fixture
def backend(aws_settings):  # noqa: F811
    return aws_backend(aws_settings)


def test_clients_speak_http_to_the_local_moto_server(backend, moto_endpoint):  # noqa: F811
    import requests

    assert moto_endpoint.startswith("http://127.0.0.1:")
    sent: list[str] = []
    for service in ("dynamodb", "s3", "sqs"):
        client = backend.jobs.clients.client(service)
        assert client.meta.endpoint_url == moto_endpoint
        client.meta.events.register("before-send", lambda request, **_: sent.append(request.url))
    job = Job(job_id=new_job_id())
    backend.jobs.put(job)
    backend.objects.write_bytes(backend.input_bucket, "probe/hello.txt", b"hello over http")
    assert backend.jobs.get(job.job_id) == job
    assert sent and all(url.startswith(moto_endpoint) for url in sent)
    # The data lives behind the server's HTTP endpoint: anonymous HTTP is refused, a signed URL is served.
    plain = f"{moto_endpoint}/{backend.input_bucket}/probe/hello.txt"
    assert requests.get(plain, timeout=10).status_code == 403
    signed = backend.objects.presign_download(backend.input_bucket, "probe/hello.txt")
    assert signed.startswith(plain + "?")
    answer = requests.get(signed, timeout=10)
    assert answer.status_code == 200 and answer.content == b"hello over http"


def test_job_round_trip_keeps_every_field(backend):
    settings = ConversionSettings(output_format=OutputFormat.ANAGLYPH, divergence=3.25, convergence=0.1,
                                  segment_seconds=2.5, start=1.5, duration=None, depth_weights="s3://w/depth")
    job = Job(job_id=new_job_id(), title="Ferien am Meer ☀", settings=settings, source_file_size_bytes=12_345_678_901,
              source_rotation=90, source_duration_seconds=12.04)
    backend.jobs.put(job)
    assert backend.jobs.get(job.job_id) == job
    assert backend.jobs.get(new_job_id()) is None


def test_put_if_absent_and_conditional_update(backend):
    job = Job(job_id=new_job_id(), title="a")
    backend.jobs.put(job, if_absent=True)
    with pytest.raises(ConflictError, match="exists already"):
        backend.jobs.put(job, if_absent=True)

    updated = backend.jobs.update(job.job_id, expected_status=JobStatus.CREATED,
                                  status=JobStatus.CHUNKING_IN_PROGRESS, chunking_started_at=utcnow())
    assert updated.status == JobStatus.CHUNKING_IN_PROGRESS and updated.chunking_started_at is not None
    assert updated.updated_at > job.updated_at
    assert backend.jobs.get(job.job_id) == updated

    with pytest.raises(ConflictError, match="chunking_in_progress, expected created"):
        backend.jobs.update(job.job_id, expected_status=JobStatus.CREATED, status=JobStatus.FAILED)
    both = (JobStatus.CREATED, JobStatus.CHUNKING_IN_PROGRESS)
    done = backend.jobs.update(job.job_id, expected_status=both, status=JobStatus.CHUNKING_COMPLETE,
                               total_segments=7)
    assert done.total_segments == 7

    # None removes the attribute (completed_at is an index key: it must be absent, not NULL)
    backend.jobs.update(job.job_id, completed_at=utcnow(), failure_reason="x")
    cleared = backend.jobs.update(job.job_id, completed_at=None, failure_reason=None)
    assert cleared.completed_at is None and cleared.failure_reason is None

    with pytest.raises(NotFound, match="does not exist"):
        backend.jobs.update(new_job_id(), status=JobStatus.FAILED)
    with pytest.raises(ValueError, match="cannot update job field 'nonsense'"):
        backend.jobs.update(job.job_id, nonsense=1)
    with pytest.raises(ValueError):
        backend.jobs.update(job.job_id, status="no-such-status")
    with pytest.raises(ValueError):
        backend.jobs.update(job.job_id, total_segments="many")


def test_update_accepts_settings_and_datetimes(backend):
    job = Job(job_id=new_job_id())
    backend.jobs.put(job)
    new_settings = ConversionSettings(output_format=OutputFormat.HTB, divergence=1.0)
    updated = backend.jobs.update(job.job_id, settings=new_settings, uploaded_at=utcnow())
    assert updated.settings == new_settings
    assert backend.jobs.get(job.job_id).settings.output_format == OutputFormat.HTB


def test_timestamps_sort_as_strings():
    base = utcnow().replace(microsecond=0)
    later = base + timedelta(microseconds=500_000)
    assert timestamp(base) < timestamp(later)  # "...:00.000000Z" < "...:00.500000Z"
    assert len(timestamp(base)) == len(timestamp(later))


def _seed_completed(settings, count: int) -> list[Job]:
    """Write jobs straight through batch_writer: seeding 1,000+ records one request each would be slow."""
    import boto3

    now = utcnow()
    jobs = [Job(job_id=new_job_id(), title=f"job {i}", status=JobStatus.COMPLETED,
                completed_at=now - timedelta(seconds=count - i)) for i in range(count)]
    table = boto3.resource("dynamodb", endpoint_url=settings.aws_endpoint_url,
                           region_name=settings.aws_region).Table(settings.jobs_table_name)
    from boto3.dynamodb.types import TypeDeserializer

    plain = TypeDeserializer()
    with table.batch_writer() as batch:
        for job in jobs:
            item = serialize_item(job.model_dump(mode="python"))
            batch.put_item(Item={k: plain.deserialize(v) for k, v in item.items()})
    return jobs


@pytest.mark.slow  # over 10 s
def test_list_completed_pages_over_1200_jobs_newest_first(backend, aws_settings):  # noqa: F811
    jobs = _seed_completed(aws_settings, 1203)
    # Jobs in other statuses stay out of the completed listing.
    backend.jobs.put(Job(job_id=new_job_id(), status=JobStatus.FAILED, completed_at=utcnow()))
    backend.jobs.put(Job(job_id=new_job_id(), status=JobStatus.CREATED))

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = backend.jobs.list_completed(limit=100, cursor=cursor)
        pages += 1
        seen.extend(job.job_id for job in page.items)
        assert len(page.items) == (100 if page.next_cursor else 3)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 13
    assert seen == [job.job_id for job in reversed(jobs)]  # newest completed_at first, each exactly once

    exact = backend.jobs.list_completed(limit=1203)
    assert len(exact.items) == 1203 and exact.next_cursor is None  # no empty trailing page


def test_cursor_is_opaque_and_checked(backend):
    with pytest.raises(ValueError, match="invalid page cursor"):
        backend.jobs.list_completed(cursor="not-a-cursor!")
    with pytest.raises(ValueError, match="invalid page cursor"):
        backend.jobs.list_completed(cursor="eyJhIjogMX0=")  # base64 of {"a": 1}: not a key of this listing


def test_list_in_progress_and_by_status_without_a_scan(backend):
    now = utcnow()
    made = {}
    for i, status in enumerate([JobStatus.CREATED, JobStatus.CHUNKING_IN_PROGRESS, JobStatus.CHUNKING_COMPLETE,
                                JobStatus.REASSEMBLING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DELETED,
                                JobStatus.CREATED]):
        job = Job(job_id=new_job_id(), status=status, created_at=now - timedelta(minutes=10 - i),
                  completed_at=now if status == JobStatus.COMPLETED else None)
        backend.jobs.put(job)
        made[job.job_id] = job
    in_progress = backend.jobs.list_in_progress()
    expected = sorted((j for j in made.values() if not j.status.is_terminal), key=lambda j: j.created_at,
                      reverse=True)
    assert [j.job_id for j in in_progress] == [j.job_id for j in expected]
    assert len(backend.jobs.list_in_progress(limit=2)) == 2
    assert [j.job_id for j in backend.jobs.list_in_progress(limit=2)] == [j.job_id for j in expected[:2]]

    created = backend.jobs.list_by_status(JobStatus.CREATED, limit=1)
    assert len(created.items) == 1 and created.next_cursor
    rest = backend.jobs.list_by_status(JobStatus.CREATED, limit=1, cursor=created.next_cursor)
    assert len(rest.items) == 1 and rest.next_cursor is None
    assert created.items[0].created_at > rest.items[0].created_at
    assert [j.status for j in backend.jobs.list_by_status(JobStatus.FAILED).items] == [JobStatus.FAILED]


def test_segment_completions_ordered_overwritten_and_deleted(backend):
    job_id, other = new_job_id(), new_job_id()
    for index in (11, 2, 0, 1, 10):  # numeric sort key: 2 before 10
        backend.completions.put(SegmentCompletion(job_id=job_id, segment_index=index, total_segments=12,
                                                  output_key=f"jobs/{job_id}/segments/{index}.mp4", frames=24,
                                                  duration_seconds=1.0, convert_seconds=0.5))
    backend.completions.put(SegmentCompletion(job_id=other, segment_index=0, total_segments=1, output_key="k"))
    backend.completions.put(SegmentCompletion(job_id=job_id, segment_index=2, total_segments=12,
                                              output_key=f"jobs/{job_id}/segments/2.mp4", frames=25))
    found = backend.completions.query_by_job(job_id)
    assert [c.segment_index for c in found] == [0, 1, 2, 10, 11]
    assert found[2].frames == 25 and found[0].convert_seconds == 0.5
    assert backend.completions.get(job_id, 2) == found[2]
    assert backend.completions.get(job_id, 3) is None and backend.completions.get(new_job_id(), 0) is None
    backend.completions.delete_job(job_id)
    assert backend.completions.query_by_job(job_id) == []
    assert len(backend.completions.query_by_job(other)) == 1


def test_segment_completions_page_past_one_query(backend):
    job_id = new_job_id()
    for index in range(60):
        backend.completions.put(SegmentCompletion(job_id=job_id, segment_index=index, total_segments=60,
                                                  output_key="k" * 2000))  # ~120 kB: several query pages
    assert [c.segment_index for c in backend.completions.query_by_job(job_id)] == list(range(60))
    backend.completions.delete_job(job_id)  # more than one 25-item batch
    assert backend.completions.query_by_job(job_id) == []


def test_reassembly_lock_has_exactly_one_winner_among_five(backend):
    job_id = new_job_id()
    barrier = threading.Barrier(5)
    results: dict[str, bool] = {}

    def attempt(owner: str) -> None:
        barrier.wait()
        results[owner] = backend.reassembly.try_acquire(job_id, owner)

    threads = [threading.Thread(target=attempt, args=(f"concat-{i}",)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, won in results.items() if won]
    assert len(results) == 5 and len(winners) == 1
    winner = winners[0]
    assert backend.reassembly.try_acquire(job_id, winner)  # a retried concat pod keeps its claim
    loser = next(o for o in results if o != winner)
    backend.reassembly.release(job_id, loser)  # not the holder: no effect
    assert not backend.reassembly.try_acquire(job_id, loser)
    backend.reassembly.release(job_id, winner)
    assert backend.reassembly.try_acquire(job_id, loser)


def test_reassembly_lock_expires(backend):
    job_id = new_job_id()
    assert backend.reassembly.try_acquire(job_id, "old", ttl_seconds=-5)  # already past its expiry
    assert backend.reassembly.try_acquire(job_id, "new")
    assert not backend.reassembly.try_acquire(job_id, "old")


def test_event_dedup_claims_once(backend):
    job_id = new_job_id()
    assert backend.dedup.claim("s3://b/input/x/source.mp4@etag#seq", job_id)
    assert not backend.dedup.claim("s3://b/input/x/source.mp4@etag#seq", job_id)
    assert backend.dedup.claim("s3://b/input/x/source.mp4@etag#seq2", job_id)
    assert backend.dedup.claim("expired", job_id, ttl_seconds=-1)
    assert backend.dedup.claim("expired", job_id)  # an expired claim no longer counts
    backend.dedup.forget("s3://b/input/x/source.mp4@etag#seq")
    assert backend.dedup.claim("s3://b/input/x/source.mp4@etag#seq", job_id)


def test_backend_pickles_without_its_connections(backend):
    backend.jobs.get(new_job_id())  # creates a client
    clone = pickle.loads(pickle.dumps(backend.jobs))
    assert clone.clients._clients == {}
    job = Job(job_id=new_job_id())
    clone.put(job)
    assert backend.jobs.get(job.job_id) == job
    rebuilt = pickle.loads(pickle.dumps(backend.factory))()  # what the runner's spawned processes do
    assert rebuilt.jobs.get(job.job_id) == job and rebuilt.name == "aws"


def test_unreachable_endpoint_is_a_readable_store_error(moto_endpoint):  # noqa: F811 - dummy credentials
    store = DynamoJobStore(AwsClients(AwsConfig(endpoint_url="http://127.0.0.1:9")), "jobs")
    with pytest.raises(StoreError, match=r"cannot reach DynamoDB at http://127\.0\.0\.1:9"):
        store.get(new_job_id())


def test_missing_table_says_to_bootstrap(moto_endpoint):  # noqa: F811
    store = DynamoJobStore(AwsClients(AwsConfig(endpoint_url=moto_endpoint)), "no-such-table")
    with pytest.raises(StoreError, match="aws bootstrap"):
        store.get(new_job_id())


def test_listings_filter_by_owner(backend):
    """The app's per-user lists: pages fill up with the owner's jobs only, however many others lie between."""
    now = utcnow()
    alice, bob = f"alice-{new_job_id()}@example.com", f"bob-{new_job_id()}@example.com"
    mine = []
    for i in range(12):
        owner = alice if i % 4 == 0 else bob
        job = Job(job_id=new_job_id(), status=JobStatus.COMPLETED, owner=owner,
                  created_at=now - timedelta(minutes=30 - i), completed_at=now - timedelta(minutes=20 - i))
        backend.jobs.put(job)
        if owner == alice:
            mine.append(job.job_id)
    backend.jobs.put(Job(job_id=new_job_id(), status=JobStatus.CREATED, owner=bob))
    first = backend.jobs.list_completed(limit=2, owner=alice)
    assert len(first.items) == 2 and first.next_cursor
    rest = backend.jobs.list_completed(limit=2, cursor=first.next_cursor, owner=alice)
    assert [j.job_id for j in first.items + rest.items] == list(reversed(mine)) and rest.next_cursor is None
    assert backend.jobs.list_in_progress(owner=alice) == []
    assert [j.owner for j in backend.jobs.list_in_progress(owner=bob)] == [bob]
    assert {j.owner for j in backend.jobs.list_by_status(JobStatus.COMPLETED, limit=50, owner=bob).items} == {bob}
