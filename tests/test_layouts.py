"""Cross-eyed, swapped-eye and VR180 layouts, the extra anaglyph methods, and the container's stereo metadata.

What each test is there to catch:
- the eye order of cross/swap (a layout that puts the wrong eye first, or a fast uint8 path that disagrees with
  the float packing);
- each anaglyph method against its published definition, written out here independently (a wrong coefficient,
  a missing gamma, a method that falls through to another);
- the VR180 projection's geometry (a ray that lands on the wrong source column, a flipped axis, no black outside
  the picture);
- the st3d/sv3d boxes: written where players look, read back both by our reader and by FFmpeg's own demuxer,
  and a file that still decodes frame for frame after the chunk offsets moved.
"""

from __future__ import annotations

import math
import struct

import av
import numpy as np
import pytest
import torch
from av.sidedata.sidedata import Type

from stereo_spot import keys, steps
from stereo_spot.media import spatial
from stereo_spot.media.encode import settings_for
from stereo_spot.media.frames import stereo_layout
from stereo_spot.models import AnaglyphMethod, ConversionSettings, OutputFormat
from stereo_spot.naming import output_file_name
from stereo_spot.runner import run_job
from stereo_spot.stereo import equirect
from stereo_spot.stereo.pack import anaglyph, output_size, pack, pack_uint8
from tests.media_fixtures import make_clip

H, W = 12, 20


def _views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, H, W, generator=g), torch.rand(2, 3, H, W, generator=g)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# --- eye order --------------------------------------------------------------------------------------------


def test_cross_puts_the_right_eye_on_the_left():
    left, right = _views()
    packed = pack(left, right, OutputFormat.CROSS)
    assert output_size(W, H, OutputFormat.CROSS) == (2 * W, H)
    assert torch.equal(packed[..., :W], right) and torch.equal(packed[..., W:], left)


@pytest.mark.parametrize("fmt", [OutputFormat.SBS, OutputFormat.TB, OutputFormat.HSBS, OutputFormat.HTB,
                                 OutputFormat.CROSS, OutputFormat.VR180])
def test_swap_eyes_is_the_layout_with_the_views_exchanged(fmt):
    left, right = _views(1)
    assert torch.equal(pack(left, right, fmt, swap_eyes=True), pack(right, left, fmt))


def test_swapped_anaglyph_takes_red_from_the_right_eye():
    left, right = _views(2)
    swapped = pack(left, right, OutputFormat.ANAGLYPH, AnaglyphMethod.COLOR, swap_eyes=True)
    assert torch.equal(swapped[:, 0], right[:, 0]) and torch.equal(swapped[:, 1:], left[:, 1:])


@pytest.mark.parametrize("fmt,swap", [(OutputFormat.SBS, True), (OutputFormat.CROSS, False),
                                      (OutputFormat.CROSS, True), (OutputFormat.TB, True),
                                      (OutputFormat.VR180, False), (OutputFormat.VR180, True)])
def test_the_uint8_packing_agrees_with_the_float_packing(fmt, swap):
    left, right = _views(3)
    left = (left * 255).round() / 255  # exactly representable, so the byte copy of the left eye is exact
    expected = _u8(pack(left, right, fmt, swap_eyes=swap).clamp(0, 1))
    got = pack_uint8(_u8(left), left.clone(), right.clone(), fmt, swap_eyes=swap)
    assert got.shape == expected.shape
    assert (got.int() - expected.int()).abs().max() <= 1


# --- anaglyph methods against their published definitions --------------------------------------------------


def _srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def _reference(method: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per pixel, from the published formulas (arrays [3, ...] in 0..1)."""
    lr, lg, lb = left
    rr, rg, rb = right
    if method == "wimmer":  # Wimmer, "optimized anaglyph": left (0, .7, .3) → red; right green and blue
        return np.stack([np.clip(0.7 * lg + 0.3 * lb, 0, 1), rg, rb])
    if method == "wimmer2":  # Wimmer's improved method (McAllister, Zhou and Sullivan 2010)
        lg2, lb2 = lg + 0.45 * np.maximum(lr - lg, 0), lb + 0.25 * np.maximum(lr - lb, 0)
        rg2, rb2 = rg + 0.45 * np.maximum(rr - rg, 0), rb + 0.25 * np.maximum(rr - rb, 0)
        return np.clip(np.stack([np.clip(0.75 * lg2 + 0.25 * lb2, 0, 1) ** (1 / 1.6), rg2, rb2]), 0, 1)
    if method == "dubois2":  # Dubois 2009, on linear light
        ml = np.array([[0.437, 0.449, 0.164], [-0.062, -0.062, -0.024], [-0.048, -0.050, -0.017]])
        mr = np.array([[-0.011, -0.032, -0.007], [0.377, 0.761, 0.009], [-0.026, -0.093, 1.234]])
        mixed = np.einsum("oc,c...->o...", ml, _srgb_to_linear(left)) + np.einsum("oc,c...->o...", mr,
                                                                                    _srgb_to_linear(right))
        return _linear_to_srgb(mixed)
    raise AssertionError(method)


@pytest.mark.parametrize("method", ["wimmer", "wimmer2", "dubois2"])
def test_anaglyph_methods_follow_their_published_definitions(method):
    left, right = _views(4)
    got = anaglyph(left, right, AnaglyphMethod(method)).numpy()
    for i in range(left.shape[0]):
        expected = _reference(method, left[i].double().numpy(), right[i].double().numpy())
        np.testing.assert_allclose(got[i], expected, atol=2e-6)


def test_the_methods_differ_from_each_other():
    left, right = _views(5)
    results = {m: anaglyph(left, right, m) for m in AnaglyphMethod}
    for a in AnaglyphMethod:
        for b in AnaglyphMethod:
            if a is not b:
                assert not torch.allclose(results[a], results[b], atol=1e-3), (a, b)


def test_anaglyph_keeps_full_chroma_and_cross_keeps_no_misleading_sei():
    assert settings_for(OutputFormat.ANAGLYPH).pix_fmt == "yuv444p"
    assert settings_for(OutputFormat.CROSS).frame_packing is None  # x264 marks frame 0 as the left view
    assert settings_for(OutputFormat.SBS, swap_eyes=True).frame_packing is None
    assert settings_for(OutputFormat.VR180).frame_packing == 3


# --- VR180 projection --------------------------------------------------------------------------------------


def test_vr180_rays_land_where_a_pinhole_camera_puts_them():
    h, w = 60, 100
    side = equirect.eye_size(w, h)
    assert side % 2 == 0 and output_size(w, h, OutputFormat.VR180) == (2 * side, side)
    f = equirect.focal_length(w)
    column = 80  # a bright vertical line, right of the centre
    src = torch.zeros(1, 3, h, w)
    src[..., column] = 1.0
    out = equirect.project(src, side)[0, 0]
    equator = out[side // 2 - 1:side // 2 + 1].mean(dim=0)
    expected_lon = math.atan((column + 0.5 - w / 2) / f)  # the ray through the line's centre
    expected_x = (expected_lon / math.pi + 0.5) * side - 0.5
    brightest = float((equator * torch.arange(side)).sum() / equator.sum())
    assert abs(brightest - expected_x) < 1.0
    # the line is straight in the picture, so it bends towards the centre away from the equator (x/z shrinks as
    # cos(lat) does not): at 30° latitude it sits at a smaller longitude
    lat_row = round((math.radians(30) / math.pi + 0.5) * side - 0.5)
    row = out[lat_row]
    if row.sum() > 0:
        assert float((row * torch.arange(side)).sum() / row.sum()) < brightest


def test_vr180_centre_keeps_the_picture_and_outside_is_black():
    h, w = 60, 100
    src = torch.rand(1, 3, h, w)
    side = equirect.eye_size(w, h)
    out = equirect.project(src, side)
    assert out[..., :4, :].abs().max() == 0 and out[..., :, :4].abs().max() == 0  # beyond the picture
    centre = out[0, :, side // 2 - 1:side // 2 + 1, side // 2 - 1:side // 2 + 1].mean(dim=(1, 2))
    expected = src[0, :, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].mean(dim=(1, 2))
    assert torch.allclose(centre, expected, atol=0.15)
    assert not torch.flip(out, dims=[3]).equal(out)  # not mirrored onto itself


# --- container metadata ------------------------------------------------------------------------------------


def _decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _frame_side_data(path) -> dict:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return {d.type: bytes(d) for d in frame.side_data}


@pytest.mark.parametrize("faststart", [True, False])
def test_metadata_is_written_where_players_read_it_and_the_file_still_plays(tmp_path, faststart):
    clip = make_clip(tmp_path / "clip.mp4", faststart=faststart)
    before = _decoded(clip)
    meta = spatial.metadata_for(OutputFormat.VR180)
    spatial.write_metadata(clip, meta)
    size = clip.stat().st_size
    spatial.write_metadata(clip, meta)  # idempotent: the boxes are replaced, not added again
    assert clip.stat().st_size == size
    assert spatial.read_metadata(clip) == meta
    after = _decoded(clip)  # chunk offsets moved with the moov box (faststart): every frame decodes the same
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    with av.open(str(clip)) as container:
        assert container.streams.audio and container.streams.audio[0].frames > 0
    # FFmpeg's own mp4 demuxer reads both boxes: AVStereo3D (1 = side by side) and AVSphericalMapping
    side_data = _frame_side_data(clip)
    assert struct.unpack_from("<i", side_data[Type.STEREO3D])[0] == 1
    _projection, _yaw, _pitch, _roll, left, top, right, bottom = struct.unpack_from("<iiiiIIII",
                                                                                     side_data[Type.SPHERICAL])
    assert (left, top, right, bottom) == (spatial.QUARTER, 0, spatial.QUARTER, 0)  # the front 180°


def test_metadata_per_layout():
    assert spatial.metadata_for(OutputFormat.SBS).stereo_mode == spatial.LEFT_RIGHT
    assert spatial.metadata_for(OutputFormat.HTB).stereo_mode == spatial.TOP_BOTTOM
    assert spatial.metadata_for(OutputFormat.CROSS).stereo_mode == spatial.RIGHT_LEFT
    assert spatial.metadata_for(OutputFormat.SBS, swap_eyes=True).stereo_mode == spatial.RIGHT_LEFT
    assert spatial.metadata_for(OutputFormat.TB, swap_eyes=True) is None  # st3d has no bottom-top mode
    assert spatial.metadata_for(OutputFormat.ANAGLYPH) is None
    assert spatial.metadata_for(OutputFormat.SBS).equirect_bounds is None
    assert spatial.metadata_for(OutputFormat.VR180).equirect_bounds == (0, 0, spatial.QUARTER, spatial.QUARTER)


def test_a_file_that_is_not_mp4_gets_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0\0\0\x10ftypisom\0\0\0\0" + b"garbage")
    with pytest.raises(spatial.MediaError, match="not a complete mp4|no moov"):
        spatial.write_metadata(bad, spatial.metadata_for(OutputFormat.SBS))
    assert bad.read_bytes().endswith(b"garbage")  # left as it was


# --- end to end --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("layouts") / "clip.mp4", seconds=1.0, size=(96, 64), gop=15)


@pytest.mark.parametrize("fmt,swap,mode,sei", [
    (OutputFormat.VR180, False, spatial.LEFT_RIGHT, ("side_by_side", False)),
    (OutputFormat.CROSS, False, spatial.RIGHT_LEFT, None),
    (OutputFormat.SBS, True, spatial.RIGHT_LEFT, None),
])
def test_converted_jobs_carry_their_layout(backend, small_clip, fmt, swap, mode, sei):
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5, output_format=fmt, swap_eyes=swap),
                           "layout")
    steps.store_source(backend, job.job_id, small_clip)
    run_job(backend, job.job_id, workers=1)
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
    width, height = output_size(96, 64, fmt)
    with av.open(str(final)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (width, height)
        assert stream.frames == 30
    assert spatial.read_metadata(final).stereo_mode == mode
    if sei is None:  # no frame-packing SEI: x264 could only call frame 0 the left view
        assert Type.STEREO3D not in _frame_side_data(final)
    else:
        assert stereo_layout(final) == sei


def test_default_names_for_the_new_layouts():
    assert output_file_name("Trip", OutputFormat.VR180) == "Trip-3d_180_LR.mp4"
    assert output_file_name("Trip", OutputFormat.CROSS) == "Trip-3d_Cross.mp4"
    assert output_file_name("Trip", OutputFormat.SBS, swap_eyes=True) == "Trip-3d_LRF_Full_SBS_Swapped.mp4"


def test_the_cli_converts_a_photo_cross_eyed_with_the_eyes_swapped_back(home, tmp_path):
    import cv2
    from typer.testing import CliRunner

    from stereo_spot.cli.main import app

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    picture = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(photo), picture)
    result = CliRunner().invoke(app, ["convert", str(photo), "--format", "cross", "--swap-eyes",
                                      "--no-floating-window"])  # the photo byte for byte, edges included
    assert result.exit_code == 0, result.output
    written = tmp_path / "photo-3d_Cross_Swapped.png"
    packed = cv2.imread(str(written))
    assert packed.shape == (48, 128, 3)
    # cross with the eyes swapped back puts the left eye, the photo itself, on the left
    assert np.abs(packed[:, :64].astype(int) - picture.astype(int)).max() <= 1
    assert np.abs(packed[:, 64:].astype(int) - picture.astype(int)).mean() > 1  # the rendered right eye


def test_the_cli_refuses_an_unknown_layout(home, tmp_path):
    from typer.testing import CliRunner

    from stereo_spot.cli.main import app

    result = CliRunner().invoke(app, ["convert", str(tmp_path / "x.mp4"), "--format", "vr360"])
    assert result.exit_code == 2 and "vr180" in result.output
