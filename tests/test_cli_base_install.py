"""Every command after ``scripts/setup`` alone (no extras): it works, or it says in one line what to install.

The commands run in a subprocess that sees only the base install (tests/base_install.py): the extras' packages
(streamlit, hera, kfp, transformers, huggingface_hub, prometheus_client…) are absent there, as on a fresh machine.
What each test is there to catch: a command that imports an extra at the top and dies with a traceback
(``models list`` did, on huggingface_hub), an install hint that names the wrong pip for a checkout, and a new
command added without a ``--help`` that loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from stereo_spot.cli.main import app
from tests.base_install import base_distributions, base_environment

pytestmark = pytest.mark.slow  # ~40 interpreter starts


def _command_paths(group=None, prefix=()) -> list[tuple[str, ...]]:
    group = group or typer.main.get_command(app)
    paths = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        paths.append(path)
        if hasattr(command, "commands"):
            paths += _command_paths(command, path)
    return paths


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    env = base_environment(root)
    env["STEREO_SPOT_HOME"] = str(root / "home")
    env["STORAGE_ADAPTER"] = "local"
    env["COLUMNS"] = "200"  # tables and hints on one line each, as a wide terminal shows them
    env.pop("STEREO_SPOT_DEBUG", None)

    def run(*args: str, cwd: Path = root) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stereo_spot", *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=300)

    run.root = root
    return run


def test_the_base_environment_lacks_the_extras(base):
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print([m for m in ('streamlit', "
                            "'hera', 'kfp', 'transformers', 'huggingface_hub', 'torch', 'av') if u.find_spec(m)])"],
                           env=base_environment(base.root / "probe"), capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "['torch', 'av']"
    assert {"stereo-spot", "torch", "av", "boto3"} <= base_distributions()


def test_every_command_has_a_help_that_loads(base):
    paths = _command_paths()
    assert {("convert",), ("models", "list"), ("aws", "bootstrap"), ("ui",), ("compile",)} <= set(paths)
    for path in paths:
        result = base(*path, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, (path, result.stderr[-800:])


def _one_line_or_success(result: subprocess.CompletedProcess, what: str) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text, (what, text[-1500:])
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (what, result.stderr)


# The cheapest real call of each command: what a newcomer types first. Commands that need a cluster, AWS or an
# extra must answer in one line; the rest must work.
CHEAPEST = [
    ("jobs",), ("gc", "--dry-run"), ("delete", "a0f7"), ("resume", "a0f7"), ("models", "list"),
    ("models", "download", "depth-anything-v2-small"), ("models", "verify", "depth-anything-v2-small"),
    ("ui",), ("compile",), ("doctor",), ("worker",), ("reconcile", "--dry-run"),
    ("aws", "policies", "--prefix", "demo", "--account", "123456789012"),
    ("convert", "still.png", "-o", "still-3d.png"), ("preview", "clip.mp4", "--at", "0.5", "-o", "p.png"),
]


def test_the_cheapest_call_of_each_command_works_or_says_what_to_install(base):
    assert base("sample", "clip.mp4", "--seconds", "1").returncode == 0
    import cv2
    import numpy as np

    cv2.imwrite(str(base.root / "still.png"), np.full((48, 64, 3), 128, np.uint8))
    for call in CHEAPEST:
        _one_line_or_success(base(*call), call)
    assert (base.root / "still-3d.png").is_file() and (base.root / "p.png").is_file()
    models = base("models", "list")
    assert models.returncode == 0 and "depth-anything-v2-small" in models.stdout
    assert "models" in models.stderr and "install" in models.stderr  # the cache needs the extra: it says so
    for call, extra in ((("ui",), "ui"), (("compile",), "pipelines"), (("models", "download", "x"), "models")):
        result = base(*call)
        assert result.returncode == 1 and f"[{extra}]" in result.stderr, (call, result.stderr)


def test_the_install_hint_from_a_checkout_names_its_own_pip(base):
    repository = Path(__file__).resolve().parents[1]
    result = base("ui", cwd=repository)
    hint = " ".join(result.stderr.split())
    assert f"{Path(sys.executable).parent.name}/pip install -e '.[ui]'" in hint, hint
