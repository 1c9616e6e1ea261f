"""Encoder settings for converted video, including the stereo layout signalled in the H.264 bitstream.

Players learn the layout of a stereo video from three places: the bitstream, the container, the file name.

* **Bitstream**: H.264's frame-packing arrangement SEI message. x264 writes it with ``frame-packing=N``
  (``x264-params``); the values are the SEI's ``frame_packing_arrangement_type``: 3 = side by side, 4 = top and
  bottom (0 checkerboard, 1 column and 2 row interleaving, 5 frame alternation, 6 2D, 7 tiles). x264 marks the
  left view as frame 0 (``content_interpretation_type`` 1) and the arrangement as persistent, and repeats it
  on every keyframe, so it survives the stream-copy concat of segments (each starts with a keyframe). FFmpeg
  decoders hand it to players as ``AV_FRAME_DATA_STEREO3D`` side data on the frames that carry it (PyAV:
  ``frame.side_data``). The SEI has no half/full distinction: the packed frame's size tells (a 3840x1080
  side by side holds two 1920x1080 views, a 1920x1080 one two squeezed 960x1080 views). Anaglyph is a 2D
  picture for the decoder and gets no SEI. x264 always marks frame 0 (the left or top half) as the left view, so
  a layout with the right eye first (cross-eyed, ``--swap-eyes``) gets no SEI either: a wrong one would make
  players show the eyes the wrong way round.
* **Container**: the mp4 ``st3d`` box (Google's Spherical Video V2), and for VR180 the ``sv3d`` box with its
  equirectangular projection, written into the final file after joining (``stereo_spot.media.spatial``).
* **File name**: the conventional suffixes (``stereo_spot.naming``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from stereo_spot.media.errors import MediaError
from stereo_spot.models import OutputFormat, left_eye_first

#: Environment variable overriding the constant-quality level of converted video (x264 CRF, 0 = lossless,
#: 18 = visually transparent for most footage, 23 = x264's default; each +6 roughly halves the size).
CRF_ENV = "STEREO_SPOT_CRF"
DEFAULT_CRF = 18


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"
    preset: str = "fast"
    crf: int = DEFAULT_CRF
    pix_fmt: str = "yuv420p"
    tune: str | None = None
    threads: int = 0  # 0: the encoder picks (one per core)
    #: H.264 frame-packing arrangement type written as an SEI message (3 side by side, 4 top-bottom); None: 2D
    frame_packing: int | None = None

    def codec_options(self) -> dict[str, str]:
        """Options for the FFmpeg encoder (libx264 names; other encoders ignore what they do not know)."""
        options = {"preset": self.preset, "crf": str(self.crf)}
        if self.tune:
            options["tune"] = self.tune
        if self.frame_packing is not None and self.codec == "libx264":
            options["x264-params"] = f"frame-packing={self.frame_packing}"
        return options


#: x264 ``frame-packing`` (the H.264 SEI's frame_packing_arrangement_type) of each layout
FRAME_PACKING = {
    OutputFormat.SBS: 3,
    OutputFormat.HSBS: 3,
    OutputFormat.TB: 4,
    OutputFormat.HTB: 4,
    OutputFormat.ANAGLYPH: None,
    OutputFormat.CROSS: 3,  # right eye first, so never written (see settings_for)
    OutputFormat.VR180: 3,
}


def settings_for(output_format: OutputFormat, threads: int = 0, *, swap_eyes: bool = False) -> EncodeSettings:
    """The settings for a stereo layout: the layout signalled in the bitstream (see the module docstring).

    Anaglyph keeps full-resolution chroma (yuv444p): 4:2:0 subsampling averages the red and cyan of
    neighbouring pixels, smearing each eye's colour fringe into the other and showing as ghosting.
    """
    output_format = OutputFormat(output_format)
    crf = configured_crf()
    if output_format is OutputFormat.ANAGLYPH:
        return EncodeSettings(pix_fmt="yuv444p", threads=threads, crf=crf)
    frame_packing = FRAME_PACKING[output_format] if left_eye_first(output_format, swap_eyes) else None
    return EncodeSettings(threads=threads, crf=crf, frame_packing=frame_packing)


def configured_crf() -> int:
    """``STEREO_SPOT_CRF`` if set (0..51), else ``DEFAULT_CRF``."""
    raw = os.environ.get(CRF_ENV, "").strip()
    if not raw:
        return DEFAULT_CRF
    try:
        crf = int(raw)
    except ValueError:
        crf = -1
    if not 0 <= crf <= 51:
        raise MediaError(f"{CRF_ENV}={raw!r}: the quality level must be a whole number from 0 (lossless) to 51")
    return crf
