"""Encoder settings for converted video."""

from __future__ import annotations

from dataclasses import dataclass

from stereo_spot.models import OutputFormat


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "libx264"
    preset: str = "fast"
    crf: int = 18
    pix_fmt: str = "yuv420p"
    tune: str | None = None
    threads: int = 0  # 0: the encoder picks (one per core)

    def codec_options(self) -> dict[str, str]:
        """Options for the FFmpeg encoder (libx264 names; other encoders ignore what they do not know)."""
        options = {"preset": self.preset, "crf": str(self.crf)}
        if self.tune:
            options["tune"] = self.tune
        return options


def settings_for(output_format: OutputFormat, threads: int = 0) -> EncodeSettings:
    """The settings for a stereo layout.

    Anaglyph keeps full-resolution chroma (yuv444p): 4:2:0 subsampling averages the red and cyan of
    neighbouring pixels, smearing each eye's colour fringe into the other and showing as ghosting.
    """
    if OutputFormat(output_format) is OutputFormat.ANAGLYPH:
        return EncodeSettings(pix_fmt="yuv444p", threads=threads)
    return EncodeSettings(threads=threads)
