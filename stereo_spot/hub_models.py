"""Models by name: ``--depth-model depth-anything-v2-small`` resolved through the Hugging Face hub and its cache.

A name stands for a repository on the hub and the engine model that loads it (the ``transformers`` checkpoints of
Depth Anything V2, Distill-Any-Depth, Depth Pro and ZoeDepth load through ``transformers``, Video-Depth-Anything's
state dicts into the project's own network), and
carries the checkpoint's licence, size and whether it is consistent over time (``models list`` shows them).
``NAME@REVISION`` pins a commit, branch or tag; without one the
catalog's revision is used. Files land in huggingface_hub's own cache (``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``), so every tool that uses the hub shares one copy, and a second run or worker does
not download again. With ``HF_HUB_OFFLINE=1`` only the cache is read; a model that is not there is one line
saying how to get it. ``HF_ENDPOINT`` points at a mirror.

``stereo-spot models list|download|verify`` shows the catalog and what is cached, fills the cache (for a
cluster: into a volume the pods mount) and checks every cached file against the hash the hub named it by.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stereo_spot.errors import UserError

#: Licences that forbid commercial use: a conversion with such a checkpoint says so once (``licence_notice``).
#: Apple-AMLR: the Apple Machine Learning Research Model licence, for research purposes only.
NON_COMMERCIAL = frozenset({"CC-BY-NC-4.0", "Apple-AMLR"})


@dataclass(frozen=True)
class HubModel:
    name: str
    engine_model: str  # the registered model that loads the checkpoint
    repo_id: str
    revision: str = "main"
    summary: str = ""
    #: the checkpoint's licence as its model card and its authors' README state it (SPDX identifier)
    licence: str = ""
    #: parameters, in millions, as the authors publish them
    parameters_m: float = 0.0
    #: consistent over time by training (a video model), rather than per frame with the project's own steadying
    video_consistent: bool = False

    @property
    def commercial_use(self) -> bool:
        return self.licence not in NON_COMMERCIAL


# Licences: Depth Anything V2's README and model cards (Small Apache-2.0; Base and Large CC-BY-NC-4.0);
# Video-Depth-Anything's README ("LICENSE": Small Apache-2.0, Base/Large CC-BY-NC-4.0) and the model cards of
# Video-Depth-Anything-Small and Metric-Video-Depth-Anything-Small (license: apache-2.0). The metric Base and
# Large cards were not read; they are taken to follow the README's rule for their size. Parameter counts from the
# same READMEs.
# Distill-Any-Depth (Westlake-AGI-Lab/Distill-Any-Depth): Depth Anything V2's architecture with weights distilled
# from several teachers. Its README links the Transformers checkpoints xingyang1/Distill-Any-Depth-{Small,Large}-hf,
# written by transformers' convert_distill_any_depth_to_hf.py (DepthAnythingConfig on DINOv2-small / -large,
# DPTImageProcessor at 518), so they load through the Depth Anything loader as they are; no Base is published in
# that form. Parameters from the README's table (Dav2-small 24.8M, Dav2-large 335.3M); licence: the authors' hub
# repository xingyang1/Distill-Any-Depth is tagged apache-2.0 (the code is MIT). iw3's README notes that the
# Base and Large were initialised from Depth Anything V2's CC-BY-NC-4.0 weights; the summary says so.
# Depth Pro (apple/ml-depth-pro): apple/DepthPro-hf is the transformers checkpoint (DepthProForDepthEstimation,
# loaded by the same transformers depth loader); its model card's licence is apple-amlr; no parameter count is
# published: about 950M, its 1.9 GB of fp16 weights at two bytes each.
# ZoeDepth (isl-org/ZoeDepth): Intel/zoedepth-nyu-kitti is the transformers checkpoint (ZoeDepthForDepthEstimation,
# the NYU + KITTI model that picks its indoor or outdoor head per image); model card licence mit; about 345M
# parameters, its 1.38 GB of fp32 weights at four bytes each.
CATALOG: dict[str, HubModel] = {m.name: m for m in (
    HubModel("depth-anything-v2-small", "depth-anything", "depth-anything/Depth-Anything-V2-Small-hf",
             summary="Depth Anything V2 Small: fast, fits any GPU", licence="Apache-2.0", parameters_m=24.8),
    HubModel("depth-anything-v2-base", "depth-anything", "depth-anything/Depth-Anything-V2-Base-hf",
             summary="Depth Anything V2 Base", licence="CC-BY-NC-4.0", parameters_m=97.5),
    HubModel("depth-anything-v2-large", "depth-anything", "depth-anything/Depth-Anything-V2-Large-hf",
             summary="Depth Anything V2 Large: the sharpest, slowest", licence="CC-BY-NC-4.0", parameters_m=335.3),
    HubModel("video-depth-anything-small", "video-depth-anything", "depth-anything/Video-Depth-Anything-Small",
             summary="Video Depth Anything Small: depth consistent over time", licence="Apache-2.0",
             parameters_m=28.4, video_consistent=True),
    HubModel("video-depth-anything-base", "video-depth-anything", "depth-anything/Video-Depth-Anything-Base",
             summary="Video Depth Anything Base", licence="CC-BY-NC-4.0", parameters_m=113.1,
             video_consistent=True),
    HubModel("video-depth-anything-large", "video-depth-anything", "depth-anything/Video-Depth-Anything-Large",
             summary="Video Depth Anything Large: the sharpest video model", licence="CC-BY-NC-4.0",
             parameters_m=381.8, video_consistent=True),
    HubModel("metric-video-depth-anything-small", "video-depth-anything",
             "depth-anything/Metric-Video-Depth-Anything-Small", summary="Video Depth Anything Small, metric depth",
             licence="Apache-2.0", parameters_m=28.4, video_consistent=True),
    HubModel("metric-video-depth-anything-base", "video-depth-anything",
             "depth-anything/Metric-Video-Depth-Anything-Base", summary="Video Depth Anything Base, metric depth",
             licence="CC-BY-NC-4.0", parameters_m=113.1, video_consistent=True),
    HubModel("metric-video-depth-anything-large", "video-depth-anything",
             "depth-anything/Metric-Video-Depth-Anything-Large", summary="Video Depth Anything Large, metric depth",
             licence="CC-BY-NC-4.0", parameters_m=381.8, video_consistent=True),
    HubModel("distill-any-depth-small", "depth-anything", "xingyang1/Distill-Any-Depth-Small-hf",
             summary="Distill-Any-Depth Small: Depth Anything V2 Small's network, distilled weights",
             licence="Apache-2.0", parameters_m=24.8),
    HubModel("distill-any-depth-large", "depth-anything", "xingyang1/Distill-Any-Depth-Large-hf",
             summary="Distill-Any-Depth Large (stated Apache-2.0; initialised from Depth Anything V2 Large, "
                     "CC-BY-NC-4.0)", licence="Apache-2.0", parameters_m=335.3),
    HubModel("depth-pro", "depth-anything", "apple/DepthPro-hf",
             summary="Apple Depth Pro: sharp edges, 1536x1536 input (slow)", licence="Apple-AMLR",
             parameters_m=950.0),
    HubModel("zoedepth-nyu-kitti", "depth-anything", "Intel/zoedepth-nyu-kitti",
             summary="ZoeDepth NYU+KITTI: metric depth, indoor and outdoor", licence="MIT", parameters_m=345.0),
)}


def docs_table() -> str:
    """The catalog as docs/quality.md shows it (generated from :data:`CATALOG`; a test keeps them equal)."""
    rows = ["| name | licence | parameters | video-consistent | repository |", "|---|---|---|---|---|"]
    for model in CATALOG.values():
        licence = model.licence if model.commercial_use else f"{model.licence} (non-commercial)"
        rows.append(f"| `{model.name}` | {licence} | {model.parameters_m:g}M | "
                    f"{'yes' if model.video_consistent else 'no'} | `{model.repo_id}` |")
    return "\n".join(rows)


class HubModelError(UserError):
    """A named model cannot be found, fetched or verified; the message says what to do."""


def split_name(spec: str) -> tuple[str, str | None]:
    """``name@revision`` → (name, revision or None)."""
    name, _, revision = spec.partition("@")
    return name, (revision or None)


def lookup(spec: str) -> tuple[HubModel, str] | None:
    """The catalog entry and the revision for a model spec, or None where the name is not a hub model."""
    name, revision = split_name(spec)
    model = CATALOG.get(name)
    if model is None:
        return None
    return model, revision or model.revision


def offline() -> bool:
    from huggingface_hub import constants

    # huggingface_hub's own variable: its constants read it once, at import, so one set later (by a caller, a
    # test) is read here the way the library reads it
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def refuse_weights(spec: str, weights: str | None) -> None:
    """A named model brings its own weights: giving others as well is a mistake, not a choice to guess at."""
    if weights:
        raise HubModelError(f"--depth-model {spec} brings its own weights: drop --depth-weights, or use "
                            f"--depth-model {_entry(spec)[0].engine_model} with them")


def _entry(spec: str) -> tuple[HubModel, str]:
    found = lookup(spec)
    if found is None:
        raise HubModelError(f"{spec!r} is not a model name; known: {', '.join(CATALOG)}")
    return found


def resolve(spec: str, *, download: bool = True, force: bool = False) -> Path:
    """The local snapshot folder of a named model: from the cache, or downloaded into it (unless offline or
    ``download`` is False); ``force`` downloads every file again."""
    model, revision = _entry(spec)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    local_only = offline() or not download
    if force and local_only:
        raise HubModelError("HF_HUB_OFFLINE is set: downloads are off")
    try:
        return Path(snapshot_download(model.repo_id, revision=revision, local_files_only=local_only,
                                      force_download=force))
    except LocalEntryNotFoundError as exc:
        if local_only:
            raise HubModelError(f"{model.name} ({model.repo_id}@{revision}) is not in the model cache and the hub "
                                f"is offline: run `stereo-spot models download {model.name}` where the hub is "
                                f"reachable, or point HF_HUB_CACHE at a cache that has it") from exc
        raise HubModelError(f"{model.name}: the hub cannot be reached and it is not cached ({exc})") from exc
    except HfHubHTTPError as exc:
        raise HubModelError(f"{model.name}: the hub refused {model.repo_id}@{revision}: "
                            f"{' '.join(str(exc).split())[:300]}") from exc
    except OSError as exc:
        raise HubModelError(f"{model.name}: could not fetch {model.repo_id}@{revision}: {exc}") from exc


@lru_cache(maxsize=32)
def snapshot_for_process(spec: str) -> Path:
    """``resolve`` once per process: every segment a worker converts builds an engine, and asking the hub
    for the revision each time would cost a round trip per segment."""
    return resolve(spec)


def announce_licence(spec: str) -> None:
    """Print ``licence_notice`` on stderr, where there is one: called once when a conversion's choices are
    checked (``engine.check_model_choice``), not by the workers."""
    notice = licence_notice(spec)
    if notice:
        print(notice, file=sys.stderr, flush=True)


def licence_notice(spec: str) -> str | None:
    """The one line a non-commercial checkpoint prints when a conversion starts with it."""
    model, _ = _entry(spec)
    if model.commercial_use:
        return None
    return (f"note: {model.name} is licensed {model.licence} (non-commercial use only; "
            f"https://huggingface.co/{model.repo_id})")


def cached_snapshot(spec: str) -> Path | None:
    try:
        return resolve(spec, download=False)
    except HubModelError:
        return None


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(spec: str) -> list[str]:
    """Check every file of a cached snapshot against the hash the hub named its blob by (sha256 for large
    files, the git blob sha1 for small ones). Returns the files checked; raises on the first mismatch."""
    snapshot = cached_snapshot(spec)
    if snapshot is None:
        raise HubModelError(f"{split_name(spec)[0]} is not in the model cache: nothing to verify")
    checked = []
    for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        blob = path.resolve()
        expected = blob.name
        if len(expected) == 64:
            actual = _sha256(blob)
        elif len(expected) == 40:
            actual = _git_blob_sha1(blob)
        else:  # not a content-addressed blob (a copied folder): nothing to check it against
            continue
        if actual != expected:
            raise HubModelError(f"{path.relative_to(snapshot)} of {split_name(spec)[0]} is damaged (its hash is "
                                f"{actual[:12]}…, the hub's is {expected[:12]}…): run `stereo-spot models download "
                                f"{split_name(spec)[0]} --force`")
        checked.append(str(path.relative_to(snapshot)))
    if not checked:
        raise HubModelError(f"{split_name(spec)[0]}: the cached snapshot has no files")
    return checked
