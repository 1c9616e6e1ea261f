"""What ``stereo-spot convert PATH...`` converts: files as given, folders searched recursively for videos and
still images, and where each result goes.

A folder is searched for the extensions of the containers the converter opens (``media.containers``) and of
the still images it reads, in name order, skipping hidden files and folders and the converter's own outputs
(``naming.is_output_name``), so converting a folder a second time does not convert its 3D files again. With an
output folder, the tree under each input folder is mirrored there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stereo_spot.errors import UserError
from stereo_spot.media.probe import is_image
from stereo_spot.models import OutputFormat
from stereo_spot.naming import is_output_name, output_file_name

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".3gp", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts",
                              ".mpg", ".mpeg", ".wmv", ".asf", ".flv", ".ogv"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Conversion:
    source: Path
    output: Path
    is_image: bool


def _convertible(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS and not is_output_name(path.name)


def _walk(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and _convertible(path):
            found.append(path)
    return found


def plan(paths: list[Path], output_format: OutputFormat, *, output_dir: Path | None = None,
         swap_eyes: bool = False) -> list[Conversion]:
    """Every file to convert and where its result goes, in the order given (folders: in name order). A path
    that does not exist is a UserError before anything is converted; a file named twice is converted once."""
    conversions: list[Conversion] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if path.is_dir():
            sources = [(p, p.parent.relative_to(path)) for p in _walk(path)]
        else:
            sources = [(path, Path())]
        for source, relative in sources:
            key = source.resolve()
            if key in seen:
                continue
            seen.add(key)
            image = is_image(source)  # by content, as a single conversion decides
            name = output_file_name(source.stem, output_format, ".png" if image else ".mp4", swap_eyes=swap_eyes)
            folder = output_dir / relative if output_dir is not None else source.parent
            conversions.append(Conversion(source, folder / name, image))
    check_outputs(conversions)
    return conversions


def check_outputs(conversions: list[Conversion]) -> None:
    """UserError, before anything runs, when two inputs would write the same output (``a/clip.mp4 b/clip.mp4
    -o out``: the second would replace the first) or an output would overwrite an input (``clip.mp4
    clip-3d_LRF_Full_SBS.mp4``: the second input replaced before it is converted)."""
    sources = {_identity(c.source): c.source for c in conversions}
    writers: dict[object, Path] = {}
    for item in conversions:
        target = _identity(item.output)
        if target in sources:
            raise UserError(f"the output of {item.source} would overwrite {sources[target]}, which is also an "
                            "input; convert them separately or move one of them")
        if target in writers:
            raise UserError(f"{writers[target]} and {item.source} would both be written to {item.output}; "
                            "convert them separately or rename one of them")
        writers[target] = item.source


def _identity(path: Path) -> object:
    """What names one file: its device and inode when it exists (hard links, symlinks), else its resolved path."""
    try:
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return path.resolve()
