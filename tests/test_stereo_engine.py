"""The stereo engine end to end: frame batches, still images (with a given disparity) and video segments."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.stereo.engine import StereoEngine, frames_to_tensor
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.image import convert_image
from stereo_spot.stereo.pack import output_size
from stereo_spot.stereo.synthetic import parallax_clip, texture

W, H = 160, 96


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    frames, _ = parallax_clip(W, H, 6, seed=3)
    return frames


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_convert_batch_shapes(fmt: OutputFormat, clip: np.ndarray) -> None:
    engine = StereoEngine(ConversionSettings(output_format=fmt), device="cpu")
    out = engine.convert_batch(clip[:3])
    out_w, out_h = engine.output_size(W, H)
    assert (out_w, out_h) == output_size(W, H, fmt)
    assert out.shape == (3, out_h, out_w, 3) and out.dtype == np.uint8


def test_sbs_left_half_is_the_source_and_zero_divergence_gives_identical_eyes(clip: np.ndarray) -> None:
    engine = StereoEngine(ConversionSettings(divergence=0.0), device="cpu")
    out = engine.convert_batch(clip[:2])
    np.testing.assert_array_equal(out[:, :, :W], clip[:2])
    np.testing.assert_array_equal(out[:, :, W:], clip[:2])


def test_default_settings_make_a_visible_and_bounded_disparity(clip: np.ndarray) -> None:
    engine = StereoEngine(ConversionSettings(), device="cpu")
    out = engine.convert_batch(clip)
    assert np.abs(out[:, :, W:].astype(int) - out[:, :, :W]).mean() > 2  # the eyes differ
    with torch.inference_mode():
        _, left = frames_to_tensor(clip[:1], engine.device)
        disparity = engine.disparity(left)
    limit = 0.02 * W * 0.5 + 1e-4  # divergence 2 %, convergence 0.5: at most 1 % of the width either way
    assert disparity.abs().max() <= limit


def test_right_views_use_the_given_disparity(clip: np.ndarray) -> None:
    engine = StereoEngine(ConversionSettings(), device="cpu")
    right = engine.right_views(clip[:1], np.full((1, H, W), 3.0, np.float32))
    expected = clip[0, :, 3:].astype(np.float32) / 255
    np.testing.assert_allclose(right[0].permute(1, 2, 0).numpy()[:, : W - 3], expected, atol=1e-5)


def test_warm_up_gives_the_state_of_a_continuous_run(clip: np.ndarray) -> None:
    settings = ConversionSettings()
    continuous = StereoEngine(settings, device="cpu")
    continuous.convert_batch(clip[:3])
    expected = continuous.convert_batch(clip[3:])
    warmed = StereoEngine(settings, device="cpu")
    warmed.warm_up(clip[:3])
    np.testing.assert_array_equal(warmed.convert_batch(clip[3:]), expected)
    cold = StereoEngine(settings, device="cpu").convert_batch(clip[3:])
    assert not np.array_equal(cold, expected)  # the warm-up mattered


@pytest.mark.parametrize("height,width", [(1, 1), (5, 7), (64, 2)])
def test_tiny_and_odd_frames_convert(height: int, width: int) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, height, width, 3), dtype=np.uint8)
    for fmt in OutputFormat:
        engine = StereoEngine(ConversionSettings(output_format=fmt), device="cpu")
        engine.convert_batch(frames)
        out = engine.convert_batch(frames)
        out_w, out_h = output_size(width, height, fmt)
        assert out.shape == (3, out_h, out_w, 3)


def test_bad_frames_are_refused() -> None:
    engine = StereoEngine(ConversionSettings(), device="cpu")
    with pytest.raises(StereoInputError):
        engine.convert_batch(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(StereoInputError):
        engine.convert_batch(np.zeros((8, 8, 3), np.uint8))


# --- still images -------------------------------------------------------------------------------------------


def _texture_image(h: int = H, w: int = W) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return (texture(9, xs, ys) * 255 + 0.5).astype(np.uint8)


def test_image_with_a_disparity_file_shifts_the_right_view(tmp_path: Path) -> None:
    rgb = _texture_image()
    src = tmp_path / "photo.png"
    cv2.imwrite(str(src), rgb[..., ::-1])
    disparity = np.full((H, W), 4.0, np.float32)
    disparity[:, : W // 2] = 2.0
    np.save(tmp_path / "d.npy", disparity)
    # the whole picture in front of the screen: without the floating window, whose masks would cover the edges
    out = convert_image(src, tmp_path / "out.png", ConversionSettings(floating_window=False),
                        disparity=np.load(tmp_path / "d.npy"))
    assert out == tmp_path / "out.png"
    packed = cv2.imread(str(out))[..., ::-1]
    assert packed.shape == (H, 2 * W, 3)
    np.testing.assert_array_equal(packed[:, :W], rgb)
    right = packed[:, W:].astype(int)
    # right(x - d) = left(x): 4 px on the right half of the picture, 2 px on the left half
    np.testing.assert_array_equal(right[:, W // 2 : W - 4], rgb[:, W // 2 + 4 :])
    np.testing.assert_array_equal(right[:, 0 : W // 2 - 4], rgb[:, 2 : W // 2 - 2])


def test_image_disparity_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "photo.png"
    cv2.imwrite(str(src), _texture_image())
    with pytest.raises(ValueError, match=r"96x160"):
        convert_image(src, tmp_path / "out.png", ConversionSettings(), disparity=np.zeros((H, W + 1), np.float32))
    with pytest.raises(StereoInputError, match="NaN"):
        convert_image(src, tmp_path / "out.png", ConversionSettings(), disparity=np.full((H, W), np.nan, np.float32))
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("kind", ["gray", "rgba", "rgb16"])
def test_images_keep_alpha_depth_and_become_png(tmp_path: Path, kind: str) -> None:
    rgb = _texture_image(33, 51)  # odd sizes on purpose
    if kind == "gray":
        stored = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif kind == "rgba":
        alpha = np.full((33, 51), 255, np.uint8)
        alpha[:, :10] = 0
        stored = np.dstack([rgb[..., ::-1], alpha])
    else:
        stored = rgb[..., ::-1].astype(np.uint16) * 257
    src = tmp_path / f"{kind}.png"
    cv2.imwrite(str(src), stored)
    out = convert_image(src, tmp_path / f"{kind}.jpg", ConversionSettings(output_format=OutputFormat.HSBS))
    assert out.suffix == ".png"
    packed = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert packed.shape[:2] == (33, 52)
    if kind == "rgba":
        assert packed.shape[2] == 4 and packed[:, :4, 3].max() == 0 and packed[:, 10:20, 3].min() == 255
    if kind == "rgb16":
        assert packed.dtype == np.uint16
    else:
        assert packed.dtype == np.uint8


def test_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(StereoInputError, match="not an image"):
        convert_image(bad, tmp_path / "out.png", ConversionSettings())
    with pytest.raises(StereoInputError, match="does not exist"):
        convert_image(tmp_path / "missing.png", tmp_path / "out.png", ConversionSettings())


# --- video segments ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stereo_spot.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0, size=(W, H), fps=24, audio=False)


def test_convert_segment_keeps_every_frame_and_its_timestamp(sample_clip: Path, tmp_path: Path) -> None:
    from stereo_spot.media.frames import read_frames
    from stereo_spot.media.probe import probe
    from stereo_spot.stereo.segment import convert_segment

    done: list[int] = []
    stats = convert_segment(sample_clip, tmp_path / "sbs.mp4", ConversionSettings(), batch_size=5,
                            progress=done.append)
    source = [(f.pts, f.time_base) for f in read_frames(sample_clip)]
    output = [(f.pts, f.time_base) for f in read_frames(tmp_path / "sbs.mp4")]
    assert stats.frames == len(source) == 24 == sum(done)
    assert [p for p, _ in output] == [p for p, _ in source]
    assert output[0][1] == source[0][1]
    assert abs(stats.duration_seconds - 1.0) < 1e-6
    info = probe(tmp_path / "sbs.mp4").video
    assert (info.width, info.height) == (2 * W, H)


def test_convert_segment_with_warm_up_and_window(sample_clip: Path, tmp_path: Path) -> None:
    from stereo_spot.media.frames import read_frames
    from stereo_spot.stereo.segment import convert_segment

    stats = convert_segment(sample_clip, tmp_path / "a.mp4", ConversionSettings(output_format=OutputFormat.ANAGLYPH),
                            window=(0.5, None), warmup_src=sample_clip)
    assert stats.frames == 12
    assert len(list(read_frames(tmp_path / "a.mp4"))) == 12
    with pytest.raises(StereoInputError, match="no video frames"):
        convert_segment(sample_clip, tmp_path / "b.mp4", ConversionSettings(), window=(5.0, 6.0))


def test_convert_segment_reports_failures_without_hanging(sample_clip: Path, tmp_path: Path) -> None:
    from stereo_spot.media.errors import MediaError
    from stereo_spot.stereo.depth import DepthEstimator
    from stereo_spot.stereo.segment import convert_segment

    class FailsLater(DepthEstimator):
        calls = 0

        def reset(self) -> None:
            pass

        def estimate(self, frames: torch.Tensor) -> torch.Tensor:
            FailsLater.calls += 1
            if FailsLater.calls > 3:
                raise RuntimeError("depth model crashed")
            return torch.full_like(frames[:, :1], 0.5)

    engine = StereoEngine(ConversionSettings(), device="cpu", depth=FailsLater())
    with pytest.raises(RuntimeError, match="depth model crashed"):
        convert_segment(sample_clip, tmp_path / "x.mp4", ConversionSettings(), engine=engine, batch_size=2)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(MediaError):
        convert_segment(not_video, tmp_path / "y.mp4", ConversionSettings())
