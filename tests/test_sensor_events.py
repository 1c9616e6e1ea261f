"""The Sensors' key filter and the Argo Workflow's name, evaluated as Argo Events evaluates them (tests/go_template.py
says how faithfully) on S3 notifications as S3 and `stereo-spot reconcile` write them.

Breakages these catch: a filter that lets a key without a job id through (``^input/.+\\.mp4$`` did, and the name
became ``stereo-spot-``) or refuses the contract's key; a name that is the same for two uploads (the old
``stereo-spot-<job id>``: a re-upload of a failed job hit AlreadyExists for the 7 days its run was kept), that
differs for two deliveries of one event, or that is longer than Argo's 63 characters."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from stereo_spot import keys
from stereo_spot.adapters import argo_runs
from stereo_spot.cluster.reconcile import redrive_event
from stereo_spot.ports import ObjectInfo
from tests.go_template import (
    TemplateError,
    check_common_regex,
    go_regex_search,
    render,
    sensor_template_value,
)

ROOT = Path(__file__).resolve().parent.parent
SENSORS = {"argo": ROOT / "manifests/base/sensor-argo.yaml",
           "kubeflow": ROOT / "manifests/components/kubeflow-trigger/sensor-kubeflow.yaml"}
JOB = "0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55"
# DNS-1123 label: what a Kubernetes label value and a pod's workflow label need (Argo's 63-character limit)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _sensor(engine: str) -> dict:
    return yaml.safe_load(SENSORS[engine].read_text())


def _key_filters(engine: str) -> list[str]:
    [dependency] = _sensor(engine)["spec"]["dependencies"]
    [key_filter] = [f for f in dependency["filters"]["data"] if f["path"] == "body.Records.0.s3.object.key"]
    assert key_filter["type"] == "string" and key_filter.get("comparator", "=") in ("=", "")
    return key_filter["value"]


def _passes(engine: str, key: str) -> bool:
    # filterData: the filter passes when any of its values matches (unanchored regexp.Match)
    return any(go_regex_search(pattern, key) for pattern in _key_filters(engine))


def _s3_event(key: str, sequencer: str, bucket: str = "uploads",
              event_time: str = "2026-01-02T03:04:05.678Z") -> dict:
    """The SQS message body S3 sends (jsonBody: true puts it under `body`)."""
    return {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "eventTime": event_time, "s3": {"bucket": {"name": bucket},
                                "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                                           "sequencer": sequencer}}}]}


def _parameter(engine: str, dest: str) -> dict:
    [trigger] = _sensor(engine)["spec"]["triggers"]
    [parameter] = [p for p in trigger["template"].get("argoWorkflow", trigger["template"].get("k8s"))["parameters"]
                   if p["dest"] == dest]
    return parameter["src"]


def _workflow_name(body: dict) -> str:
    return sensor_template_value(_parameter("argo", "metadata.name")["dataTemplate"], {"body": body})


MUST_PASS = [
    f"input/{JOB}/source.mp4",
    f"input%2F{JOB}%2Fsource.mp4",  # a '/' URL-encoded, which the steps decode (keys.normalize_event_key)
    f"input%2f{JOB}%2fsource.mp4",
]
MUST_NOT_PASS = [
    "input/holiday.mp4",  # no job id: the name used to become "stereo-spot-"
    "input/holiday 2024.mp4",
    f"input/{JOB}.mp4",
    f"input/{JOB}/other.mp4",
    f"input/{JOB}/source.mp4.part",
    f"input/{JOB}/source.mp4\n",  # Go's $ is the end of the text
    f"input/{JOB}/source.MP4",
    f"input/{JOB.upper()}/source.mp4",  # job ids are lowercase UUIDs (keys.validate_job_id)
    f"input/{JOB}x/source.mp4",
    f"input/x{JOB}/source.mp4",
    f"input/{JOB}/nested/source.mp4",
    f"input/../{JOB}/source.mp4",
    f"uploads/input/{JOB}/source.mp4",
    f"segments/{JOB}/00000_00001_sbs.mp4",
    f"jobs/{JOB}/final.mp4",
    "input/0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c5/source.mp4",  # one digit short
]


@pytest.mark.parametrize("engine", sorted(SENSORS))
@pytest.mark.parametrize("key", MUST_PASS)
def test_the_filter_passes_the_contract_key(engine, key):
    assert _passes(engine, key)
    assert keys.parse_input_key(keys.normalize_event_key(key)) == JOB  # and the steps agree


@pytest.mark.parametrize("engine", sorted(SENSORS))
@pytest.mark.parametrize("key", MUST_NOT_PASS)
def test_the_filter_drops_keys_that_are_not_a_jobs_source(engine, key):
    assert not _passes(engine, key)
    assert not keys.is_input_key(keys.normalize_event_key(key).rstrip("\n")) or key.endswith("\n")


@pytest.mark.parametrize("engine", sorted(SENSORS))
def test_both_sensors_filter_alike_and_in_the_common_regex_subset(engine):
    assert _key_filters(engine) == _key_filters("argo")
    for pattern in _key_filters(engine):
        check_common_regex(pattern)
        assert pattern.startswith("^") and pattern.endswith("$")  # regexp.Match is a search


def test_the_workflow_is_named_after_the_job_and_the_upload():
    first = _s3_event(f"input/{JOB}/source.mp4", "0055AED6DCD90281E5")
    name = _workflow_name(first)
    assert name == argo_runs.run_name(JOB, "0055AED6DCD90281E5")  # one rule, in Python and in the Sensor
    assert len(name) <= argo_runs.MAX_NAME_CHARS and DNS_LABEL.match(name)
    assert name.startswith(f"stereo-spot-{JOB}-")
    # SQS delivers the same event again: same name, so Argo answers AlreadyExists and nothing starts twice
    assert _workflow_name(json.loads(json.dumps(first))) == name
    # the video uploaded again after its run failed: S3's next sequencer, a new run
    again = _s3_event(f"input/{JOB}/source.mp4", "0055AED6DCD90281F7")
    assert _workflow_name(again) != name and DNS_LABEL.match(_workflow_name(again))


def test_a_reconcile_redrive_passes_the_filter_and_starts_a_new_run():
    """reconcile re-drives a job whose run failed or was deleted without recording it: its event must reach the
    Sensor and get a name of its own (the failed run is kept for days under the old one)."""
    key = keys.input_key(JOB)
    info = ObjectInfo(key=key, size=1024, etag='"abc"', last_modified=datetime(2026, 1, 2, tzinfo=UTC))
    upload = _workflow_name(_s3_event(key, "0055AED6DCD90281E5"))
    body = json.loads(redrive_event("uploads", key, info, datetime(2026, 1, 3, 4, 5, 6, tzinfo=UTC), "stuck"))
    assert _passes("argo", body["Records"][0]["s3"]["object"]["key"])
    redriven = _workflow_name(body)
    assert redriven != upload and DNS_LABEL.match(redriven) and len(redriven) <= argo_runs.MAX_NAME_CHARS
    later = json.loads(redrive_event("uploads", key, info, datetime(2026, 1, 3, 5, 5, 6, tzinfo=UTC), "stuck"))
    assert _workflow_name(later) != redriven  # each re-drive is a delivery of its own


def test_the_job_label_is_the_job_id():
    for engine, dest in (("argo", "metadata.labels.stereo-spot\\.io/job-id"),
                         ("kubeflow", "metadata.labels.stereo-spot\\.io/job-id")):
        template = _parameter(engine, dest)["dataTemplate"]
        assert sensor_template_value(template, {"body": _s3_event(f"input/{JOB}/source.mp4", "01")}) == JOB


def test_an_s3_look_alike_without_a_sequencer_is_named_after_the_event_time():
    """moto's S3 (the kind e2e) sends no sequencer and encodes the key's '/' (quote_plus): the name falls back on
    the record's eventTime, which differs per upload and is repeated by a redelivery."""
    from moto.s3.notifications import _get_s3_event

    class Key:
        name, size, etag, version_id = f"input/{JOB}/source.mp4", 1024, '"abc"', None

    class Bucket:
        name, region_name, arn = "uploads", "us-east-1", "arn:aws:s3:::uploads"

    body = _get_s3_event("s3:ObjectCreated:Put", Bucket(), Key(), "n-1")
    record = body["Records"][0]
    assert "sequencer" not in record["s3"]["object"]  # what moto sends today
    assert _passes("argo", record["s3"]["object"]["key"])
    name = _workflow_name(body)
    assert name == argo_runs.run_name(JOB, record["eventTime"]) and DNS_LABEL.match(name)
    later = json.loads(json.dumps(body))
    later["Records"][0]["eventTime"] = "2099-01-01T00:00:00.000Z"
    assert _workflow_name(later) != name


def test_an_event_with_neither_sequencer_nor_time_fails_the_trigger_rather_than_reusing_a_name():
    body = _s3_event(f"input/{JOB}/source.mp4", "01")
    del body["Records"][0]["s3"]["object"]["sequencer"], body["Records"][0]["eventTime"]
    with pytest.raises(TemplateError, match="invalid value"):
        _workflow_name(body)


def test_the_evaluator_agrees_with_go_and_sprig_on_known_values():
    """Values Go's text/template + sprig give (sha256 of "abc" is the FIPS 180-2 test vector)."""
    data = {"Input": {"a": [{"b": "input/x/y"}], "s": "abc"}}
    assert render("{{ .Input.s | sha256sum }}", data) == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert render("{{ .Input.s | sha256sum | trunc 4 }}", data) == "ba78"
    assert render('{{ (index .Input.a 0).b | regexFind "[a-z]/[a-z]" }}', data) == "t/x"
    assert render('{{ .Input.s | regexFind "z" }}', data) == ""
    assert render("{{ .Input.missing }}", data) == "<no value>"
    assert render('{{ .Input.missing | default "x" }}', data) == "x"
    assert render('{{ .Input.s | default "x" }}', data) == "abc"
    assert render('{{ "" | default .Input.s }}', data) == "abc"
    with pytest.raises(TemplateError):
        render("{{ .Input.s | b64enc }}", data)  # outside the subset: refused, not guessed
    with pytest.raises(ValueError):
        check_common_regex("^(?!input)")
    assert go_regex_search("^a$", "a") and not go_regex_search("^a$", "a\n")


def test_a_new_job_id_always_fits():
    for _ in range(50):
        name = argo_runs.run_name(str(uuid.uuid4()), str(uuid.uuid4()))
        assert len(name) == 61 and DNS_LABEL.match(name)
