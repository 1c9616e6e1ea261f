import pytest

from stereo_spot import keys
from stereo_spot.keys import InvalidKey

JOB = "0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55"


def test_keys_follow_the_contract():
    assert keys.input_key(JOB) == f"input/{JOB}/source.mp4"
    assert keys.segment_key(JOB, 3, 12, "sbs") == f"segments/{JOB}/00003_00012_sbs.mp4"
    assert keys.output_segment_key(JOB, 3) == f"jobs/{JOB}/segments/3.mp4"
    assert keys.final_key(JOB) == f"jobs/{JOB}/final.mp4"
    assert keys.report_key(JOB) == f"jobs/{JOB}/report.json"


def test_keys_parse_back():
    assert keys.parse_input_key(keys.input_key(JOB)) == JOB
    parsed = keys.parse_segment_key(keys.segment_key(JOB, 7, 8, "anaglyph"))
    assert (parsed.job_id, parsed.segment_index, parsed.total_segments, parsed.mode) == (JOB, 7, 8, "anaglyph")
    assert parsed.key == keys.segment_key(JOB, 7, 8, "anaglyph")
    assert keys.parse_output_segment_key(keys.output_segment_key(JOB, 11)) == (JOB, 11)


@pytest.mark.parametrize("bad", ["", "../etc", "not-a-uuid", JOB.upper(), f"{JOB}/x", f"../{JOB}", " " + JOB,
                                 "0b9f3c4e6f1a4c6e9a512f7d8e3b1c55"])
def test_invalid_job_ids_never_reach_a_key(bad):
    for build in (keys.input_key, keys.final_key, keys.report_key, lambda j: keys.segment_key(j, 0, 1, "sbs")):
        with pytest.raises(InvalidKey):
            build(bad)


@pytest.mark.parametrize("key", [f"input/{JOB}/source.mov", f"input/{JOB}/other.mp4", "input/x/source.mp4",
                                 f"segments/{JOB}/00001_00001_sbs.mp4", f"jobs/{JOB}/final.mp4", "input/",
                                 f"input/../{JOB}/source.mp4"])
def test_non_input_keys_are_rejected(key):
    assert not keys.is_input_key(key)
    with pytest.raises(InvalidKey):
        keys.parse_input_key(key)


def test_segment_index_beyond_total_is_rejected():
    with pytest.raises(InvalidKey):
        keys.segment_key(JOB, 5, 5, "sbs")
    with pytest.raises(InvalidKey):
        keys.parse_segment_key(f"segments/{JOB}/00005_00005_sbs.mp4")


def test_event_keys_are_url_decoded():
    assert keys.normalize_event_key("input/a+b%2Fc.mp4") == "input/a b/c.mp4"
