"""File names users see: download names and the layout suffixes 3D players look for."""

from __future__ import annotations

import re
from pathlib import Path

from stereo_spot.models import ConversionSettings, OutputFormat

# Players pick the stereo layout from conventional file-name tokens: VR players (DeoVR, Skybox, 4XVR) look for
# SBS/TB, Kodi for a "3d" token plus SBS/HSBS/TAB. Output names are "{title}-3d{suffix}" so both are present.
LAYOUT_SUFFIX = {
    OutputFormat.SBS: "_LRF_Full_SBS",
    OutputFormat.HSBS: "_Half_SBS",
    OutputFormat.TB: "_Full_TB",
    OutputFormat.HTB: "_Half_TB",
    OutputFormat.ANAGLYPH: "_Anaglyph",
    # no SBS token: players that see one would show a cross-eyed pair with the eyes swapped
    OutputFormat.CROSS: "_Cross",
    OutputFormat.VR180: "_180_LR",  # DeoVR, Skybox, HereSphere: 180° equirectangular, left eye on the left
    # iw3's names for colour + depth (nagadomi/nunif iw3/utils.py, RGBD_SUFFIX and HALF_RGBD_SUFFIX)
    OutputFormat.RGBD: "_RGBD",
    OutputFormat.HALF_RGBD: "_HRGBD",
    # no SBS token: the file is one picture per frame for a 2D player (the left eye), two views for Apple's
    OutputFormat.SPATIAL: "_Spatial",
}
SWAPPED_SUFFIX = "_Swapped"

# The tokens players take the layout from (DeoVR's and Skybox's naming guides, Kodi's "3D movies" page): any one
# in a name, as a word of its own, is enough for them to show the file in 3D.
PLAYER_TOKENS = {
    OutputFormat.SBS: ("sbs", "lr", "lrf", "3dh"),
    OutputFormat.HSBS: ("sbs", "hsbs", "lr", "3dh"),
    OutputFormat.TB: ("tb", "tab", "ou", "3dv"),
    OutputFormat.HTB: ("tb", "tab", "htab", "ou", "3dv"),
    OutputFormat.VR180: ("180",),
    # No player documents a name token for colour + depth (Looking Glass Studio asks at import which half is
    # which); iw3's names are the convention its users' tools follow.
    OutputFormat.RGBD: ("rgbd",),
    OutputFormat.HALF_RGBD: ("hrgbd", "rgbd"),
}


#: The depth video's name beside its source (``stereo-spot depth``): ``holiday.mp4`` → ``holiday-depth.mkv``
DEPTH_SUFFIX = "-depth.mkv"

_OUTPUT_NAME = re.compile(
    r"-3d(" + "|".join(re.escape(s) for s in LAYOUT_SUFFIX.values()) + r")(" + re.escape(SWAPPED_SUFFIX)
    + r")?\.\w+$|-preview-[\d.]+s\.png$|" + re.escape(DEPTH_SUFFIX) + "$", re.IGNORECASE)


def is_output_name(name: str) -> bool:
    """Whether a file name is one the converter gives its results (``…-3d_LRF_Full_SBS.mp4``, a preview PNG, a
    depth video), so a folder converted again does not convert its own files."""
    return _OUTPUT_NAME.search(name) is not None


def names_layout(name: str, output_format: OutputFormat) -> bool:
    """Whether a player would find the layout in this file name. Anaglyph and cross-eyed files need none: they
    play as ordinary video."""
    tokens = PLAYER_TOKENS.get(OutputFormat(output_format))
    if tokens is None:
        return True
    words = set(re.split(r"[^a-z0-9]+", Path(name).stem.lower()))
    return not words.isdisjoint(tokens)


def slug(title: str) -> str:
    """A file-name-safe form of a title: letters, digits, '-', '_' and '.' kept, the rest collapsed."""
    cleaned = re.sub(r"[^\w.-]+", "-", title.strip(), flags=re.UNICODE).strip("-._")
    return cleaned[:120] or "video"


def output_path_for(source: Path, output_format: OutputFormat, extension: str = ".mp4", *,
                    swap_eyes: bool = False) -> Path:
    """The default output next to a source: ``holiday.mp4`` → ``holiday-3d_LRF_Full_SBS.mp4``."""
    return source.with_name(output_file_name(source.stem, output_format, extension, swap_eyes=swap_eyes))


def output_file_name(title: str, output_format: OutputFormat, extension: str = ".mp4", *,
                     swap_eyes: bool = False) -> str:
    swapped = SWAPPED_SUFFIX if swap_eyes else ""
    return f"{slug(title)}-3d{LAYOUT_SUFFIX[OutputFormat(output_format)]}{swapped}{extension}"


def depth_path_for(source: Path) -> Path:
    """The default depth video next to a source: ``holiday.mp4`` → ``holiday-depth.mkv``."""
    return source.with_name(depth_file_name(source.stem))


def depth_file_name(title: str) -> str:
    return f"{slug(title)}{DEPTH_SUFFIX}"


def result_file_name(title: str, settings: ConversionSettings) -> str:
    """The download name of a job's result: its depth video for a depth job, else the 3D file's name."""
    if settings.depth_output:
        return depth_file_name(title)
    return output_file_name(title, settings.output_format)


def result_media_type(settings: ConversionSettings) -> str:
    return "video/x-matroska" if settings.depth_output else "video/mp4"
