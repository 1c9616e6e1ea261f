"""What a run costs on the cluster: pods, model loads, GPU-hours and the GPU's idle fraction for a film of a given
length, read from the compiled WorkflowTemplate's own parameters (``gpu-workers``, the DAG's parallelism).

    python -m stereo_spot.pipelines.cost            # the table in docs/kubernetes.md (10 minutes and 3 hours)

A convert pod holds its GPU from the moment it is scheduled: while the image starts, while the weights are
fetched and loaded, and while it converts its shard. Only the converting is useful work; the rest is the idle
fraction. The per-segment figures (one pod per segment, the fan-out this replaced) are printed beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from stereo_spot import steps


@dataclass(frozen=True)
class Assumptions:
    """Per-pod and per-frame figures. The defaults: a Depth-Anything-Small class model at 60 fps on 1080p, 24 fps
    film, 10-second segments (the default), a minute from scheduling to a running container (image pull on a
    fresh node) and half a minute to fetch and load the weights."""

    segment_seconds: float = 10.0
    film_fps: float = 24.0
    convert_fps: float = 60.0
    pod_start_seconds: float = 60.0
    model_load_seconds: float = 30.0


@dataclass(frozen=True)
class Cost:
    film_seconds: float
    segments: int
    gpu_workers: int  # convert pods (shards)
    pods: int  # every pod of a successful run: chunk, the convert pods, concat
    model_loads: int
    gpu_hours: float
    idle_fraction: float  # GPU-held time not spent converting
    convert_wall_seconds: float  # from the first convert pod's start to the last one's end


def workflow_parameters(template: dict) -> tuple[int, int]:
    """``(gpu-workers default, DAG parallelism)`` of a compiled WorkflowTemplate."""
    params = {p["name"]: p.get("value") for p in template["spec"]["arguments"]["parameters"]}
    main = next(t for t in template["spec"]["templates"] if t["name"] == template["spec"]["entrypoint"])
    return int(params["gpu-workers"]), int(main.get("parallelism") or 0)


def estimate(film_seconds: float, gpu_workers: int, parallelism: int = 0,
             assumptions: Assumptions = Assumptions()) -> Cost:
    """The cost of one successful run of a film of ``film_seconds`` with at most ``gpu_workers`` convert pods,
    ``parallelism`` of them at once (0: no limit). ``gpu_workers`` equal to the segment count is the old fan-out
    of one pod per segment."""
    a = assumptions
    segments = max(1, math.ceil(film_seconds / a.segment_seconds))
    shards = steps.shard_count(segments, gpu_workers)
    seconds_per_segment = [min(a.segment_seconds, film_seconds - i * a.segment_seconds) * a.film_fps / a.convert_fps
                           for i in range(segments)]
    overhead = a.pod_start_seconds + a.model_load_seconds
    pod_seconds = [overhead + sum(seconds_per_segment[i] for i in steps.shard_segments(segments, s, shards))
                   for s in range(shards)]
    busy = sum(seconds_per_segment)
    held = sum(pod_seconds)
    at_once = min(shards, parallelism) if parallelism > 0 else shards
    return Cost(film_seconds=film_seconds, segments=segments, gpu_workers=shards, pods=shards + 2,
                model_loads=shards, gpu_hours=held / 3600, idle_fraction=1 - busy / held,
                convert_wall_seconds=_wall(pod_seconds, at_once))


def _wall(pod_seconds: list[float], at_once: int) -> float:
    """Pods start in order as slots free up (Argo's parallelism): the time until the last one ends."""
    slots = [0.0] * at_once
    for seconds in pod_seconds:
        slots.sort()
        slots[0] += seconds
    return max(slots)


COMPILED = Path(__file__).resolve().parent.parent / "manifests" / "generated" / "workflowtemplate.yaml"


def compiled_parameters(path: Path = COMPILED) -> tuple[int, int]:
    return workflow_parameters(yaml.safe_load(path.read_text(encoding="utf-8")))


def from_compiled(film_seconds: float, path: Path = COMPILED, assumptions: Assumptions = Assumptions()) -> Cost:
    return estimate(film_seconds, *compiled_parameters(path), assumptions=assumptions)


def table(films: tuple[float, ...] = (600.0, 3 * 3600.0)) -> str:
    rows = ["| film | fan-out | pods | model loads | GPU-hours | GPU idle | convert wall time |",
            "|---|---|---|---|---|---|---|"]
    _, parallelism = compiled_parameters()
    for seconds in films:
        compiled = from_compiled(seconds)
        per_segment = estimate(seconds, compiled.segments, parallelism)
        for label, cost in ((f"{compiled.gpu_workers} GPU workers", compiled), ("one pod per segment", per_segment)):
            rows.append(f"| {_duration(seconds)} | {label} | {cost.pods} | {cost.model_loads} | "
                        f"{cost.gpu_hours:.2f} | {cost.idle_fraction:.0%} | {_duration(cost.convert_wall_seconds)} |")
    return "\n".join(rows)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


if __name__ == "__main__":
    print(table())
