"""The app against a determined user: what was checked is what becomes the job, limits hold on what is really in
the file, staging room is shared fairly, and sign-in trusts only what it is told to trust."""

from __future__ import annotations

from stereo_spot import keys
from tests.media_fixtures import make_clip
from tests.test_ui_pages import all_jobs, new_app, shown, stage


def _convert(at):
    next(b for b in at.button if b.label == "Convert to 3D").click()
    at.run()
    assert not at.exception, at.exception


def test_a_second_upload_to_a_checked_token_is_refused_and_the_checked_file_is_the_job(home, backend, tmp_path,
                                                                                       monkeypatch):
    """Catches a token that takes a second upload (the checked file replaced after its check passed)."""
    monkeypatch.setenv("MAX_FRAME_PIXELS", "100000")
    small = make_clip(tmp_path / "small.mp4", seconds=0.5, fps=12, size=(320, 240), audio=False)
    large = make_clip(tmp_path / "large.mp4", seconds=0.5, fps=12, size=(640, 480), audio=False)
    at = new_app()
    assert stage(at, small).ok
    at.run()
    assert any("320×240" in shown(s) for s in at.success)
    swapped = stage(at, large)
    assert not swapped.ok and "already holds a file" in swapped.error
    _convert(at)
    jobs = all_jobs(backend)
    assert len(jobs) == 1
    stored = backend.objects.head(backend.input_bucket, keys.input_key(jobs[0].job_id))
    assert stored.size == small.stat().st_size


def test_a_file_changed_on_disk_after_its_check_is_checked_again_at_convert(home, backend, tmp_path, monkeypatch):
    """Catches Convert trusting the check remembered from the upload instead of the file it stores."""
    monkeypatch.setenv("MAX_FRAME_PIXELS", "100000")
    small = make_clip(tmp_path / "small.mp4", seconds=0.5, fps=12, size=(320, 240), audio=False)
    large = make_clip(tmp_path / "large.mp4", seconds=0.5, fps=12, size=(640, 480), audio=False)
    at = new_app()
    staged = stage(at, small)
    at.run()
    staged.path.write_bytes(large.read_bytes())
    _convert(at)
    assert any("640×480" in shown(e) and "MAX_FRAME_PIXELS" in shown(e) for e in at.error)
    assert all_jobs(backend) == []
