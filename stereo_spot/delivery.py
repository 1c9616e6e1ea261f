"""Writing the command line's results: room checked before any work, the result moved (not copied) out of the
store, every file written atomically with the user's umask.

The room a conversion needs is decided once, here (``estimate``): the command checks it before converting, so a
full or read-only output folder is found out at the start, not after an hour of work. A delivery that still
fails (the disk filled up meanwhile) leaves the result in the store, and the same command delivers it without
converting again.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stereo_spot.errors import UserError
from stereo_spot.models import ConversionSettings, OutputFormat

if TYPE_CHECKING:
    from stereo_spot.media.probe import VideoStreamInfo
from stereo_spot.units import format_bytes

log = logging.getLogger(__name__)

# Output pixels per source pixel: a full side-by-side or top-bottom frame holds two pictures.
# Spatial video's second view is predicted from the first, so it is smaller; two full pictures bound it.
_LAYOUT_FACTOR = {OutputFormat.SBS: 2.0, OutputFormat.TB: 2.0, OutputFormat.CROSS: 2.0, OutputFormat.VR180: 2.0,
                  OutputFormat.SPATIAL: 2.0,
                  OutputFormat.HSBS: 1.0, OutputFormat.HTB: 1.0, OutputFormat.ANAGLYPH: 1.0,
                  OutputFormat.RGBD: 2.0, OutputFormat.HALF_RGBD: 1.0}
# A re-encode at the default quality is rarely larger than this against the source's bitrate per pixel.
_REENCODE_MARGIN = 1.25
# A depth video is lossless 16-bit grey (FFV1): its size follows the pixels, not the source's bitrate, and is
# many times the source's. FFV1 took 60 % of the raw frames on the synthetic clip; a noisy depth compresses less,
# so the raw size (2 bytes a pixel) is the bound counted.
_DEPTH_BYTES_PER_PIXEL = 2


class NoRoom(UserError):
    """A folder cannot take what a conversion will write there."""


@dataclass(frozen=True)
class SpaceNeeded:
    result: int  # the 3D file, in the output folder (and in the store until it is moved there)
    work: int  # the store at the join: source segments, converted segments and the joined result
    scratch: int  # the steps' scratch folder: a chunk's segments, or the joined result before it is stored


def estimate(source_bytes: int, settings: ConversionSettings, duration_seconds: float | None = None,
             video: VideoStreamInfo | None = None) -> SpaceNeeded:
    """The room a conversion of a ``source_bytes`` file needs. The part converted (``--start``/``--duration``)
    scales it where the source's duration is known. A depth video's size is counted from the ``video``'s
    pictures and frame rate (``--max-fps`` applied) where they and the duration are known."""
    share = 1.0
    if duration_seconds and (settings.start is not None or settings.duration is not None):
        begin = settings.start or 0.0
        end = duration_seconds if settings.duration is None else min(duration_seconds, begin + settings.duration)
        share = max(0.0, min(1.0, (end - begin) / duration_seconds))
    window = int(source_bytes * share)
    if settings.depth_output and video is not None and duration_seconds:
        fps = min(float(video.fps), settings.max_fps or float("inf"))
        result = int(duration_seconds * share * fps * video.width * video.height * _DEPTH_BYTES_PER_PIXEL)
    else:
        result = int(window * _LAYOUT_FACTOR[settings.output_format] * _REENCODE_MARGIN)
    return SpaceNeeded(result=result, work=window + 2 * result, scratch=max(window, result))


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _existing(folder: Path) -> Path:
    """The folder itself, or the nearest one above it that exists (where it would be created)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_room(output: Path, home: Path, need: SpaceNeeded, scratch: Path | None = None) -> None:
    """Before converting: the output folder is writable, and each filesystem has room for what the run puts on
    it at its peak (the store's segments and result, the scratch folder's copy, the result in the output folder
    unless it is renamed there from the store on the same filesystem). NoRoom names the folder, the space
    needed and the space free."""
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _new_temp(output).unlink()  # a real file: a read-only mount refuses it even to root, whom no chmod stops
    except OSError as exc:
        raise NoRoom(f"cannot write to {folder}: {exc.strerror or exc}") from None
    home_folder = _existing(Path(home))
    wants = [(home_folder, need.work, "the conversion's segments and result")]
    if scratch is not None:
        wants.append((_existing(Path(scratch)), need.scratch, "the scratch copies"))
    if os.stat(folder).st_dev != os.stat(home_folder).st_dev:
        wants.append((folder, need.result, "the result"))
    by_disk: dict[int, list[tuple[Path, int, str]]] = {}
    for place, needed, what in wants:
        by_disk.setdefault(os.stat(place).st_dev, []).append((place, needed, what))
    for shared in by_disk.values():
        needed = sum(n for _, n, _ in shared)
        place = shared[0][0]
        free = free_bytes(place)
        if free < needed:
            what = " and ".join(w for _, _, w in shared)
            raise NoRoom(f"not enough space in {place}: {what} need about {format_bytes(needed)}, "
                         f"{format_bytes(free)} free")


def _new_temp(path: Path) -> Path:
    """An empty hidden file beside ``path``, created with the mode an ordinary write gets (0666 less the
    umask), unlike ``tempfile.mkstemp``'s 0600."""
    while True:
        name = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return name
        except FileExistsError:
            continue


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary_path)``, then rename it over ``path``: a reader (or an interrupted run) never sees half
    a file, and an existing file is only replaced once the new one is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def deliver(objects, bucket: str, key: str, output: Path, *, move: bool,
            check: Callable[[Path], None] | None = None) -> None:
    """Put the object at ``output``. ``move``: a rename where the store is a folder on the same filesystem,
    else a copy followed by removing the stored object, so the store keeps no second copy of the film.
    ``check`` is given the file about to become the output (the stored file before a rename, the copy before it
    replaces anything) and raises to stop the delivery with nothing written."""
    check = check or (lambda path: None)
    output.parent.mkdir(parents=True, exist_ok=True)
    move_out = getattr(objects, "move_out", None)
    local_path = getattr(objects, "local_path", None)
    if move and move_out is not None and local_path is not None:
        check(local_path(bucket, key))
        if move_out(bucket, key, output):
            log.info("delivered %s: moved out of the store (%s)", output, format_bytes(output.stat().st_size))
            return

    def copy(tmp: Path) -> None:
        if local_path is not None:
            shutil.copyfile(local_path(bucket, key), tmp)
        else:
            objects.download_file(bucket, key, tmp)
        check(tmp)

    write_atomically(output, copy)
    if move:
        objects.delete(bucket, key)
    log.info("delivered %s: copied%s (%s)", output, ", then removed from the store" if move else "",
             format_bytes(output.stat().st_size))

