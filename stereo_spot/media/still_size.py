"""The picture size of a still image from its header, without decoding it: FFmpeg's image decoders (png among
them) decode the whole picture to report its size, and OpenCV has no header-only read. PNG, JPEG, BMP, WebP and
TIFF, the stills the converter reads (``probe.IMAGE_SUFFIXES``)."""

from __future__ import annotations

import struct
from pathlib import Path

# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic), not DHT/JPG/DAC (C4, C8, CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# How far into a JPEG its frame header may sit: behind EXIF, ICC and other segments of up to 64 kB each.
_JPEG_HEADER_LIMIT = 4 * 1024 * 1024


def still_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as stored (before any EXIF orientation), or None when the header cannot be read."""
    try:
        with path.open("rb") as fh:
            head = fh.read(32)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head.startswith(b"BM") and len(head) >= 26:
                width, height = struct.unpack("<ii", head[18:26])
                return abs(width), abs(height)  # a negative height: rows stored top-down
            if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                return _webp(head + fh.read(8))
            if head.startswith(b"\xff\xd8"):
                fh.seek(2)
                return _jpeg(fh)
            if head.startswith((b"II*\x00", b"MM\x00*")):
                fh.seek(0)
                return _tiff(fh, "<" if head.startswith(b"II") else ">")
    except (OSError, struct.error):
        return None
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":  # 24-bit width-1 and height-1
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if kind == b"VP8L" and head[20] == 0x2F:  # 14-bit width-1 and height-1, packed
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # the key frame's start code, then 14-bit sizes
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg(fh) -> tuple[int, int] | None:
    while fh.tell() < _JPEG_HEADER_LIMIT:
        byte = fh.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker or marker[0] in (0xD8, 0x01) or 0xD0 <= marker[0] <= 0xD7:
            continue  # markers without a length
        (length,) = struct.unpack(">H", fh.read(2))
        if marker[0] in _SOF:
            _, height, width = struct.unpack(">BHH", fh.read(5))
            return width, height
        fh.seek(length - 2, 1)
    return None


def _tiff(fh, order: str) -> tuple[int, int] | None:
    fh.seek(4)
    (offset,) = struct.unpack(order + "I", fh.read(4))
    fh.seek(offset)
    (count,) = struct.unpack(order + "H", fh.read(2))
    found: dict[int, int] = {}
    for _ in range(min(count, 1024)):
        tag, kind, _, value = struct.unpack(order + "HHI4s", fh.read(12))
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    return (found[256], found[257]) if 256 in found and 257 in found else None
