"""Apple's spatial-video boxes: ``vexu`` (video extended usage) and ``hfov`` in the video sample entry.

Apple's "QuickTime and ISO Base Media File Formats and Spatial and Immersive Media" lays them out, and FFmpeg
reads them (libavformat/mov.c ``mov_read_vexu``, ``mov_read_eyes``, ``mov_read_hfov``) and writes them only from
stream side data PyAV cannot set (libavformat/movenc.c ``mov_write_vexu_tag``, ``mov_write_eyes_tag``,
``mov_write_hfov_tag``); the layout here is that one:

* ``vexu`` (Box) = ``eyes`` (Box) + ``proj`` (Box)
* ``eyes`` = ``stri`` (FullBox, one byte: bit 0 the left eye is present, bit 1 the right, bit 3 the eyes are
  reversed) + ``hero`` (FullBox, one byte: 0 none, 1 left, 2 right) + ``cams`` (Box) = ``blin`` (FullBox,
  uint32 baseline in micrometres) + ``cmfy`` (Box) = ``dadj`` (FullBox, int32 horizontal disparity adjustment
  in 1/10000 of the image width, -10000..10000)
* ``proj`` (Box) = ``prji`` (FullBox, four-character projection: ``rect`` for ordinary rectilinear video)
* ``hfov`` (Box, not a FullBox): uint32 horizontal field of view in thousandths of a degree

A player treats the file as spatial only when a baseline or a disparity adjustment and ``hfov`` are present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from stereo_spot.media.errors import MediaError
from stereo_spot.media.spatial import entry_boxes, write_entry_boxes
from stereo_spot.models import MAX_BASELINE_MM, MAX_HFOV_DEGREES

DEFAULT_BASELINE_MM = 64.0  # the average adult interpupillary distance
DEFAULT_HFOV_DEGREES = 63.0  # the horizontal field of view Apple's own spatial videos declare
LEFT_EYE, RIGHT_EYE = 1, 2
HERO_NONE, HERO_LEFT, HERO_RIGHT = 0, 1, 2
EYES_REVERSED = 8
_REPLACED = frozenset({b"vexu", b"hfov"})


@dataclass(frozen=True)
class SpatialVideo:
    """What the ``vexu`` and ``hfov`` boxes say about a stereo video."""

    baseline_mm: float = DEFAULT_BASELINE_MM
    hfov_degrees: float = DEFAULT_HFOV_DEGREES
    #: horizontal disparity adjustment, a fraction of the image width (-1..1); 0: none written
    disparity_adjustment: float = 0.0
    eyes: int = LEFT_EYE | RIGHT_EYE  # stri's flags
    hero: int = HERO_LEFT
    projection: str = "rect"


def check_spatial_parameters(baseline_mm: float, hfov_degrees: float) -> None:
    """Refuse a baseline or field of view the boxes cannot carry, with the option's name."""
    if not 0 < baseline_mm <= MAX_BASELINE_MM:
        raise MediaError(f"--baseline-mm {baseline_mm:g} is out of range: give the distance between the eyes' "
                         f"cameras in millimetres, above 0 and at most {MAX_BASELINE_MM:g}")
    if not 0 < hfov_degrees < MAX_HFOV_DEGREES:
        raise MediaError(f"--hfov {hfov_degrees:g} is out of range: give the horizontal field of view in "
                         f"degrees, above 0 and below {MAX_HFOV_DEGREES:g}")


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:
    return _box(kind, b"\0\0\0\0" + payload)


def encode(video: SpatialVideo) -> bytes:
    """The ``vexu`` and ``hfov`` boxes for ``video``."""
    check_spatial_parameters(video.baseline_mm, video.hfov_degrees)
    eyes = _full_box(b"stri", bytes([video.eyes]))
    eyes += _full_box(b"hero", bytes([video.hero]))
    eyes += _box(b"cams", _full_box(b"blin", struct.pack(">I", round(video.baseline_mm * 1000))))
    if video.disparity_adjustment:
        adjustment = max(-10000, min(10000, round(video.disparity_adjustment * 10000)))
        eyes += _box(b"cmfy", _full_box(b"dadj", struct.pack(">i", adjustment)))
    projection = _box(b"proj", _full_box(b"prji", video.projection.encode("ascii")))
    vexu = _box(b"vexu", _box(b"eyes", eyes) + projection)
    return vexu + _box(b"hfov", struct.pack(">I", round(video.hfov_degrees * 1000)))


def write_spatial_video(path: Path | str, video: SpatialVideo) -> None:
    """Put ``video``'s boxes into the video sample entry of the mp4 file at ``path`` (replacing any there)."""
    write_entry_boxes(path, _REPLACED, encode(video))


def _children(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """kind -> (body start, end) of the boxes between ``start`` and ``end``."""
    found: dict[bytes, tuple[int, int]] = {}
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        if size < 8 or pos + size > end:
            raise MediaError(f"the {kind.decode('latin-1')!r} box of the spatial-video metadata is damaged")
        found.setdefault(kind, (pos + 8, pos + size))
        pos += size
    return found


def read_spatial_video(path: Path | str) -> SpatialVideo | None:
    """The ``vexu``/``hfov`` contents of the mp4 file at ``path``; None where it has no ``vexu`` box or no
    ``hfov`` box (a player would not treat it as spatial)."""
    boxes = entry_boxes(path)
    if b"vexu" not in boxes or b"hfov" not in boxes:
        return None
    vexu = boxes[b"vexu"]
    top = _children(vexu, 8, len(vexu))
    if b"eyes" not in top:
        return None
    eyes = _children(vexu, *top[b"eyes"])
    stri = eyes.get(b"stri")
    hero = eyes.get(b"hero")
    cams = eyes.get(b"cams")
    blin = _children(vexu, *cams).get(b"blin") if cams else None
    cmfy = eyes.get(b"cmfy")
    dadj = _children(vexu, *cmfy).get(b"dadj") if cmfy else None
    prji = _children(vexu, *top[b"proj"]).get(b"prji") if b"proj" in top else None
    (hfov,) = struct.unpack_from(">I", boxes[b"hfov"], 8)
    return SpatialVideo(
        baseline_mm=struct.unpack_from(">I", vexu, blin[0] + 4)[0] / 1000 if blin else 0.0,
        hfov_degrees=hfov / 1000,
        disparity_adjustment=struct.unpack_from(">i", vexu, dadj[0] + 4)[0] / 10000 if dadj else 0.0,
        eyes=vexu[stri[0] + 4] if stri else 0,
        hero=vexu[hero[0] + 4] if hero else HERO_NONE,
        projection=vexu[prji[0] + 4:prji[0] + 8].decode("latin-1") if prji else "",
    )
