"""Stereo and spherical metadata in mp4 files, as Google's Spherical Video V2 specification defines them.

Headset players (YouTube, Skybox, DeoVR, the Quest's own player) read the layout of a stereo video from two boxes
inside the video track's sample entry (``moov/trak/mdia/minf/stbl/stsd/avc1``):

* ``st3d`` (FullBox, one byte ``stereo_mode``): 0 mono, 1 top-bottom (left on top), 2 left-right, 4 right-left;
* ``sv3d`` (Box) = ``svhd`` (FullBox, the writing tool's name) + ``proj`` (Box) = ``prhd`` (FullBox, yaw, pitch
  and roll in 16.16 fixed point) + ``equi`` (FullBox, four 0.32 fixed-point crops of the full sphere: top,
  bottom, left, right). VR180 is an equirectangular projection with a quarter of the 360° width cropped on each
  side.

FFmpeg's mp4 muxer writes them only from stream side data that PyAV cannot set, so they are written into the
finished file: the sample entry grows by a few dozen bytes, every enclosing box's size with it, and where the
``moov`` box comes before the media data (``+faststart``) every chunk offset (``stco``/``co64``) moves by the same
amount. Writing is idempotent (existing boxes are replaced) and atomic (a new file renamed into place).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stereo_spot.media.errors import MediaError
from stereo_spot.models import OutputFormat, left_eye_first

MONO, TOP_BOTTOM, LEFT_RIGHT, RIGHT_LEFT = 0, 1, 2, 4
#: 0.32 fixed point: a quarter of the sphere's width cropped on each side leaves the front 180°.
QUARTER = 0x40000000
METADATA_SOURCE = "stereo-spot"

_VISUAL_ENTRIES = {b"avc1", b"avc3", b"hvc1", b"hev1"}
_CODEC_CONFIGS = {b"avcC", b"hvcC", b"lhvC"}
_OURS = frozenset({b"st3d", b"sv3d"})
_VISUAL_ENTRY_FIELDS = 78  # VisualSampleEntry's fixed fields before its child boxes
_COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class SpatialMetadata:
    stereo_mode: int | None = None  # st3d's value; None: no st3d box
    #: equi's (top, bottom, left, right) crops; None: no sv3d box
    equirect_bounds: tuple[int, int, int, int] | None = None
    pose: tuple[float, float, float] = (0.0, 0.0, 0.0)  # yaw, pitch, roll in degrees
    source: str | None = None  # svhd's metadata_source


def metadata_for(output_format: OutputFormat | str, swap_eyes: bool = False) -> SpatialMetadata | None:
    """What the container says about a layout; None for a 2D picture (anaglyph), for colour + depth (RGB-D: not a
    stereo pair, so an st3d box would make a headset show the depth map to one eye) or a layout st3d cannot name
    (top-bottom with the right eye on top)."""
    fmt = OutputFormat(output_format)
    # anaglyph and RGB-D are no stereo pair to a player; spatial video has vexu instead (media/vexu.py)
    if fmt in (OutputFormat.ANAGLYPH, OutputFormat.SPATIAL) or fmt.is_rgbd:
        return None
    first_is_left = left_eye_first(fmt, swap_eyes)
    if fmt in (OutputFormat.TB, OutputFormat.HTB):
        return SpatialMetadata(stereo_mode=TOP_BOTTOM) if first_is_left else None
    mode = LEFT_RIGHT if first_is_left else RIGHT_LEFT
    if fmt is OutputFormat.VR180:
        return SpatialMetadata(stereo_mode=mode, equirect_bounds=(0, 0, QUARTER, QUARTER), source=METADATA_SOURCE)
    return SpatialMetadata(stereo_mode=mode)


# --- boxes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Box:
    kind: bytes
    start: int
    header: int
    size: int

    @property
    def body(self) -> int:
        return self.start + self.header

    @property
    def end(self) -> int:
        return self.start + self.size


def _boxes(buf: bytes | bytearray, start: int, end: int) -> Iterator[_Box]:
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", buf, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise MediaError(f"the mp4 file is damaged: its {kind.decode('latin-1')!r} box overruns its parent")
        yield _Box(kind, pos, header, size)
        pos += size


def _child(buf: bytes | bytearray, parent: _Box, kind: bytes, offset: int = 0) -> _Box | None:
    return next((b for b in _boxes(buf, parent.body + offset, parent.end) if b.kind == kind), None)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full_box(kind: bytes, payload: bytes) -> bytes:
    return _box(kind, b"\0\0\0\0" + payload)  # version 0, flags 0


def _encode(meta: SpatialMetadata) -> bytes:
    out = b""
    if meta.stereo_mode is not None:
        out += _full_box(b"st3d", bytes([meta.stereo_mode]))
    if meta.equirect_bounds is not None:
        header = _full_box(b"svhd", (meta.source or METADATA_SOURCE).encode() + b"\0")
        pose = _full_box(b"prhd", struct.pack(">iii", *(round(angle * 65536) for angle in meta.pose)))
        equi = _full_box(b"equi", struct.pack(">IIII", *meta.equirect_bounds))
        out += _box(b"sv3d", header + _box(b"proj", pose + equi))
    return out


def _video_entry_path(moov: bytes | bytearray) -> list[_Box]:
    """moov, trak, mdia, minf, stbl, stsd and the video track's sample entry, outermost first."""
    top = _Box(b"moov", 0, 8, len(moov))
    for trak in (b for b in _boxes(moov, top.body, top.end) if b.kind == b"trak"):
        mdia = _child(moov, trak, b"mdia")
        hdlr = mdia and _child(moov, mdia, b"hdlr")
        if hdlr is None or moov[hdlr.body + 8:hdlr.body + 12] != b"vide":
            continue
        minf = _child(moov, mdia, b"minf")
        stbl = minf and _child(moov, minf, b"stbl")
        stsd = stbl and _child(moov, stbl, b"stsd")
        entry = stsd and next(iter(_boxes(moov, stsd.body + 8, stsd.end)), None)
        if entry is None or entry.kind not in _VISUAL_ENTRIES:
            kind = entry.kind.decode("latin-1") if entry is not None else "none"
            raise MediaError(f"the video track's sample entry is {kind!r}: stereo metadata needs H.264 or HEVC")
        return [top, trak, mdia, minf, stbl, stsd, entry]
    raise MediaError("the mp4 file has no video track")


def _with_entry_boxes(moov: bytes, replaced: frozenset[bytes], payload: bytes) -> bytearray:
    """The moov box with the video sample entry's boxes of the kinds ``replaced`` replaced by ``payload``."""
    buf = bytearray(moov)
    *parents, entry = _video_entry_path(buf)
    if entry.header != 8:
        raise MediaError("the video sample entry uses a 64-bit size; stereo metadata is not written there")
    fixed = buf[entry.body:entry.body + _VISUAL_ENTRY_FIELDS]
    children = [c for c in _boxes(buf, entry.body + _VISUAL_ENTRY_FIELDS, entry.end) if c.kind not in replaced]
    kept = [bytes(buf[c.start:c.end]) for c in children]
    # after the codec configurations (the last mandatory boxes), before the optional ones (pasp, btrt, clap)
    at = max((i + 1 for i, c in enumerate(children) if c.kind in _CODEC_CONFIGS), default=len(kept))
    body = bytes(fixed) + b"".join(kept[:at]) + payload + b"".join(kept[at:])
    new_entry = _box(entry.kind, body)
    delta = len(new_entry) - entry.size
    buf[entry.start:entry.end] = new_entry
    for box in parents:  # each starts before the entry, so its header has not moved
        if box.header == 16:
            struct.pack_into(">Q", buf, box.start + 8, box.size + delta)
        else:
            struct.pack_into(">I", buf, box.start, box.size + delta)
    return buf


def _shift_chunk_offsets(moov: bytearray, delta: int) -> None:
    top = _Box(b"moov", 0, 8, len(moov))
    for trak in (b for b in _boxes(moov, top.body, top.end) if b.kind == b"trak"):
        mdia = _child(moov, trak, b"mdia")
        minf = mdia and _child(moov, mdia, b"minf")
        stbl = minf and _child(moov, minf, b"stbl")
        if stbl is None:
            continue
        for table in _boxes(moov, stbl.body, stbl.end):
            if table.kind not in (b"stco", b"co64"):
                continue
            width, fmt = (4, ">I") if table.kind == b"stco" else (8, ">Q")
            (count,) = struct.unpack_from(">I", moov, table.body + 4)
            for i in range(count):
                at = table.body + 8 + i * width
                (offset,) = struct.unpack_from(fmt, moov, at)
                if offset + delta >= 1 << (8 * width):
                    raise MediaError("the mp4 file's chunk offsets would overflow 32 bits; metadata not written")
                struct.pack_into(fmt, moov, at, offset + delta)


def _top_level(path: Path) -> list[_Box]:
    boxes: list[_Box] = []
    size_on_disk = path.stat().st_size
    with open(path, "rb") as handle:
        pos = 0
        while pos + 8 <= size_on_disk:
            handle.seek(pos)
            head = handle.read(16)
            size, kind = struct.unpack_from(">I4s", head)
            header = 8
            if size == 1:
                size, header = struct.unpack_from(">Q", head, 8)[0], 16
            elif size == 0:
                size = size_on_disk - pos
            if size < header or pos + size > size_on_disk:
                raise MediaError(f"{path.name} is not a complete mp4 file")
            boxes.append(_Box(kind, pos, header, size))
            pos += size
    return boxes


def _read_moov(path: Path) -> tuple[list[_Box], _Box, bytes]:
    boxes = _top_level(path)
    moov = next((b for b in boxes if b.kind == b"moov"), None)
    if moov is None:
        raise MediaError(f"{path.name} has no moov box: it is not a finished mp4 file")
    if moov.header != 8:
        raise MediaError(f"{path.name}'s moov box uses a 64-bit size; stereo metadata is not written there")
    with open(path, "rb") as handle:
        handle.seek(moov.start)
        return boxes, moov, handle.read(moov.size)


def write_metadata(path: Path | str, meta: SpatialMetadata) -> None:
    """Put ``meta``'s boxes into the video track of the mp4 file at ``path`` (replacing any there)."""
    write_entry_boxes(path, _OURS, _encode(meta))


def write_entry_boxes(path: Path | str, replaced: frozenset[bytes], payload: bytes) -> None:
    """Replace the boxes of the kinds ``replaced`` in the video sample entry of the mp4 file at ``path`` by
    ``payload`` (whole boxes, put after the codec configuration)."""
    path = Path(path)
    boxes, moov, old = _read_moov(path)
    new = _with_entry_boxes(old, replaced, payload)
    delta = len(new) - len(old)
    media_after_moov = any(b.kind == b"mdat" and b.start > moov.start for b in boxes)
    if media_after_moov and delta:
        _shift_chunk_offsets(new, delta)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            _copy(src, out, moov.start)
            out.write(new)
            src.seek(moov.end)
            shutil.copyfileobj(src, out, _COPY_CHUNK)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def entry_boxes(path: Path | str) -> dict[bytes, bytes]:
    """The boxes inside the video sample entry of the mp4 file at ``path``: kind -> whole box (first of each)."""
    _, _, moov = _read_moov(Path(path))
    entry = _video_entry_path(moov)[-1]
    found: dict[bytes, bytes] = {}
    for box in _boxes(moov, entry.body + _VISUAL_ENTRY_FIELDS, entry.end):
        found.setdefault(box.kind, bytes(moov[box.start:box.end]))
    return found


def _copy(src, out, length: int) -> None:
    remaining = length
    while remaining > 0:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise MediaError("the mp4 file changed while its metadata was written")
        out.write(chunk)
        remaining -= len(chunk)


def read_metadata(path: Path | str) -> SpatialMetadata:
    """The st3d/sv3d metadata of the video track of the mp4 file at ``path`` (empty where there is none)."""
    _, _, moov = _read_moov(Path(path))
    entry = _video_entry_path(moov)[-1]
    stereo_mode = bounds = source = None
    pose = (0.0, 0.0, 0.0)
    for box in _boxes(moov, entry.body + _VISUAL_ENTRY_FIELDS, entry.end):
        if box.kind == b"st3d":
            stereo_mode = moov[box.body + 4]
        elif box.kind == b"sv3d":
            svhd = _child(moov, box, b"svhd")
            if svhd is not None:
                source = bytes(moov[svhd.body + 4:svhd.end]).split(b"\0", 1)[0].decode("utf-8", "replace")
            proj = _child(moov, box, b"proj")
            prhd = proj and _child(moov, proj, b"prhd")
            equi = proj and _child(moov, proj, b"equi")
            if prhd is not None:
                pose = tuple(v / 65536 for v in struct.unpack_from(">iii", moov, prhd.body + 4))
            if equi is not None:
                bounds = struct.unpack_from(">IIII", moov, equi.body + 4)
    return SpatialMetadata(stereo_mode=stereo_mode, equirect_bounds=bounds, pose=pose, source=source)
