"""RGB-D output (``--format rgbd`` / ``half-rgbd``): the picture beside the depth the engine estimated for it.

What each test is there to catch (each was seen red with the breakage planted):
- the right half not being the engine's depth: the source put there instead of the depth, the depth inverted
  (far = bright), or the depth taken before the estimator's state moved on (a fresh estimator per batch);
- the left half not being the source bytes, or the colour moving to the right with ``swap_eyes``;
- half RGB-D not squeezing both halves into the source's width;
- a stereo signal on a file that is no stereo pair (frame-packing SEI, ``st3d``), a comfort report for it;
- a still's depth half carrying the picture's alpha (a cut-out would hide the depth), ``--disparity`` accepted;
- iw3's names (``_RGBD``, ``_HRGBD``) and a converter that would convert its own RGB-D output again.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch
from av.sidedata.sidedata import Type
from typer.testing import CliRunner

from stereo_spot import keys, steps
from stereo_spot.choices import InvalidChoice, conversion_settings
from stereo_spot.cli.main import app
from stereo_spot.media import spatial
from stereo_spot.media.encode import settings_for
from stereo_spot.media.frames import stereo_layout
from stereo_spot.models import ConversionSettings, OutputFormat
from stereo_spot.naming import is_output_name, names_layout, output_file_name
from stereo_spot.runner import run_job
from stereo_spot.stereo.depth import create_depth_estimator
from stereo_spot.stereo.depth.base import DepthEstimator
from stereo_spot.stereo.engine import StereoEngine
from stereo_spot.stereo.errors import StereoInputError
from stereo_spot.stereo.image import convert_image
from stereo_spot.stereo.pack import output_size, squeeze
from stereo_spot.stereo.synthetic import parallax_clip
from tests.media_fixtures import make_clip

W, H = 64, 40


class TrueDepth(DepthEstimator):
    """The clip's true inverse depth, frame after frame: what the right half must show."""

    name = "true-depth"

    def __init__(self, depth: np.ndarray) -> None:
        self.depth = torch.from_numpy(depth)
        self.position = 0

    def reset(self) -> None:
        self.position = 0

    def estimate(self, frames: torch.Tensor) -> torch.Tensor:
        n = frames.shape[0]
        out = self.depth[self.position : self.position + n].unsqueeze(1).to(frames.device)
        self.position += n
        return out


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return parallax_clip(W, H, 5, seed=4)


def _grey(depth: np.ndarray) -> np.ndarray:
    return np.repeat(np.floor(depth * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def test_rgbd_is_the_source_beside_its_true_depth(scene) -> None:
    frames, depth = scene
    assert set(np.unique(depth)) == {0.0, 0.5, 1.0}  # far wall, middle layer, nearest layer
    engine = StereoEngine(ConversionSettings(output_format=OutputFormat.RGBD), device="cpu", depth=TrueDepth(depth))
    out = np.concatenate([engine.convert_batch(frames[:2]), engine.convert_batch(frames[2:])])
    assert out.shape == (5, H, 2 * W, 3)
    np.testing.assert_array_equal(out[:, :, :W], frames)
    np.testing.assert_array_equal(out[:, :, W:], _grey(depth))  # near = 255, far = 0, every frame its own
    assert engine.stats is None


def test_rgbd_right_half_is_the_depth_the_engine_estimated(scene) -> None:
    """The default estimator (with its temporal state) on both sides: the right half is what it gave."""
    frames, _ = scene
    engine = StereoEngine(ConversionSettings(output_format=OutputFormat.RGBD), device="cpu")
    out = np.concatenate([engine.convert_batch(frames[i : i + 1]) for i in range(len(frames))])
    reference = create_depth_estimator("heuristic", device="cpu")
    expected = [reference.estimate(torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0)
                for f in frames]
    depth = torch.cat(expected)[:, 0].numpy()
    assert depth.std() > 0.05  # a depth with structure, not a constant that any mistake would reproduce
    np.testing.assert_allclose(out[:, :, W:].astype(int), _grey(depth).astype(int), atol=1)


def test_half_rgbd_squeezes_both_halves_into_the_source_width(scene) -> None:
    frames, depth = scene
    engine = StereoEngine(ConversionSettings(output_format=OutputFormat.HALF_RGBD), device="cpu",
                          depth=TrueDepth(depth))
    out = engine.convert_batch(frames)
    assert out.shape == (5, H, W, 3) == (5, *output_size(W, H, OutputFormat.HALF_RGBD)[::-1], 3)
    source = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    colour = (squeeze(source, horizontal=True) * 255.0 + 0.5).floor().permute(0, 2, 3, 1).numpy()
    grey = (squeeze(torch.from_numpy(depth)[:, None], horizontal=True)[:, 0] * 255.0 + 0.5).floor().numpy()
    np.testing.assert_allclose(out[:, :, : W // 2], colour, atol=1)
    np.testing.assert_allclose(out[:, :, W // 2 :], np.repeat(grey[..., None], 3, axis=-1), atol=1)


def test_rgbd_keeps_the_colour_on_the_left_and_refuses_swapped_eyes(scene) -> None:
    frames, depth = scene
    with pytest.raises(InvalidChoice, match="--swap-eyes: --format rgbd is colour and depth"):
        conversion_settings(output_format="rgbd", swap_eyes=True)
    # set directly (a job record), the colour still stays where RGB-D players look for it
    engine = StereoEngine(ConversionSettings(output_format=OutputFormat.RGBD, swap_eyes=True), device="cpu",
                          depth=TrueDepth(depth))
    np.testing.assert_array_equal(engine.convert_batch(frames)[:, :, :W], frames)


def test_no_stereo_signal_for_colour_and_depth() -> None:
    for fmt in (OutputFormat.RGBD, OutputFormat.HALF_RGBD):
        assert spatial.metadata_for(fmt) is None
        assert settings_for(fmt).frame_packing is None
        assert fmt.is_rgbd
    assert not any(fmt.is_rgbd for fmt in OutputFormat if fmt not in (OutputFormat.RGBD, OutputFormat.HALF_RGBD))


def test_iw3_names() -> None:
    # nagadomi/nunif iw3/utils.py: RGBD_SUFFIX = "_RGBD", HALF_RGBD_SUFFIX = "_HRGBD"
    assert output_file_name("holiday", OutputFormat.RGBD) == "holiday-3d_RGBD.mp4"
    assert output_file_name("holiday", OutputFormat.HALF_RGBD) == "holiday-3d_HRGBD.mp4"
    assert is_output_name("holiday-3d_RGBD.mp4") and is_output_name("holiday-3d_HRGBD.mp4")
    assert names_layout("holiday_RGBD.mp4", OutputFormat.RGBD)
    assert not names_layout("holiday_SBS.mp4", OutputFormat.RGBD)


def test_a_still_sits_beside_its_depth_with_the_depth_opaque(tmp_path) -> None:
    frames, _ = parallax_clip(W, H, 1, seed=5)
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, :9] = 0
    src = tmp_path / "photo.png"
    cv2.imwrite(str(src), np.dstack([frames[0][..., ::-1], alpha]))
    out = convert_image(src, tmp_path / "photo-3d_RGBD.png", ConversionSettings(output_format=OutputFormat.RGBD))
    packed = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert packed.shape == (H, 2 * W, 4)
    np.testing.assert_array_equal(packed[:, :W, :3][..., ::-1], frames[0])
    np.testing.assert_array_equal(packed[:, :W, 3], alpha)
    assert packed[:, W:, 3].min() == 255  # the depth half is opaque
    grey = packed[:, W:, :3]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all() and grey.std() > 5
    with pytest.raises(StereoInputError, match="--disparity renders a stereo pair"):
        convert_image(src, tmp_path / "again.png", ConversionSettings(output_format=OutputFormat.RGBD),
                      disparity=np.zeros((H, W), np.float32))


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("rgbd") / "clip.mp4", seconds=1.0, size=(96, 64), gop=15)


def test_a_converted_rgbd_job_carries_no_stereo_signal_and_no_comfort_report(backend, small_clip) -> None:
    job = steps.create_job(backend, ConversionSettings(segment_seconds=0.5, output_format=OutputFormat.RGBD),
                           "rgbd")
    steps.store_source(backend, job.job_id, small_clip)
    run_job(backend, job.job_id, workers=1)
    final = backend.objects.local_path(backend.output_bucket, keys.final_key(job.job_id))
    with av.open(str(final)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (192, 64)
        assert stream.frames == 30
        frame = next(container.decode(video=0))
        assert Type.STEREO3D not in {d.type for d in frame.side_data}
        picture = frame.to_ndarray(format="rgb24")
    assert stereo_layout(final) is None and spatial.read_metadata(final).stereo_mode is None
    assert not backend.objects.exists(backend.output_bucket, keys.report_key(job.job_id))
    depth_half = picture[:, 96:].astype(int)
    assert np.abs(depth_half[..., 0] - depth_half[..., 2]).max() <= 3  # grey, up to the encoder's chroma


def test_the_cli_refuses_a_comfort_report_for_rgbd(home, tmp_path, small_clip) -> None:
    result = CliRunner().invoke(app, ["convert", str(small_clip), "--format", "rgbd", "--report",
                                      str(tmp_path / "report.json")])
    assert result.exit_code != 0
    assert "--report works with stereo layouts: --format rgbd is colour and depth" in result.output
    assert "Traceback" not in result.output


def test_the_pipelines_format_parameter_takes_the_rgbd_layouts() -> None:
    from stereo_spot.components.chunk import settings_overrides

    assert settings_overrides("half-rgbd", "", "") == {"output_format": "half-rgbd"}
    assert settings_overrides(" rgbd ", "", "") == {"output_format": "rgbd"}


@pytest.mark.parametrize("choice", [{"output_format": OutputFormat.RGBD}, {"depth_output": True}],
                         ids=["rgbd", "depth-video"])
def test_a_result_without_a_second_eye_loads_no_inpainter(tmp_path, choice) -> None:
    """Colour + depth and the depth video fill no holes: the inpainter asked for is not loaded (a diffusion
    model is gigabytes on a GPU). Catches the engine loading ``--inpaint`` whatever the result; the stereo
    result, which needs it, still fails on the missing weights."""
    missing = str(tmp_path / "no-such-inpainter")
    engine = StereoEngine(ConversionSettings(inpaint="diffusion", inpaint_weights=missing, **choice), device="cpu")
    assert engine.inpainter.name == "classical"
    with pytest.raises(Exception, match="no-such-inpainter"):
        StereoEngine(ConversionSettings(inpaint="diffusion", inpaint_weights=missing), device="cpu")
