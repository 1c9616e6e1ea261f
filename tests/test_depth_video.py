"""The depth video: ``stereo-spot depth`` writes it, ``convert --depth-video`` renders from it.

What each test is there to catch (each was seen red with the breakage planted):
- the export not being the depth the warp uses: the depth quantised to 8 bits (x257 / 256 steps), the
  convention flipped (far = bright), a segment's warm-up dropped (its first frames differ from one pass);
- the depth video carrying the source's audio (the join given the source);
- the round trip (export, then convert from it) not giving a plain convert's output (>= 50 dB): the depth read
  one frame late (``DepthFrames.index_for`` + 1), the convention flipped on the way in, 8-bit quantisation;
  for a part of the video (--start), a segment's warm-up asking for depth before the part (``covers`` dropped);
- an edited depth not acting as depth: a flat depth at the convergence must leave both eyes equal, a flat near
  depth must shift the right eye by the disparity that depth asks for;
- a depth video that does not fit being rendered from: another frame count, another frame rate, 8-bit grey,
  no convention tag, another picture size; each refused in one line saying how, before a job exists, and by
  the chunk step on a worker (the job failed with the reason).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.cli.main import app
from stereo_spot.media.depth_video import (
    DEPTH_TAG,
    FULL_SCALE,
    DepthFrames,
    DepthWriter,
    check_fits,
    depth_tags,
    read_depth_video,
)
from stereo_spot.media.errors import MediaError
from stereo_spot.models import ConversionSettings, JobStatus
from stereo_spot.runner import run_job
from stereo_spot.stereo.depth.given import GivenDepth
from stereo_spot.stereo.engine import StereoEngine
from tests.media_fixtures import make_clip

W, H, FPS, SECONDS = 96, 64, 25, 2.0
FRAMES = int(FPS * SECONDS)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("depthio") / "clip.mp4", seconds=SECONDS, fps=FPS, size=(W, H), gop=10)


@pytest.fixture(scope="module")
def exported(clip, tmp_path_factory) -> Path:
    """The clip's depth video, made in 0.5 s segments (each warmed up on the one before)."""
    home = tmp_path_factory.mktemp("depth-home")
    out = home / "clip-depth.mkv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEREO_SPOT_HOME", str(home))
        result = CliRunner().invoke(app, ["depth", str(clip), "-o", str(out), "--segment-seconds", "0.5",
                                          "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out


def _decoded(path: Path, fmt: str) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format=fmt) for frame in container.decode(video=0)]


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.pts * frame.time_base) for frame in container.decode(video=0)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _write_depth(path: Path, frames: list[np.ndarray], fps: int = FPS, tags: dict | None = None) -> Path:
    """An edited depth video: ``frames`` (uint16 [H,W]) at ``fps``, tagged as ``stereo-spot depth`` tags it."""
    writer = DepthWriter(path, frames[0].shape[1], frames[0].shape[0], Fraction(1, fps), Fraction(fps))
    if tags is not None:
        writer._container.metadata.clear()
        writer._container.metadata.update(tags)
    for index, frame in enumerate(frames):
        writer.write(frame, index)
    writer.close()
    return path


def _convert(clip: Path, out: Path, *extra: str) -> CliRunner:
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(out), "--segment-seconds", "0.5",
                                      "--workers", "1", "--codec", "libx264", "--crf", "0", *extra])
    return result


# --- depth out -----------------------------------------------------------------------------------------------


def test_the_depth_video_is_16_bit_grey_ffv1_frame_for_frame_with_the_source_and_tagged(clip, exported) -> None:
    with av.open(str(exported)) as container:
        stream = container.streams.video[0]
        assert container.format.name.startswith("matroska")
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("ffv1", "gray16le")
        assert not container.streams.audio  # the clip has audio; the depth video has none
        assert container.metadata[DEPTH_TAG] == "near-is-bright"
        assert container.metadata["STEREO_SPOT_DEPTH_RANGE"] == "0-65535"
    assert _times(exported) == pytest.approx(_times(clip), abs=1e-3)
    assert len(_times(exported)) == FRAMES
    info = read_depth_video(exported)
    assert (info.width, info.height) == (W, H)


def test_the_depth_video_is_the_depth_the_engine_warps_from_in_one_pass(clip, exported) -> None:
    """Segments warm up on the frames before them: the export equals one continuous pass of the engine, whose
    depth (normalised, near = 1) is quantised to 16 bits."""
    engine = StereoEngine(ConversionSettings(depth_output=True), device="cpu")
    frames = np.stack(_decoded(clip, "rgb24"))
    one_pass = engine.convert_batch(frames)
    written = np.stack(_decoded(exported, "gray16le"))
    assert one_pass.dtype == np.uint16 and written.shape == one_pass.shape
    assert np.abs(written.astype(int) - one_pass.astype(int)).max() <= 1
    # 16 bits used (an 8-bit depth scaled up would hit only multiples of 257) and near = bright
    assert np.any(written % 257 != 0)
    depth01 = engine.depth
    engine.reset()
    from stereo_spot.stereo.engine import frames_to_tensor

    _, left = frames_to_tensor(frames[:1], engine.device)
    expected = depth01.estimate(left)[0, 0].numpy()
    assert np.abs(written[0].astype(float) / FULL_SCALE - expected).max() <= 1.0 / FULL_SCALE


# --- depth in ------------------------------------------------------------------------------------------------


def test_a_conversion_from_the_exported_depth_is_the_plain_conversion(clip, exported, tmp_path, monkeypatch) -> None:
    """The round trip: a lossless encode of both (libx264 at --crf 0, also where a GPU would pick NVENC, whose
    constant quality stops at 1), so only the depth's 16-bit quantisation can differ; each frame at >= 50 dB."""
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    plain, rendered = tmp_path / "plain_LRF_Full_SBS.mp4", tmp_path / "from-depth_LRF_Full_SBS.mp4"
    assert _convert(clip, plain).exit_code == 0
    result = _convert(clip, rendered, "--depth-video", str(exported))
    assert result.exit_code == 0, result.output
    a, b = _decoded(plain, "rgb24"), _decoded(rendered, "rgb24")
    assert len(a) == len(b) == FRAMES
    assert _times(rendered) == _times(plain)
    worst = min(_psnr(x, y) for x, y in zip(a, b, strict=True))
    assert worst >= 50.0, worst


def test_a_part_of_the_video_round_trips_though_its_segments_warm_up_before_the_part(clip, tmp_path,
                                                                                     monkeypatch) -> None:
    """--start/--duration: the depth video holds the part only (its first frame at 0), and a segment's warm-up,
    which reaches back before --start, takes only the frames the depth video has."""
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    part = ("--start", "0.5", "--duration", "1.0")
    depth = tmp_path / "part-depth.mkv"
    result = CliRunner().invoke(app, ["depth", str(clip), "-o", str(depth), "--segment-seconds", "0.5",
                                      "--workers", "1", *part])
    assert result.exit_code == 0, result.output
    assert _times(depth)[0] == 0.0 and len(_times(depth)) == 25  # 0.52 .. 1.48 s of the clip
    plain, rendered = tmp_path / "plain_LRF_Full_SBS.mp4", tmp_path / "rendered_LRF_Full_SBS.mp4"
    assert _convert(clip, plain, *part).exit_code == 0
    result = _convert(clip, rendered, *part, "--depth-video", str(depth))
    assert result.exit_code == 0, result.output
    worst = min(_psnr(x, y) for x, y in zip(_decoded(plain, "rgb24"), _decoded(rendered, "rgb24"), strict=True))
    assert worst >= 50.0, worst
    whole = _convert(clip, tmp_path / "whole_LRF_Full_SBS.mp4", "--depth-video", str(depth))
    assert "has 25 frames, the source has 50" in " ".join(whole.output.split())


def test_no_depth_model_is_loaded_to_render_from_a_depth_video() -> None:
    engine = StereoEngine(ConversionSettings(depth_video=True, depth_model="no-such-model"), device="cpu")
    assert isinstance(engine.depth, GivenDepth)


def _flat_output(clip: Path, tmp_path: Path, value: float, *extra: str) -> list[np.ndarray]:
    depth = _write_depth(tmp_path / f"flat-{value}.mkv", [np.full((H, W), round(value * FULL_SCALE), np.uint16)] *
                         FRAMES)
    out = tmp_path / f"flat-{value}_LRF_Full_SBS.mp4"
    result = _convert(clip, out, "--depth-video", str(depth), "--no-floating-window", *extra)
    assert result.exit_code == 0, result.output
    return _decoded(out, "rgb24")


def test_a_flat_depth_at_the_convergence_leaves_both_eyes_equal(clip, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    for frame in _flat_output(clip, tmp_path, 0.5, "--convergence", "0.5")[::7]:
        left, right = frame[:, :W].astype(int), frame[:, W:].astype(int)
        assert np.abs(left - right).max() <= 1


def test_a_flat_near_depth_shifts_the_right_eye_by_its_disparity(clip, tmp_path, monkeypatch) -> None:
    """Depth 1 with convergence 0 and divergence 10 %: 9.6 pixels of crossed disparity, the right eye's picture
    moved left by that much (whole pixels, the best match of the interior)."""
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    frame = _flat_output(clip, tmp_path, 1.0, "--convergence", "0", "--divergence", "10")[10]
    left, right = frame[:, :W].astype(float), frame[:, W:].astype(float)

    def error(shift: int) -> float:  # right[x] against left[x + shift], away from the edges
        return float(np.abs(right[:, 16:W - 16] - left[:, 16 + shift:W - 16 + shift]).mean())

    best = min(range(-14, 15), key=error)
    assert abs(best - 9.6) <= 1, best


# --- depth videos that do not fit ----------------------------------------------------------------------------


@pytest.fixture
def flat(tmp_path):
    return [np.full((H, W), 30000, np.uint16)] * FRAMES


@pytest.mark.parametrize(("case", "message"), [
    ("fewer frames", "has 40 frames, the source has 50"),
    ("another frame rate", "the timing differs (30.01 fps against 25 fps)"),
    ("8-bit grey", "is gray, not a depth video: expected 16-bit grey (gray16le"),
    ("no tag", "has no STEREO_SPOT_DEPTH tag: expected STEREO_SPOT_DEPTH=near-is-bright"),
    ("far is bright", "has STEREO_SPOT_DEPTH=far-is-bright: expected STEREO_SPOT_DEPTH=near-is-bright"),
    ("another size", "is 48x32, the source's frames are 96x64"),
])
def test_a_depth_video_that_does_not_fit_is_refused_before_any_job(clip, tmp_path, monkeypatch, flat, case,
                                                                   message, backend) -> None:
    path = tmp_path / "depth.mkv"
    if case == "fewer frames":
        _write_depth(path, flat[:40])
    elif case == "another frame rate":
        _write_depth(path, flat, fps=30)
    elif case == "8-bit grey":
        with av.open(str(path), "w", format="matroska") as container:
            container.metadata.update(depth_tags())
            stream = container.add_stream("ffv1", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = W, H, "gray"
            for index in range(FRAMES):
                frame = av.VideoFrame.from_ndarray(np.full((H, W), 100, np.uint8), format="gray")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    elif case == "no tag":
        _write_depth(path, flat, tags={})
    elif case == "far is bright":
        _write_depth(path, flat, tags={DEPTH_TAG: "far-is-bright"})
    else:
        _write_depth(path, [np.zeros((32, 48), np.uint16)] * FRAMES)
    result = _convert(clip, tmp_path / "out_LRF_Full_SBS.mp4", "--depth-video", str(path))
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # the console wraps long lines
    assert message in said, said
    assert "Traceback" not in said and said.count("error:") == 1
    assert backend.jobs.list_in_progress(limit=10) == []  # refused before a job existed


def test_the_chunk_step_refuses_a_depth_video_that_does_not_fit(clip, backend, tmp_path, flat) -> None:
    """On a worker the same rule runs in chunk: the job fails with the reason, no segment is made."""
    job = steps.create_job(backend, ConversionSettings(depth_video=True, segment_seconds=0.5), "edited")
    steps.store_depth_video(backend, job.job_id, _write_depth(tmp_path / "short.mkv", flat[:40]))
    steps.store_source(backend, job.job_id, clip)
    with pytest.raises(MediaError, match="has 40 frames, the source has 50"):
        run_job(backend, job.job_id, workers=1)
    failed = backend.jobs.get(job.job_id)
    assert failed.status == JobStatus.FAILED and "has 40 frames, the source has 50" in failed.failure_reason
    assert backend.objects.list_keys(backend.input_bucket, keys.segments_prefix(job.job_id)) == []


def test_a_job_without_its_depth_video_says_where_it_belongs(clip, backend) -> None:
    job = steps.create_job(backend, ConversionSettings(depth_video=True), "no depth")
    steps.store_source(backend, job.job_id, clip)
    with pytest.raises(Exception, match=f"there is none at input/{job.job_id}/depth.mkv"):
        run_job(backend, job.job_id, workers=1)


def test_segments_read_the_depth_frame_of_their_own_time(tmp_path, clip) -> None:
    """Frame k of the depth video for the source frame at k/25 s, whatever stretch is asked for first."""
    frames = [np.full((H, W), index * 1000, np.uint16) for index in range(FRAMES)]
    path = _write_depth(tmp_path / "ramp.mkv", frames)
    origin = check_fits(path, clip, size=(W, H))
    with DepthFrames(path, origin) as reader:
        later = reader.frames_at([k / FPS for k in range(30, 34)])
        earlier = reader.frames_at([k / FPS for k in range(3, 6)])
        far = reader.frames_at([49 / FPS])
    assert [int(f[0, 0]) for f in later] == [30000, 31000, 32000, 33000]
    assert [int(f[0, 0]) for f in earlier] == [3000, 4000, 5000]
    assert int(far[0][0, 0]) == 49000
    with DepthFrames(path, origin) as reader, pytest.raises(MediaError, match="has no frame at 2.500 s"):
        reader.frames_at([2.5])


# --- on the cluster ------------------------------------------------------------------------------------------


def test_the_chunk_component_takes_the_depth_video_parameter_into_the_job(clip, backend, exported) -> None:
    """The workflow's depth-video parameter reaches the job's settings, and chunk checks the depth video and
    records where its first frame lies for the convert pods."""
    from stereo_spot.components import chunk

    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5), "cluster")
    steps.store_depth_video(backend, job.job_id, exported)
    steps.store_source(backend, job.job_id, clip)
    shards = chunk.chunk(backend.input_bucket, keys.input_key(job.job_id),
                         depth_video=f"s3://{backend.input_bucket}/{keys.depth_video_key(job.job_id)}")
    assert shards
    stored = backend.jobs.get(job.job_id)
    assert stored.settings.depth_video and stored.depth_origin_seconds == 0.0


@pytest.mark.parametrize("given", ["input/0b9f3c4e-6f1a-4c6e-9a51-2f7d8e3b1c55/depth.mkv", "depth.mkv",
                                   "s3://another-bucket/input/{job}/depth.mkv", "input/{job}/source.mp4"])
def test_a_depth_video_parameter_outside_the_jobs_input_prefix_is_refused(given) -> None:
    from stereo_spot.components.chunk import depth_video_override
    from stereo_spot.errors import UserError

    job_id = "5d1c4b2a-0e9f-4a8b-9c7d-6e5f4a3b2c1d"
    with pytest.raises(UserError, match=f"depth-video=.*input/{job_id}/depth.mkv"):
        depth_video_override(given.format(job=job_id), "stereo-spot-input", job_id)
    assert depth_video_override(f"input/{job_id}/depth.mkv", "stereo-spot-input", job_id) == {"depth_video": True}
    assert depth_video_override("", "stereo-spot-input", job_id) == {}


def test_both_pipelines_hand_the_depth_video_parameter_to_chunk() -> None:
    import yaml

    from stereo_spot.pipelines.compile import render_kfp_pipeline, render_workflow_template

    template = yaml.safe_load(render_workflow_template())
    parameters = {p["name"]: p for p in template["spec"]["arguments"]["parameters"]}
    assert parameters["depth-video"]["value"] == ""
    main = next(t for t in template["spec"]["templates"] if t["name"] == "main")
    chunk_task = next(t for t in main["dag"]["tasks"] if t["name"] == "chunk")
    arguments = {p["name"]: p["value"] for p in chunk_task["arguments"]["parameters"]}
    assert arguments["depth_video"] == "{{workflow.parameters.depth-video}}"
    pipeline = list(yaml.safe_load_all(render_kfp_pipeline()))[0]
    assert pipeline["root"]["inputDefinitions"]["parameters"]["depth_video"]["defaultValue"] == ""
    tasks = pipeline["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    chunk_inputs = pipeline["components"][tasks]["dag"]["tasks"]["chunk"]["inputs"]["parameters"]
    assert chunk_inputs["depth_video"]["componentInputParameter"] == "pipelinechannel--depth_video"
    executor = pipeline["deploymentSpec"]["executors"]["exec-chunk"]["container"]
    assert "--depth-video" in executor["args"]


def test_an_edited_depth_video_is_another_job_and_the_same_one_resumes(clip, tmp_path, flat) -> None:
    """The job's fingerprint counts the depth video (path, size, time): the same command resumes its job, a
    depth video edited since starts a new one rather than resuming segments rendered from the old depth."""
    import os

    settings = ConversionSettings(depth_video=True)
    depth = _write_depth(tmp_path / "edited.mkv", flat)
    first = steps.fingerprint(clip, settings, depth)
    assert steps.fingerprint(clip, settings, depth) == first
    assert steps.fingerprint(clip, settings) != first
    _write_depth(depth, [np.full((H, W), 1000, np.uint16)] * FRAMES)
    os.utime(depth, ns=(1, 2))
    assert steps.fingerprint(clip, settings, depth) != first


def test_the_room_check_counts_a_depth_video_by_its_pixels(clip, exported):
    """A depth video is many times its source (lossless 16 bits): the room asked for before ``stereo-spot depth``
    starts is at least what the written file takes, and counted from the pictures, not the source's bitrate.
    Catches the estimate taking the 3D layouts' factor of the source's size (it was below the file's size)."""
    from stereo_spot import delivery
    from stereo_spot.media.probe import probe

    info = probe(clip)
    settings = ConversionSettings(depth_output=True)
    need = delivery.estimate(clip.stat().st_size, settings, info.duration_seconds, info.video)
    written = exported.stat().st_size
    assert written <= need.result <= 4 * written
    halved = delivery.estimate(clip.stat().st_size, ConversionSettings(depth_output=True, max_fps=FPS / 2),
                               info.duration_seconds, info.video)
    assert halved.result == pytest.approx(need.result / 2, rel=0.01)


# --- the preview renders from the depth video too ---------------------------------------------------------------


def _preview(clip: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["preview", str(clip), "--at", "1", "-o", str(out), "--no-floating-window",
                                    *extra])


def test_the_preview_renders_from_the_depth_video_it_is_given(clip, tmp_path, monkeypatch) -> None:
    """``preview --depth-video`` shows the frame as ``convert --depth-video`` makes it: a flat depth at the
    convergence leaves both eyes equal, where the estimated depth separates them. Catches the preview estimating
    the depth whatever it is given (the app's preview did, with an uploaded depth video)."""
    import cv2

    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    depth = _write_depth(tmp_path / "flat.mkv", [np.full((H, W), round(0.5 * FULL_SCALE), np.uint16)] * FRAMES)
    given, estimated = tmp_path / "given.png", tmp_path / "estimated.png"
    for out, extra in ((given, ("--depth-video", str(depth))), (estimated, ())):
        result = _preview(clip, out, "--convergence", "0.5", *extra)
        assert result.exit_code == 0, result.output
    for path, equal in ((given, True), (estimated, False)):
        frame = cv2.imread(str(path)).astype(int)
        assert bool(np.abs(frame[:, :W] - frame[:, W:]).max() <= 1) == equal, path.name


def test_the_preview_refuses_a_depth_video_that_does_not_fit_in_one_line(clip, tmp_path, monkeypatch, flat) -> None:
    monkeypatch.setenv("STEREO_SPOT_HOME", str(tmp_path / "home"))
    short = _write_depth(tmp_path / "short.mkv", flat[:40])
    result = _preview(clip, tmp_path / "p.png", "--depth-video", str(short))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "short.mkv has 40 frames, the source has 50" in result.output
    assert not (tmp_path / "p.png").exists()


def test_the_preview_of_a_moment_outside_the_depth_videos_part_says_so(clip, tmp_path) -> None:
    """A depth video made for ``--start 1 --duration 0.5`` has no depth at 0.2 s: the preview says so in one
    line rather than rendering that frame from another frame's depth. Catches the coverage check dropped."""
    from stereo_spot.errors import UserError
    from stereo_spot.media.depth_video import source_frame_times
    from stereo_spot.stereo.preview import preview_frame

    settings = ConversionSettings(depth_video=True, start=1.0, duration=0.5, floating_window=False)
    frames = len(source_frame_times(clip, settings.window))
    part = _write_depth(tmp_path / "part.mkv", [np.full((H, W), 30000, np.uint16)] * frames)
    assert preview_frame(clip, 1.2, settings, device="cpu", depth_video=part).shape == (H, 2 * W, 3)
    with pytest.raises(UserError, match=r"part.mkv has no depth at 0.2 s"):
        preview_frame(clip, 0.2, settings, device="cpu", depth_video=part)
