"""The cost model, read from the compiled WorkflowTemplate: a 3-hour film loads its models no more often than
there are GPU workers, and the figures add up."""

from __future__ import annotations

import math

import pytest
import yaml

from stereo_spot.pipelines import cost
from stereo_spot.pipelines.config import PipelineConfig

THREE_HOURS = 3 * 3600.0


def test_a_three_hour_film_loads_its_models_at_most_once_per_gpu_worker():
    gpu_workers, parallelism = cost.compiled_parameters()
    assert gpu_workers == PipelineConfig().gpu_workers and parallelism == PipelineConfig().parallelism
    film = cost.from_compiled(THREE_HOURS)
    assert film.segments == 1080
    assert film.model_loads <= gpu_workers and film.gpu_workers == gpu_workers
    assert film.model_loads <= parallelism  # every convert pod runs at once: no pod waits for a GPU slot
    kfp_spec = next(yaml.safe_load_all((cost.COMPILED.parent / "kfp-pipeline.yaml").read_text()))
    assert kfp_spec["root"]["inputDefinitions"]["parameters"]["gpu_workers"]["defaultValue"] == gpu_workers
    assert film.pods == gpu_workers + 2  # chunk, the convert pods, concat
    assert film.idle_fraction < 0.25


def test_a_clip_shorter_than_the_workers_uses_one_pod_per_segment():
    clip = cost.estimate(25.0, gpu_workers=8)
    assert clip.segments == 3 and clip.gpu_workers == 3 and clip.model_loads == 3


def test_the_figures_add_up():
    a = cost.Assumptions(segment_seconds=10, film_fps=24, convert_fps=60, pod_start_seconds=60,
                         model_load_seconds=30)
    film = cost.estimate(100.0, gpu_workers=2, parallelism=1, assumptions=a)
    busy = 10 * 10 * 24 / 60  # 40 s of converting
    held = busy + 2 * 90
    assert film.gpu_hours == pytest.approx(held / 3600)
    assert film.idle_fraction == pytest.approx(1 - busy / held)
    assert film.convert_wall_seconds == pytest.approx(held)  # one pod at a time
    per_segment = cost.estimate(100.0, gpu_workers=10, assumptions=a)
    assert per_segment.model_loads == 10 and per_segment.gpu_hours == pytest.approx((busy + 10 * 90) / 3600)
    assert per_segment.convert_wall_seconds == pytest.approx(90 + 4)
    assert math.isclose(cost.estimate(95.0, 2, assumptions=a).gpu_hours * 3600, 38 + 180)  # a short last segment


def test_the_table_has_both_films():
    text = cost.table()
    assert "| 10 min | 8 GPU workers | 10 | 8 |" in text
    assert "| 3 h 00 min | one pod per segment | 1082 | 1080 |" in text
