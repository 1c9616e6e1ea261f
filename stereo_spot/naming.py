"""File names users see: download names and the layout suffixes 3D players look for."""

from __future__ import annotations

import re

from stereo_spot.models import OutputFormat

# Players (DeoVR, Skybox, 4XVR, Kodi, Plex) pick the stereo layout from these conventional suffixes.
LAYOUT_SUFFIX = {
    OutputFormat.SBS: "_LRF_Full_SBS",
    OutputFormat.HSBS: "_Half_SBS",
    OutputFormat.TB: "_Full_TB",
    OutputFormat.HTB: "_TB",
    OutputFormat.ANAGLYPH: "_Anaglyph",
}


def slug(title: str) -> str:
    """A file-name-safe form of a title: letters, digits, '-', '_' and '.' kept, the rest collapsed."""
    cleaned = re.sub(r"[^\w.-]+", "-", title.strip(), flags=re.UNICODE).strip("-._")
    return cleaned[:120] or "video"


def output_file_name(title: str, output_format: OutputFormat, extension: str = ".mp4") -> str:
    return f"{slug(title)}-3d{LAYOUT_SUFFIX[OutputFormat(output_format)]}{extension}"
