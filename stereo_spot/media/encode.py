"""Encoder settings for converted video, including the stereo layout signalled in the H.264 or HEVC bitstream.

Players learn the layout of a stereo video from three places: the bitstream, the container, the file name.

* **Bitstream**: the frame-packing arrangement SEI message, which H.264 (D.1.26) and HEVC (D.2.16) both define,
  with the same ``frame_packing_arrangement_type`` values: 3 = side by side, 4 = top and bottom (H.264 also
  has 0 checkerboard, 1 column and 2 row interleaving, 6 2D, 7 tiles; both 5 frame alternation). x264 writes
  it itself with ``frame-packing=N`` (``x264-params``); x265 has no such parameter and NVENC no such option for
  either codec, so for those the writer puts the SEI into every keyframe packet (``sei_writer`` decides which,
  in one place). The message marks the left view as frame 0 (``content_interpretation_type`` 1) and the
  arrangement as persistent, and is repeated on every keyframe, so it survives the stream-copy concat of
  segments (each starts with a keyframe). FFmpeg's H.264 and HEVC decoders hand it to players as
  ``AV_FRAME_DATA_STEREO3D`` side data on the frames that carry it (PyAV: ``frame.side_data``). The SEI has
  no half/full distinction: the packed frame's size tells (a 3840x1080 side by side holds two 1920x1080 views,
  a 1920x1080 one two squeezed 960x1080 views). Anaglyph is a 2D picture for the decoder and gets no SEI. x264
  always marks frame 0 (the left or top half) as the left view, so a layout with the right eye first
  (cross-eyed, ``--swap-eyes``) gets no SEI either (ours does the same): a wrong one would make players show
  the eyes the wrong way round.
* **Container**: the mp4 ``st3d`` box (Google's Spherical Video V2), and for VR180 the ``sv3d`` box with its
  equirectangular projection, written into the final file after joining (``stereo_spot.media.spatial``).
* **File name**: the conventional suffixes (``stereo_spot.naming``).
"""

from __future__ import annotations

from dataclasses import dataclass

from stereo_spot.media.errors import MediaError
from stereo_spot.models import OutputFormat, left_eye_first

#: The constant-quality level of converted video when a job names none and STEREO_SPOT_CRF is unset (x264 CRF,
#: 0 = lossless, 18 = visually transparent for most footage, 23 = x264's default; each +6 roughly halves the size).
DEFAULT_CRF = 18


#: NVENC's preset for converted video: p4 is its balanced middle (p1 fastest … p7 best)
NVENC_PRESET = "p4"
#: x264's and x265's preset for converted video
X26X_PRESET = "fast"
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
NVENC_PRESETS = tuple(f"p{n}" for n in range(1, 8))
#: The bitstream each encoder writes: the standard whose frame-packing SEI it carries.
BITSTREAMS = {"libx264": "h264", "h264_nvenc": "h264", "libx265": "hevc", "hevc_nvenc": "hevc"}
#: Encoders that write the frame-packing SEI themselves (x264's ``frame-packing`` parameter). x265 has none
#: (x265 4.2: "Unknown option: frame-packing"), NVENC exposes none through FFmpeg.
SEI_BY_ENCODER = ("libx264",)


def sei_writer(codec: str) -> str | None:
    """Who writes the frame-packing SEI into ``codec``'s bitstream: ``"encoder"`` (through its own option),
    ``"packets"`` (``VideoWriter``, into every keyframe packet), or None (no bitstream signalling known).

    >>> sei_writer("libx264"), sei_writer("hevc_nvenc"), sei_writer("libvpx-vp9")
    ('encoder', 'packets', None)
    """
    if codec not in BITSTREAMS:
        return None
    return "encoder" if codec in SEI_BY_ENCODER else "packets"


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"  # libx264, libx265, h264_nvenc or hevc_nvenc (``stereo.devices.encoder_for``)
    preset: str = "fast"  # x264/x265's; an NVENC encoder takes p1..p7 (NVENC_PRESET for anything else)
    crf: int = DEFAULT_CRF
    pix_fmt: str = "yuv420p"
    tune: str | None = None
    threads: int = 0  # 0: the encoder picks (one per core)
    #: frame-packing arrangement type written as an SEI message (3 side by side, 4 top-bottom); None: 2D
    frame_packing: int | None = None

    @property
    def sei_in_packets(self) -> bool:
        """The frame-packing SEI is written into the packets by the writer (the encoder cannot)."""
        return self.frame_packing is not None and sei_writer(self.codec) == "packets"

    def packet_sei(self) -> bytes | None:
        """The SEI NAL unit the writer puts into each keyframe packet, in the codec's own syntax; None when the
        encoder signals the layout itself or there is nothing to signal."""
        if not self.sei_in_packets:
            return None
        return frame_packing_sei(self.frame_packing, BITSTREAMS[self.codec])

    def codec_options(self) -> dict[str, str]:
        """Options for the FFmpeg encoder: x264's, or NVENC's constant-quality equivalent (its ``cq`` is on the
        same 0..51 quantiser scale as x264's CRF)."""
        if self.codec.endswith("_nvenc"):
            preset = self.preset if self.preset in NVENC_PRESETS else NVENC_PRESET
            return {"preset": preset, "tune": "hq", "rc": "vbr", "cq": str(max(1, self.crf)), "b": "0"}
        options = {"preset": self.preset, "crf": str(self.crf)}
        if self.tune:
            options["tune"] = self.tune
        if self.frame_packing is not None and sei_writer(self.codec) == "encoder":
            options["x264-params"] = f"frame-packing={self.frame_packing}"
        if self.codec == "libx265":
            options["x265-params"] = "log-level=error"  # x265 prints its settings on every segment otherwise
        return options


#: The frame-packing SEI's frame_packing_arrangement_type of each layout (the same in H.264 and HEVC)
FRAME_PACKING = {
    OutputFormat.SBS: 3,
    OutputFormat.HSBS: 3,
    OutputFormat.TB: 4,
    OutputFormat.HTB: 4,
    OutputFormat.ANAGLYPH: None,
    OutputFormat.CROSS: 3,  # right eye first, so never written (see settings_for)
    OutputFormat.VR180: 3,
    OutputFormat.RGBD: None,  # colour + depth is not a stereo pair: a frame-packing SEI would say it is
    OutputFormat.HALF_RGBD: None,
    OutputFormat.SPATIAL: None,  # two views of one MV-HEVC stream, not a packed frame
}


def settings_for(output_format: OutputFormat, threads: int = 0, codec: str = "libx264", *,
                 swap_eyes: bool = False, crf: int | None = None, preset: str | None = None,
                 pix_fmt: str | None = None) -> EncodeSettings:
    """The settings for a stereo layout and the job's encoder choices (None: the defaults), with the layout
    signalled in the bitstream where the codec defines it (see the module docstring).

    Anaglyph keeps full-resolution chroma (yuv444p) unless told otherwise: 4:2:0 subsampling averages the red
    and cyan of neighbouring pixels, smearing each eye's colour fringe into the other and showing as ghosting.
    """
    output_format = OutputFormat(output_format)
    crf = configured_crf() if crf is None else crf
    default_pix_fmt = "yuv444p" if output_format is OutputFormat.ANAGLYPH else "yuv420p"
    frame_packing = FRAME_PACKING[output_format] if left_eye_first(output_format, swap_eyes) else None
    if sei_writer(codec) is None:
        frame_packing = None
    preset = preset or (NVENC_PRESET if codec.endswith("_nvenc") else X26X_PRESET)
    return EncodeSettings(codec=codec, preset=preset, threads=threads, crf=crf, pix_fmt=pix_fmt or default_pix_fmt,
                          frame_packing=frame_packing)


def check_encoder_choice(codec: str, pix_fmt: str | None, preset: str | None) -> None:
    """Refuse an encoder this FFmpeg build lacks, a pixel format it cannot write, or a preset it does not
    know, before any job exists. ``codec`` "auto" always works (libx264 is in every build this runs on)."""
    import av

    if codec == "auto":
        if preset is not None and preset not in X26X_PRESETS + NVENC_PRESETS:
            raise MediaError(f"--preset {preset!r} is not a preset; x264/x265: {', '.join(X26X_PRESETS)}; "
                             f"NVENC: {', '.join(NVENC_PRESETS)}")
        return
    if codec not in av.codecs_available:
        present = [c for c in ("libx264", "libx265", "h264_nvenc", "hevc_nvenc") if c in av.codecs_available]
        raise MediaError(f"this FFmpeg build has no {codec} encoder; choose --codec auto or one of "
                         f"{', '.join(present)}")
    formats = {f.name for f in (av.Codec(codec, "w").video_formats or [])}
    if pix_fmt is not None and formats and pix_fmt not in formats:
        raise MediaError(f"{codec} cannot write {pix_fmt} in this FFmpeg build (it writes "
                         f"{', '.join(sorted(formats))})")
    known = NVENC_PRESETS if codec.endswith("_nvenc") else X26X_PRESETS
    if preset is not None and preset not in known:
        raise MediaError(f"--preset {preset!r} is not a {codec} preset; choose one of {', '.join(known)}")


def configured_crf() -> int:
    """``STEREO_SPOT_CRF`` if set (0..51, checked by Settings), else ``DEFAULT_CRF``."""
    from stereo_spot.config import get_settings

    crf = get_settings().stereo_spot_crf
    return DEFAULT_CRF if crf is None else crf


# --- the frame-packing SEI for encoders that cannot write it ------------------------------------------------

_START_CODE = b"\x00\x00\x00\x01"
_SEI_FRAME_PACKING = 45  # payloadType, in both standards
#: The SEI NAL unit header: H.264's one byte (nal_unit_type 6); HEVC's two bytes (forbidden bit, nal_unit_type
#: 39 = prefix SEI, nuh_layer_id 0, nuh_temporal_id_plus1 1)
_SEI_NAL_HEADER = {"h264": bytes([6]), "hevc": bytes([39 << 1, 1])}


def _is_coded_slice(bitstream: str, header: int) -> bool:
    """Whether a NAL unit whose first header byte is ``header`` is a coded slice (where SEI must precede)."""
    if bitstream == "hevc":
        return (header >> 1) & 0x3F < 32  # VCL NAL unit types 0..31
    return header & 0x1F in (1, 5)  # non-IDR and IDR slices


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits.extend((value >> (count - 1 - i)) & 1 for i in range(count))

    def ue(self, value: int) -> None:  # Exp-Golomb
        code = value + 1
        self.u(2 * code.bit_length() - 1, code)

    def align_with_one(self) -> None:
        if len(self.bits) % 8:
            self.bits.append(1)
            while len(self.bits) % 8:
                self.bits.append(0)

    def bytes(self) -> bytes:
        return bytes(int("".join(map(str, self.bits[i:i + 8])), 2) for i in range(0, len(self.bits), 8))


def _emulation_prevention(rbsp: bytes) -> bytes:
    """Insert 0x03 after two zero bytes that precede a byte <= 3 (H.264 7.4.1)."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def frame_packing_sei(arrangement_type: int, bitstream: str = "h264") -> bytes:
    """An Annex B SEI NAL unit with a frame-packing arrangement message for ``bitstream`` ("h264": D.1.26 of
    H.264, "hevc": D.2.16 of H.265, in a prefix SEI NAL unit), with the fields x264 writes: left view is frame 0
    (content interpretation 1), no flipping, persistent."""
    if bitstream not in _SEI_NAL_HEADER:
        raise ValueError(f"no frame-packing SEI for a {bitstream!r} bitstream")
    payload = _Bits()
    payload.ue(0)  # frame_packing_arrangement_id
    payload.u(1, 0)  # cancel flag
    payload.u(7, arrangement_type)
    payload.u(1, 0)  # quincunx_sampling_flag
    payload.u(6, 1)  # content_interpretation_type: frame 0 is the left view
    payload.u(6, 0)  # spatial flipping, frame0 flipped, field views, current is frame0, frame0/1 self-contained
    payload.u(16, 0)  # frame0/frame1 grid positions x, y
    payload.u(8, 0)  # reserved byte
    if bitstream == "hevc":
        payload.u(1, 1)  # fp_arrangement_persistence_flag: until the next one or the end of the stream
        payload.u(1, 0)  # fp_upsampled_aspect_ratio_flag
    else:
        payload.ue(1)  # repetition period: persists until the next one
        payload.u(1, 0)  # extension flag
    payload.align_with_one()
    body = payload.bytes()
    rbsp = bytes([_SEI_FRAME_PACKING, len(body)]) + body + b"\x80"  # + rbsp_trailing_bits
    return _START_CODE + _SEI_NAL_HEADER[bitstream] + _emulation_prevention(rbsp)


def with_sei(data: bytes, sei: bytes, bitstream: str = "h264") -> bytes:
    """``data`` (an Annex B access unit of ``bitstream``) with the NAL unit ``sei`` put just before its first
    coded slice, where both standards want SEI. Data without a start code or a slice is returned unchanged."""
    position = 0
    while True:
        start = data.find(b"\x00\x00\x01", position)
        if start < 0 or start + 3 >= len(data):
            return data
        if _is_coded_slice(bitstream, data[start + 3]):
            begin = start - 1 if start > 0 and data[start - 1] == 0 else start  # a 4-byte start code
            return data[:begin] + sei + data[begin:]
        position = start + 3
