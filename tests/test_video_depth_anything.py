"""Video-Depth-Anything against an independent reference of the published inference (tests/vda_reference.py).

Checkpoints are written in the official layout (a plain state dict saved with ``torch.save`` as
``video_depth_anything_vits.pth``) from the authors' key set as the reference reads it off their module, filled
with seeded random tensors, and loaded through the project's real loading code (strict). The reference check runs
at the real Small configuration (ViT-S/14 encoder, features 64, out_channels 48/96/192/384, 32-frame windows) on
frames small enough to keep it under a few seconds here.

What each test catches (each breakage was planted; the ``planted`` tests plant three of them on every run):

* ``test_the_module_has_the_authors_keys_and_shapes`` — a parameter renamed, missing, extra or reshaped in any of
  the three published configurations (e.g. the temporal attention's bias-free q/k/v given biases, the position
  table not a state-dict buffer, the 3rd resize layer not an identity).
* ``test_windowed_inference_agrees_with_the_reference`` — anything in the network or the windows: the encoder's
  position interpolation, a head stage, the fusion order, the keyframes, the cross-fade, the alignment.
* ``test_a_planted_breakage_turns_the_reference_check_red`` — temporal attention disabled (a motion module
  returning its input), window overlap dropped (a window keeps its own first inputs instead of the previous
  window's keyframes), alignment skipped (scale 1, shift 0).
* ``test_streaming_agrees_with_the_reference`` — the cached context not passed (each frame alone), the authors'
  choice of cached frames replaced by the latest 31 (2.6e-2 from frame 30 on; identical before, hence 40 frames),
  the position table indexed from its end. (The frame about 41 back only differs from the first frame's copies
  after 42 frames: not covered.)
* ``test_a_scene_cut_inside_a_batch_starts_the_stream_afresh`` — the stream or the range not restarted at a cut
  in the middle of a batch.
* ``test_a_warm_up_of_memory_frames_reproduces_a_continuous_run`` — the engine's stream keeping the first frame
  for ever (unbounded memory), ``memory_frames`` too short (a warm-up 4 frames shorter differs).
* ``test_one_second_segments_match_one_run`` — the same through the CLI's parallel segments: the engine's stream
  keeping the first frame for ever (seams measured 47.3 and 38.5 dB; 99 dB or 68 dB when right). A memory
  shortened to a third (2 instead of 6 attentions' reach) still gave 59.7 dB on this slow pan: the warm-up test
  above is what catches that.
* ``test_by_name_through_the_hub_and_a_non_commercial_licence_said_once`` — a name not reaching its repository
  or engine model, the licence line missing for a CC-BY-NC checkpoint, printed for an Apache-2.0 one, or printed
  by the workers instead of once before the work (it was first printed where the snapshot is resolved, in each
  worker process; with ``--workers 2`` that line never reaches the command's own output, and the test went red).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stereo_spot import hub_models
from stereo_spot.cli.main import app
from stereo_spot.media.frames import read_frames
from stereo_spot.sample import write_sample
from stereo_spot.stereo.depth import create_depth_estimator, vda_inference, vda_net
from stereo_spot.stereo.depth import video_depth_anything as vda
from stereo_spot.stereo.depth.vda_net import CONFIGS, VideoDepthNet, config_for_state_dict
from stereo_spot.stereo.synthetic import parallax_clip
from stereo_spot.weights import WeightsError
from tests import vda_reference as ref

H, W = 28, 42  # 2 x 3 patches: the network's own size, so no resizing on either side
FRAMES = 40  # two windows (0..31, 22..53)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Small matrices on a shared machine: one thread is many times faster than two contending ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_checkpoint(folder, state: dict[str, torch.Tensor], name: str = "video_depth_anything_vits.pth"):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / name)
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    state = ref.random_checkpoint("vits", seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("vda") / "small", state), state


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    frames, _ = parallax_clip(W, H, FRAMES, seed=4)
    return frames


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def reference_windows(small, clip) -> np.ndarray:
    return ref.video_depth(small[1], "vits", ref.normalise(clip))


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("encoder", ["vits", "vitb", "vitl"])
def test_the_module_has_the_authors_keys_and_shapes(encoder):
    with torch.device("meta"):
        net = VideoDepthNet(CONFIGS[encoder])
    got = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    expected = ref.authors_keys(encoder)
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    assert config_for_state_dict(net.state_dict()) == CONFIGS[encoder]


def test_windowed_inference_agrees_with_the_reference(small, clip, reference_windows):
    estimator = vda.VideoDepthAnythingDepth(str(small[0]), "cpu", input_size=H)
    assert estimator.loaded.net.config == CONFIGS["vits"] and not estimator.loaded.metric
    got = estimator.predict_clip(as_tensor(clip)).numpy()
    assert got.shape == reference_windows.shape == (FRAMES, H, W)
    # the reference varies over the picture and from window to window: the check is not of a constant
    assert reference_windows.std(axis=(1, 2)).min() > 0.05 * np.abs(reference_windows).mean()
    assert relative_difference(got, reference_windows) < 1e-4, relative_difference(got, reference_windows)


def _disabled_temporal_module(monkeypatch):
    forward = vda_net.TemporalModule.forward
    monkeypatch.setattr(vda_net.TemporalModule, "forward",
                        lambda self, x, frames, cached=None: (x, forward(self, x, frames, cached)[1]))


PLANTED = {
    "temporal attention disabled": _disabled_temporal_module,
    "window overlap dropped": lambda mp: mp.setattr(vda_inference, "carried_over",
                                                    lambda previous, window: window[:vda_inference.OVERLAP]),
    "alignment skipped": lambda mp: mp.setattr(vda_inference, "window_scale_shift", lambda p, t: (1.0, 0.0)),
}


@pytest.mark.parametrize("breakage", list(PLANTED))
def test_a_planted_breakage_turns_the_reference_check_red(small, clip, reference_windows, monkeypatch, breakage):
    PLANTED[breakage](monkeypatch)
    estimator = vda.VideoDepthAnythingDepth(str(small[0]), "cpu", input_size=H)
    got = estimator.predict_clip(as_tensor(clip)).numpy()
    assert relative_difference(got, reference_windows) > 1e-2, relative_difference(got, reference_windows)


def test_streaming_agrees_with_the_reference(small, clip):
    # past frame 11, where the authors start dropping the oldest cached frame but the first, and past frame 30,
    # from where the first frame (kept for ever) makes their cache differ from the latest 31 frames'
    count = FRAMES
    expected = ref.streamed_depth(small[1], "vits", ref.normalise(clip[:count]))
    net = vda.load_vda(str(small[0]), torch.device("cpu")).net
    state = vda_inference.StreamState(keep_first=True)
    inputs = vda_inference.preprocess(as_tensor(clip[:count]), (H, W))
    # in batches of 7 (the encoder runs on a batch at once, the head frame after frame)
    got = torch.cat([vda_inference.infer_stream(net, inputs[i:i + 7], state, (H, W))
                     for i in range(0, count, 7)]).numpy()
    assert relative_difference(got, expected) < 1e-4, relative_difference(got, expected)
    alone = ref.network(small[1], ref.PUBLISHED["vits"], ref.normalise(clip[count - 1:count]))[0][0].numpy()
    assert relative_difference(alone, expected[-1]) > 1e-2  # the context matters


def test_input_size_follows_the_authors_resize():
    assert vda_inference.input_size_for(1080, 1920) == (518, 924)  # the short side at 518, multiples of 14
    assert vda_inference.input_size_for(720, 1280) == (518, 924)
    assert vda_inference.input_size_for(1920, 1080) == (924, 518)
    # wider than 16:9 the target shrinks: 2.4:1 → int(518 × 1.777 / 2.4) = 383 → 378, a multiple of 14
    assert vda_inference.input_size_for(800, 1920) == (378, 910)
    assert vda_inference.input_size_for(28, 42, input_size=28) == (28, 42)
    for height, width in ((480, 640), (1080, 1440), (333, 1000), (2160, 3840), (100, 101), (1920, 800)):
        assert vda_inference.input_size_for(height, width) == ref.network_size(height, width), (height, width)


@pytest.fixture(scope="module")
def short_window(tmp_path_factory):
    """The Small encoder with a narrow head and a 4-frame temporal window: a memory of 18 frames."""
    state = ref.random_checkpoint("vits", seed=1, num_frames=4, features=32, out_channels=[32, 32, 32, 32])
    folder = save_checkpoint(tmp_path_factory.mktemp("vda") / "short", state)
    (folder / vda.OPTIONS_FILE).write_text(json.dumps({"input_size": H}))  # the frames' own size: no resizing
    return folder


def test_the_engine_estimates_normalised_depth_in_batches_of_any_size(short_window, clip):
    frames = as_tensor(clip[:12])
    whole = create_depth_estimator("video-depth-anything", str(short_window), "cpu")
    assert whole.window == 4 and whole.memory_frames == 3 * 2 * 3 + 16
    parts = vda.VideoDepthAnythingDepth(str(short_window), "cpu", input_size=H)
    together = whole.estimate(frames)
    apart = torch.cat([parts.estimate(frames[i:i + 5]) for i in range(0, 12, 5)])
    assert together.shape == (12, 1, H, W) and float(together.min()) >= 0 and float(together.max()) <= 1
    assert float(together.std()) > 0.05
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="the published windows are 32 frames; this checkpoint's .* is 4"):
        whole.predict_clip(frames)


def test_a_scene_cut_inside_a_batch_starts_the_stream_afresh(short_window):
    rng = np.random.default_rng(5)
    dark = (rng.random((6, H, W, 3)) * 80).astype(np.uint8)
    bright = (170 + rng.random((6, H, W, 3)) * 85).astype(np.uint8)
    across = vda.VideoDepthAnythingDepth(str(short_window), "cpu")
    after_cut = across.estimate(as_tensor(np.concatenate([dark, bright])))[6:]
    assert across.cuts_detected == 1
    fresh = vda.VideoDepthAnythingDepth(str(short_window), "cpu").estimate(as_tensor(bright))
    torch.testing.assert_close(after_cut, fresh, atol=1e-6, rtol=0)


def test_a_warm_up_of_memory_frames_reproduces_a_continuous_run(short_window):
    # independent random frames: what each earlier frame contributes differs (a slow pan would make the frames
    # a warm-up stands in for nearly the same as the real ones)
    frames = as_tensor((np.random.default_rng(3).random((40, H, W, 3)) * 255).astype(np.uint8))
    continuous = vda.VideoDepthAnythingDepth(str(short_window), "cpu", memory=2, input_size=H)
    expected = continuous.estimate(frames)[-1]
    warmup = continuous.memory_frames
    assert warmup == 3 * 2 * 3 + 2

    def after(frames_before: int) -> torch.Tensor:
        warmed = vda.VideoDepthAnythingDepth(str(short_window), "cpu", memory=2, input_size=H)
        warmed.estimate(frames[-1 - frames_before:-1])
        return warmed.estimate(frames[-1:])[0]

    torch.testing.assert_close(after(warmup), expected, atol=1e-6, rtol=0)
    # the memory is as long as it says: 4 frames short, the depth differs (measured 1.3e-3)
    assert float((after(warmup - 4) - expected).abs().max()) > 5e-4


def test_wrong_weights_are_one_line_errors(tmp_path, small):
    with pytest.raises(WeightsError, match="needs --depth-weights"):
        create_depth_estimator("video-depth-anything", None, "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="must hold one Video-Depth-Anything checkpoint"):
        create_depth_estimator("video-depth-anything", str(tmp_path / "empty"), "cpu")
    broken = dict(small[1])
    broken["head.extra.weight"] = torch.zeros(1)
    save_checkpoint(tmp_path / "extra", broken)
    with pytest.raises(WeightsError, match="cannot load the depth model .*head.extra.weight"):
        create_depth_estimator("video-depth-anything", str(tmp_path / "extra"), "cpu")
    save_checkpoint(tmp_path / "options", small[1])
    (tmp_path / "options" / vda.OPTIONS_FILE).write_text('{"input_size": "big"}')
    with pytest.raises(WeightsError, match="input_size must be a whole number of pixels from 14 to 4096, not 'big'"):
        create_depth_estimator("video-depth-anything", str(tmp_path / "options"), "cpu")


def test_a_metric_checkpoint_is_inverted(tmp_path, small, clip):
    save_checkpoint(tmp_path / "metric", small[1], name="metric_video_depth_anything_vits.pth")
    metric = vda.VideoDepthAnythingDepth(str(tmp_path / "metric"), "cpu", input_size=H)
    relative = vda.VideoDepthAnythingDepth(str(small[0]), "cpu", input_size=H)
    assert metric.loaded.metric and not relative.loaded.metric
    frames = as_tensor(clip)
    metres = ref.video_depth(small[1], "vits", ref.normalise(clip), metric=True)
    got = metric.predict_clip(frames).numpy()
    np.testing.assert_allclose(got, 1.0 / np.maximum(metres, 1e-3), rtol=1e-3)


def test_the_catalog_names_the_video_models_with_their_licences():
    small_model = hub_models.CATALOG["video-depth-anything-small"]
    assert small_model.engine_model == "video-depth-anything" and small_model.video_consistent
    assert small_model.licence == "Apache-2.0" and hub_models.licence_notice("video-depth-anything-small") is None
    large = hub_models.CATALOG["video-depth-anything-large"]
    assert large.licence == "CC-BY-NC-4.0" and not large.commercial_use
    assert "CC-BY-NC-4.0" in hub_models.licence_notice("video-depth-anything-large@abc")
    listed = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "260"})
    assert listed.exit_code == 0
    row = next(line for line in listed.output.splitlines() if "video-depth-anything-base " in line)
    assert "CC-BY-NC-4.0" in row and "113.1M" in row and "yes" in row


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.slow
def test_one_second_segments_match_one_run(home, tmp_path, monkeypatch, short_window):
    monkeypatch.setenv("STEREO_SPOT_CRF", "0")
    fps = 8  # the depth's memory (18 + 16 frames) is about 4 s: the later segments start from a warm-up alone
    clip_path = write_sample(tmp_path / "clip.mp4", seconds=7.0, size=(W, H), fps=fps, gop=fps)

    def convert(name: str, seconds: float) -> np.ndarray:
        out = tmp_path / f"{name}.mp4"
        result = CliRunner().invoke(app, ["convert", str(clip_path), "-o", str(out), "--segment-seconds",
                                          str(seconds), "--workers", "1", "--depth-model", "video-depth-anything",
                                          "--depth-weights", str(short_window)])
        assert result.exit_code == 0, result.output
        return np.stack([frame.rgb for frame in read_frames(out)])

    segmented, single = convert("segmented", 1.0), convert("single", 100.0)
    assert segmented.shape == single.shape == (7 * fps, H, 2 * W, 3)
    seams = [min(_psnr(segmented[s * fps - 1], single[s * fps - 1]), _psnr(segmented[s * fps], single[s * fps]))
             for s in range(1, 7)]
    print("\nPSNR at the seams: " + ", ".join(f"{v:.1f}" for v in seams))
    assert min(seams) >= 40.0 and _psnr(segmented, single) >= 40.0


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    from tests.fake_hub import serving

    yield from serving({}, tmp_path / "hf-cache", monkeypatch)


@pytest.mark.slow
def test_by_name_through_the_hub_and_a_non_commercial_licence_said_once(fake_hub, short_window, home, tmp_path):
    # the checkpoint file as the authors' repositories hold it (and the small input size for this machine)
    for name in ("video-depth-anything-small", "video-depth-anything-base"):
        fake_hub.add_repo(hub_models.CATALOG[name].repo_id, short_window)
    estimator = create_depth_estimator("video-depth-anything-small", None, "cpu")
    assert isinstance(estimator, vda.VideoDepthAnythingDepth) and estimator.window == 4
    clip_path = write_sample(tmp_path / "clip.mp4", seconds=1.0, size=(W, H), fps=8, gop=4)
    runner = CliRunner()
    small = runner.invoke(app, ["convert", str(clip_path), "-o", str(tmp_path / "a.mp4"), "--depth-model",
                                "video-depth-anything-small", "--segment-seconds", "0.5", "--workers", "1"])
    assert small.exit_code == 0, small.output
    assert "non-commercial" not in small.output
    base = runner.invoke(app, ["convert", str(clip_path), "-o", str(tmp_path / "b.mp4"), "--depth-model",
                               "video-depth-anything-base", "--segment-seconds", "0.5", "--workers", "2"])
    assert base.exit_code == 0, base.output
    assert base.output.count("licensed CC-BY-NC-4.0 (non-commercial use only") == 1, base.output
