"""Where the engine runs: devices → worker plan, free memory → batch, codecs → encoder, and the frame-packing SEI
that an encoder without x264's option (x265, NVENC) gets written into its packets, in H.264's or HEVC's syntax."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from stereo_spot.media.encode import EncodeSettings, frame_packing_sei, sei_writer, settings_for, with_sei
from stereo_spot.media.frames import VideoWriter, read_frames, stereo_layout
from stereo_spot.models import OutputFormat
from stereo_spot.stereo import devices
from stereo_spot.stereo.devices import (
    DeviceError,
    batch_frames_for_memory,
    choose_encoder,
    plan_workers,
    resolve_devices,
)

GiB = 2**30


# --- devices → workers -------------------------------------------------------------------------------------


def test_devices_follow_the_request_and_what_is_visible() -> None:
    assert resolve_devices(None, 0) == ["cpu"]
    assert resolve_devices(None, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert resolve_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert resolve_devices("cuda:1", 2) == ["cuda:1"]
    assert resolve_devices("CPU", 8) == ["cpu"]
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        resolve_devices("cuda", 0)
    with pytest.raises(DeviceError, match="no GPU 2 .*GPUs 0..1 are visible"):
        resolve_devices("cuda:2", 2)
    with pytest.raises(DeviceError, match="not a device"):
        resolve_devices("tpu", 2)
    with pytest.raises(DeviceError, match="cuda:N"):
        resolve_devices("cuda:x", 2)


def test_one_worker_per_gpu_and_one_per_core_on_the_cpu() -> None:
    gpus = plan_workers(["cuda:0", "cuda:1", "cuda:2", "cuda:3"], cores=32)
    assert gpus.devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:3") and gpus.threads == 8 and gpus.on_gpu
    pinned = plan_workers(["cuda:1"], cores=16)
    assert pinned.devices == ("cuda:1",) and pinned.threads == 16
    cpu = plan_workers(["cpu"], cores=6)
    assert cpu.devices == ("cpu",) * 6 and cpu.threads == 1 and not cpu.on_gpu
    # an explicit count deals the GPUs round-robin; never more workers than segments
    assert plan_workers(["cuda:0", "cuda:1"], cores=8, workers=3).devices == ("cuda:0", "cuda:1", "cuda:0")
    assert plan_workers(["cuda:0", "cuda:1"], cores=8, segments=1).devices == ("cuda:0",)
    assert plan_workers(["cpu"], cores=2, workers=2).threads == 1


def test_cli_refuses_a_device_this_machine_does_not_have(tmp_path: Path, home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from stereo_spot.cli.main import app
    from stereo_spot.sample import write_sample

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)
    clip = write_sample(tmp_path / "c.mp4", seconds=0.2, size=(64, 48), fps=10, audio=False)
    result = CliRunner().invoke(app, ["convert", str(clip), "-o", str(tmp_path / "o.mp4"), "--device", "cuda:3"])
    assert result.exit_code != 0
    assert "no GPU 3" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.mp4").exists()


# --- free memory → batch -----------------------------------------------------------------------------------


def test_batch_follows_free_memory() -> None:
    assert batch_frames_for_memory(None, 1920, 1080) == devices.DEFAULT_BATCH_FRAMES  # the CPU
    assert batch_frames_for_memory(80 * GiB, 1920, 1080) == devices.MAX_GPU_BATCH_FRAMES
    small = batch_frames_for_memory(4 * GiB, 1920, 1080)
    half = batch_frames_for_memory(2 * GiB, 1920, 1080)
    assert 1 <= half < small < devices.MAX_GPU_BATCH_FRAMES
    assert abs(small - 2 * half) <= 1  # proportional to the free memory
    assert batch_frames_for_memory(4 * GiB, 3840, 2160) < small  # 4K frames take four times the memory
    assert batch_frames_for_memory(10 * 2**20, 1920, 1080) == 1  # never below one frame


# --- codecs → encoder --------------------------------------------------------------------------------------


def test_encoder_choice() -> None:
    both = {"libx264", "h264_nvenc"}
    assert choose_encoder(both, gpu=True, usable={"h264_nvenc"}) == "h264_nvenc"
    assert choose_encoder(both, gpu=True, usable=set()) == "libx264"  # compiled in, but no driver here
    assert choose_encoder({"libx264"}, gpu=True, usable={"h264_nvenc"}) == "libx264"
    assert choose_encoder(both, gpu=False, usable={"h264_nvenc"}) == "libx264"  # the CPU converts
    assert devices.encoder_for("cpu") == "libx264"


def test_nvenc_settings_keep_the_layout_and_quality_level() -> None:
    nvenc = settings_for(OutputFormat.SBS, codec="h264_nvenc")
    assert nvenc.frame_packing == 3 and nvenc.sei_in_packets
    options = nvenc.codec_options()
    assert "x264-params" not in options and options["cq"] == str(nvenc.crf) and options["rc"] == "vbr"
    x264 = settings_for(OutputFormat.TB)
    assert not x264.sei_in_packets and x264.codec_options()["x264-params"] == "frame-packing=4"
    assert not settings_for(OutputFormat.ANAGLYPH, codec="h264_nvenc").sei_in_packets  # a 2D picture: no SEI


# --- the frame-packing SEI ---------------------------------------------------------------------------------


def _x264_access_unit(frame_packing: int | None) -> bytes:
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height, context.pix_fmt = 64, 48, "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = {"preset": "fast", **({"x264-params": f"frame-packing={frame_packing}"} if frame_packing
                                            else {})}
    context.open()
    frame = av.VideoFrame(64, 48, "yuv420p")
    frame.pts = 0
    return bytes((context.encode(frame) + context.encode(None))[0])


@pytest.mark.parametrize("arrangement", [3, 4])
def test_our_sei_is_the_one_x264_writes(arrangement: int) -> None:
    sei = frame_packing_sei(arrangement)
    assert sei[4:] in _x264_access_unit(arrangement)  # bit for bit, after the start code
    assert sei[4:] not in _x264_access_unit(None)


def test_sei_goes_before_the_first_slice() -> None:
    unit = _x264_access_unit(None)
    sei = frame_packing_sei(3)
    out = with_sei(unit, sei)
    assert len(out) == len(unit) + len(sei)
    slice_at = next(i for i in range(len(out) - 3) if out[i:i + 3] == b"\x00\x00\x01" and out[i + 3] & 0x1F == 5)
    assert out.index(sei) < slice_at
    assert with_sei(b"no start code", sei) == b"no start code"


class _SeiByWriter(EncodeSettings):
    """libx264 without its frame-packing option: the writer must add the SEI, as for NVENC."""

    @property
    def sei_in_packets(self) -> bool:
        return self.frame_packing is not None

    def codec_options(self) -> dict[str, str]:
        return {"preset": self.preset, "crf": str(self.crf)}


@pytest.mark.parametrize(("arrangement", "layout"), [(3, "side_by_side"), (4, "top_bottom")])
def test_writer_signals_the_layout_for_an_encoder_that_cannot(tmp_path: Path, arrangement: int,
                                                              layout: str) -> None:
    path = tmp_path / "packed.mp4"
    with VideoWriter(path, 64, 48, Fraction(1, 25), Fraction(25),
                     _SeiByWriter(frame_packing=arrangement)) as writer:
        for i in range(30):
            writer.write(np.full((48, 64, 3), 4 * i, np.uint8), i)
    assert stereo_layout(path) == (layout, False)  # FFmpeg's decoder reads it: the left view is frame 0
    assert len(list(read_frames(path))) == 30
    plain = tmp_path / "plain.mp4"
    with VideoWriter(plain, 64, 48, Fraction(1, 25), Fraction(25), _SeiByWriter(frame_packing=None)) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8), 0)
    assert stereo_layout(plain) is None


# --- HEVC's frame-packing SEI (x265 and hevc_nvenc cannot write it) ----------------------------------------


def test_the_signalling_is_decided_per_codec_in_one_place() -> None:
    assert [sei_writer(c) for c in ("libx264", "h264_nvenc", "libx265", "hevc_nvenc", "libvpx-vp9")] == [
        "encoder", "packets", "packets", "packets", None]
    for codec, header in (("h264_nvenc", bytes([6])), ("libx265", bytes([78, 1])), ("hevc_nvenc", bytes([78, 1]))):
        sei = settings_for(OutputFormat.HTB, codec=codec).packet_sei()
        assert sei is not None and sei.startswith(b"\x00\x00\x00\x01" + header), codec
    assert settings_for(OutputFormat.SBS).packet_sei() is None  # x264 writes its own
    assert "x264-params" not in settings_for(OutputFormat.SBS, codec="libx265").codec_options()
    assert settings_for(OutputFormat.SBS, codec="libx265", swap_eyes=True).packet_sei() is None  # right eye first
    assert settings_for(OutputFormat.ANAGLYPH, codec="hevc_nvenc").packet_sei() is None


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.bits = "".join(f"{byte:08b}" for byte in data)
        self.at = 0

    def u(self, count: int) -> int:
        value = int(self.bits[self.at:self.at + count], 2)
        self.at += count
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits[self.at + zeros] == "0":
            zeros += 1
        self.at += zeros
        return self.u(zeros + 1) - 1


@pytest.mark.parametrize("arrangement", [3, 4])
def test_hevc_sei_follows_h265_d_2_16(arrangement: int) -> None:
    """The message field by field as H.265 D.2.16 reads it (independently of the writer's code): a prefix SEI
    NAL unit (type 39, layer 0, temporal id 0), payload type 45, persistence flag instead of H.264's period."""
    sei = frame_packing_sei(arrangement, "hevc")
    assert sei[:4] == b"\x00\x00\x00\x01"
    header = sei[4] << 8 | sei[5]
    assert header >> 15 == 0 and (header >> 9) & 0x3F == 39 and (header >> 3) & 0x3F == 0 and header & 7 == 1
    rbsp = sei[6:].replace(b"\x00\x00\x03", b"\x00\x00")
    payload_type, payload_size, payload = rbsp[0], rbsp[1], rbsp[2:]
    assert payload_type == 45 and payload_size == len(payload) - 1 and payload[-1] == 0x80
    bits = _BitReader(payload[:payload_size])
    assert bits.ue() == 0 and bits.u(1) == 0  # fp_arrangement_id, cancel flag
    assert bits.u(7) == arrangement and bits.u(1) == 0  # type, quincunx
    assert bits.u(6) == 1  # content interpretation: frame 0 is the left view
    assert bits.u(6) == 0 and bits.u(16) == 0 and bits.u(8) == 0  # flags, grid positions, reserved byte
    assert bits.u(1) == 1  # fp_arrangement_persistence_flag
    assert bits.u(1) == 0  # fp_upsampled_aspect_ratio_flag
    assert bits.at == len(bits.bits)  # 48 bits: byte-aligned, so no alignment bits follow
    assert frame_packing_sei(arrangement, "hevc")[4:] != frame_packing_sei(arrangement)[4:]
    with pytest.raises(ValueError):
        frame_packing_sei(arrangement, "vp9")


def _nal_types(data: bytes) -> list[int]:
    types, position = [], 0
    while (start := data.find(b"\x00\x00\x01", position)) >= 0 and start + 3 < len(data):
        types.append((data[start + 3] >> 1) & 0x3F)
        position = start + 3
    return types


def test_hevc_sei_goes_before_the_first_slice_after_x265s_own() -> None:
    context = av.CodecContext.create("libx265", "w")
    context.width, context.height, context.pix_fmt = 64, 48, "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
    context.open()
    frame = av.VideoFrame(64, 48, "yuv420p")
    frame.pts = 0
    unit = bytes((context.encode(frame) + context.encode(None))[0])
    out = with_sei(unit, frame_packing_sei(3, "hevc"), "hevc")
    types = _nal_types(out)
    first_slice = next(i for i, kind in enumerate(types) if kind < 32)
    assert types[first_slice - 1] == 39 and types.count(39) == _nal_types(unit).count(39) + 1
    assert out.index(frame_packing_sei(3, "hevc")) < out.index(b"\x00\x01" + bytes([types[first_slice] << 1]))


@pytest.mark.parametrize(("output_format", "layout"), [(OutputFormat.SBS, "side_by_side"),
                                                       (OutputFormat.TB, "top_bottom"),
                                                       (OutputFormat.HSBS, "side_by_side")])
def test_x265_output_signals_the_layout_on_every_frame(tmp_path: Path, output_format: OutputFormat,
                                                       layout: str) -> None:
    from av.sidedata.sidedata import Type

    path = tmp_path / "packed.mp4"
    settings = settings_for(output_format, codec="libx265", preset="ultrafast")
    with VideoWriter(path, 64, 48, Fraction(1, 25), Fraction(25), settings) as writer:
        for i in range(40):
            writer.write(np.full((48, 64, 3), 5 * i, np.uint8), i)
    assert stereo_layout(path) == (layout, False)  # FFmpeg's HEVC decoder reads it: the left view is frame 0
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
        tagged = [any(d.type == Type.STEREO3D for d in f.side_data) for f in container.decode(video=0)]
    assert len(tagged) == 40 and all(tagged)  # persistent: every frame, not only the keyframe
