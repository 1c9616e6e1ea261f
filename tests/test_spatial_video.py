"""Spatial video (MV-HEVC with Apple's vexu/hfov boxes), verified by decoding and by reading the boxes.

These need x265 built with multiview encoding (``scripts/setup --spatial``, or ``STEREO_SPOT_X265_MULTIVIEW``);
CI does not build it unless setup is asked to, so there they skip with that reason. What each test catches:
- the round trip: view 0 decodes to the left eye and view 1 to the right, each >= 35 dB against the eyes the
  SBS output carries (eyes swapped on the way in, the second layer lost in the mux, a packing that puts the
  wrong half in a view), and the frames' timestamps one period apart in display order (timestamps given in
  stream order: B-frames would be shown out of order);
- the boxes: lhvC next to hvcC, vexu's eyes/hero/baseline/projection and hfov with their values, read from
  the bytes (a missing box, a wrong unit: millimetres for micrometres, degrees for thousandths);
- planted breakages (views swapped, vexu missing, second layer dropped) each turn the check red;
- segments joined by stream copy keep both views in every frame, across the joint.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stereo_spot import keys, steps
from stereo_spot.media import mvhevc, spatial, vexu
from stereo_spot.media.concat import concat_segments
from stereo_spot.media.encode import settings_for
from stereo_spot.media.errors import MediaError
from stereo_spot.media.frames import VideoWriter, frame_to_rgb
from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.runner import run_job
from tests.media_fixtures import make_clip

pytestmark = pytest.mark.skipif(
    mvhevc.multiview_x265() is None,
    reason=f"no x265 with multiview encoding at {mvhevc.DEFAULT_X265} or ${mvhevc.X265_ENV}: "
           "run scripts/setup --spatial (CI does not build it)",
)

EYE_W, EYE_H, FPS = 192, 112, Fraction(24)
MIN_PSNR = 35.0


def _eyes(count: int, first: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A smoothly textured moving scene and a near square seen from two eyes (shifted 14 px between them)."""
    yy, xx = np.mgrid[0:EYE_H, 0:EYE_W].astype(np.float64)
    lefts, rights = [], []
    for i in range(first, first + count):
        wave = np.sin(xx / 9 + i / 3) * np.cos(yy / 7 - i / 5)
        base = np.stack([120 + 70 * wave, 110 + 50 * np.sin(yy / 11 + i / 4), 130 - 60 * wave], -1)
        base = base.clip(0, 255).astype(np.uint8)
        left, right = base.copy(), base.copy()
        left[30:80, 60 + i:120 + i] = (200, 60, 50)
        right[30:80, 46 + i:106 + i] = (200, 60, 50)
        lefts.append(left)
        rights.append(right)
    return lefts, rights


def _as_sbs_output(tmp: Path, lefts, rights) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The eyes as the side-by-side output of the same job carries them (the project's own writer, x264 at
    the default quality), decoded back."""
    path = tmp / "sbs.mp4"
    with VideoWriter(path, 2 * EYE_W, EYE_H, 1 / FPS, FPS, settings_for(OutputFormat.SBS)) as writer:
        for index, (left, right) in enumerate(zip(lefts, rights, strict=True)):
            writer.write(np.concatenate([left, right], axis=1), index)
    with av.open(str(path)) as container:
        frames = [frame_to_rgb(f) for f in container.decode(video=0)]
    return [f[:, :EYE_W] for f in frames], [f[:, EYE_W:] for f in frames]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def _encode(tmp: Path, name: str, lefts, rights) -> Path:
    stream = tmp / f"{name}.hevc"
    with mvhevc.MultiviewEncoder(stream, EYE_W, EYE_H, FPS, crf=18, preset="ultrafast") as encoder:
        for left, right in zip(lefts, rights, strict=True):
            encoder.write(left, right)
    out = tmp / f"{name}.mp4"
    assert mvhevc.mux_mvhevc(stream, out, FPS) == len(lefts)
    return out


def check_spatial(path: Path, lefts, rights) -> None:
    """What a spatial-video output must be: both views decode to their eyes, and the boxes say so."""
    for view, eyes in ((mvhevc.BASE_VIEW, lefts), (mvhevc.SECOND_VIEW, rights)):
        frames = list(mvhevc.decode_view(path, view))
        assert len(frames) == len(eyes), f"view {view}: {len(frames)} frames, expected {len(eyes)}"
        worst = min(_psnr(f, e) for f, e in zip(frames, eyes, strict=True))
        assert worst >= MIN_PSNR, f"view {view} is {worst:.1f} dB from its eye"
    with av.open(str(path)) as container:  # players show frames by their timestamps: one period apart
        times = [frame.time for frame in container.decode(video=0)]
    steps = {round((b - a) * FPS, 6) for a, b in zip(times, times[1:], strict=False)}
    assert steps == {1}, f"frame timestamps are not one period apart: {times}"
    boxes = spatial.entry_boxes(path)
    assert b"hvcC" in boxes and b"lhvC" in boxes, sorted(boxes)
    found = vexu.read_spatial_video(path)
    assert found is not None, "no vexu/hfov boxes"
    assert found.eyes == vexu.LEFT_EYE | vexu.RIGHT_EYE and found.hero == vexu.HERO_LEFT
    assert found.baseline_mm == 64.0 and found.hfov_degrees == 63.0 and found.projection == "rect"


@pytest.fixture(scope="module")
def source_eyes():
    return _eyes(12)


@pytest.fixture(scope="module")
def eyes(tmp_path_factory, source_eyes):
    """What the views are checked against: the eyes of the SBS output."""
    return _as_sbs_output(tmp_path_factory.mktemp("sbs"), *source_eyes)


@pytest.fixture(scope="module")
def spatial_file(tmp_path_factory, source_eyes) -> Path:
    out = _encode(tmp_path_factory.mktemp("spatial"), "clip", *source_eyes)
    vexu.write_spatial_video(out, vexu.SpatialVideo())
    return out


def test_the_eyes_differ_enough_for_a_swap_to_show(eyes):
    lefts, rights = eyes
    assert max(_psnr(a, b) for a, b in zip(lefts, rights, strict=True)) < 25


def test_both_views_decode_to_their_eyes_and_the_boxes_carry_their_values(spatial_file, eyes):
    check_spatial(spatial_file, *eyes)


def test_the_boxes_hold_apples_units(spatial_file):
    found = spatial.entry_boxes(spatial_file)
    raw = found[b"vexu"]
    assert struct.unpack_from(">I", raw, raw.index(b"blin") + 8)[0] == 64_000  # micrometres
    assert struct.unpack_from(">I", found[b"hfov"], 8)[0] == 63_000  # thousandths of a degree
    assert found[b"hfov"][:8] == struct.pack(">I4s", 12, b"hfov")  # a plain Box, as FFmpeg writes it


def test_a_disparity_adjustment_is_written_and_read_back(tmp_path, spatial_file):
    copy = tmp_path / "adjusted.mp4"
    copy.write_bytes(spatial_file.read_bytes())
    vexu.write_spatial_video(copy, vexu.SpatialVideo(baseline_mm=63.5, hfov_degrees=70, disparity_adjustment=0.02))
    found = vexu.read_spatial_video(copy)
    assert (found.baseline_mm, found.hfov_degrees, found.disparity_adjustment) == (63.5, 70.0, 0.02)
    assert spatial.entry_boxes(copy).keys() >= {b"hvcC", b"lhvC", b"vexu", b"hfov"}
    assert len(list(mvhevc.decode_view(copy, 1))) == 12  # the moved chunk offsets still point at the frames


# --- planted breakages: the check above must turn red ------------------------------------------------------


def test_views_swapped_is_caught(tmp_path, source_eyes, eyes):
    lefts, rights = eyes
    swapped = _encode(tmp_path, "swapped", source_eyes[1], source_eyes[0])
    vexu.write_spatial_video(swapped, vexu.SpatialVideo())
    with pytest.raises(AssertionError, match="view 0 is"):
        check_spatial(swapped, lefts, rights)


def test_vexu_missing_is_caught(tmp_path, source_eyes, eyes):
    bare = _encode(tmp_path, "bare", *source_eyes)
    with pytest.raises(AssertionError, match="no vexu"):
        check_spatial(bare, *eyes)


def _drop_second_layer(src: Path, out: Path) -> None:
    """Remux keeping only the NAL units of layer 0 (nuh_layer_id in bits 3..8 of the 2-byte header)."""
    with av.open(str(src)) as inp, av.open(str(out), "w", format="mp4") as dst:
        stream = inp.streams.video[0]
        video = dst.add_stream_from_template(stream, opaque=True)
        for packet in inp.demux(stream):
            if not packet.size:
                continue
            data, kept, pos = bytes(packet), b"", 0
            while pos + 4 <= len(data):
                (size,) = struct.unpack_from(">I", data, pos)
                nal = data[pos + 4:pos + 4 + size]
                if ((nal[0] & 1) << 5 | nal[1] >> 3) == 0:
                    kept += data[pos:pos + 4 + size]
                pos += 4 + size
            copy = av.Packet(kept)
            copy.pts, copy.dts, copy.duration, copy.time_base = packet.pts, packet.dts, packet.duration, \
                packet.time_base
            copy.is_keyframe = packet.is_keyframe
            copy.stream = video
            dst.mux(copy)


def test_second_layer_dropped_is_caught(tmp_path, spatial_file, eyes):
    flat = tmp_path / "flat.mp4"
    _drop_second_layer(spatial_file, flat)
    vexu.write_spatial_video(flat, vexu.SpatialVideo())
    with pytest.raises(AssertionError, match="view 1"):
        check_spatial(flat, *eyes)


# --- joining segments ---------------------------------------------------------------------------------------


def test_segments_joined_by_stream_copy_keep_both_views_in_every_frame(tmp_path):
    first, second = _eyes(8, 0), _eyes(8, 8)
    segments = [_encode(tmp_path, "s0", *first), _encode(tmp_path, "s1", *second)]
    lefts, rights = _as_sbs_output(tmp_path, first[0] + second[0], first[1] + second[1])
    source = make_clip(tmp_path / "source.mp4", seconds=16 / 24, fps=24, size=(EYE_W, EYE_H), audio=True)
    joined = tmp_path / "joined.mp4"
    result = concat_segments(segments, source, joined)
    assert result.frames == 16 and result.audio_streams == 1
    vexu.write_spatial_video(joined, vexu.SpatialVideo())
    check_spatial(joined, lefts, rights)
    with av.open(str(joined)) as container:
        assert len(container.streams.audio) == 1


# --- errors a user can meet -----------------------------------------------------------------------------------


def test_an_eye_of_the_wrong_size_is_refused(tmp_path):
    with mvhevc.MultiviewEncoder(tmp_path / "x.hevc", EYE_W, EYE_H, FPS) as encoder:
        left, right = _eyes(1)
        encoder.write(left[0], right[0])
        with pytest.raises(MediaError, match="the stream's eyes are 192x112"):
            encoder.write(left[0][:, :10], right[0])


# --- the whole job: --format spatial against --format sbs of the same input --------------------------------


def _final(backend, settings: ConversionSettings, clip: Path) -> Path:
    job = steps.create_job(backend, settings, "spatial")
    steps.store_source(backend, job.job_id, clip)
    run_job(backend, job.job_id, workers=1)
    return backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))


@pytest.mark.slow
def test_a_spatial_job_carries_the_eyes_of_the_sbs_job_as_two_views_with_the_audio(backend, tmp_path):
    """Segments of 0.5 s, so the result is a join of two MV-HEVC segments; catches a spatial job that writes
    side-by-side frames, loses view 1 or the audio, or skips the vexu/hfov boxes."""
    clip = make_clip(tmp_path / "clip.mp4", seconds=1.0, fps=24, size=(96, 64), gop=12)
    sbs = _final(backend, ConversionSettings(segment_seconds=0.5, output_format=OutputFormat.SBS), clip)
    out = _final(backend, ConversionSettings(segment_seconds=0.5, output_format=OutputFormat.SPATIAL,
                                             baseline_mm=64, hfov=63), clip)
    with av.open(str(sbs)) as container:
        packed = [frame_to_rgb(f) for f in container.decode(video=0)]
    with av.open(str(out)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (96, 64)
        assert len(container.streams.audio) == 1
    check_spatial(out, [f[:, :96] for f in packed], [f[:, 96:] for f in packed])

