"""The distribution claims one top-level name in site-packages, ``stereo_spot``: the repository's top-level ui/,
components/ and pipelines/ folders install as ``stereo_spot.ui``, ``stereo_spot.components`` and
``stereo_spot.pipelines`` (pyproject.toml's package-dir), so nothing named ``ui`` or ``pipelines`` collides with
another project's package. Checked on a wheel built the way the images build it (a copy of the files they copy,
installed non-editable) and on the install the tests run from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# where each installed package's files come from in the repository
SOURCE_FOLDERS = {"stereo_spot": "stereo_spot", "stereo_spot/ui": "ui", "stereo_spot/components": "components",
                  "stereo_spot/pipelines": "pipelines"}
# what images/*/Dockerfile copies into the build
IMAGE_CONTEXT = ("pyproject.toml", "README.md", "LICENSE", "constraints.txt", *SOURCE_FOLDERS.values())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the image's build context (no stale build/ folder to leak files)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in IMAGE_CONTEXT:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [built] = out.glob("stereo_spot-*.whl")
    return built


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_installs_one_top_level_package(wheel):
    names = _names(wheel)
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"stereo_spot"}
    with zipfile.ZipFile(wheel) as archive:
        [record] = [name for name in names if name.endswith(".dist-info/top_level.txt")]
        assert archive.read(record).decode().split() == ["stereo_spot"]


def test_the_wheel_carries_every_module_and_the_apps_config(wheel):
    """Every .py file of the four folders, at its installed path (a subpackage left out of pyproject's list would
    be missing), and the app's script-level Streamlit config next to the app."""
    names = set(_names(wheel))
    expected = set()
    for installed, folder in SOURCE_FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            expected.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    assert expected - names == set()
    assert {"stereo_spot/ui/app.py", "stereo_spot/ui/.streamlit/config.toml", "stereo_spot/ui/pages/job.py",
            "stereo_spot/components/chunk.py", "stereo_spot/pipelines/argo.py"} <= names


def test_the_installed_wheel_imports_under_the_projects_name(wheel, tmp_path):
    """Installed non-editable (as in the images) into its own folder and imported from a neutral directory: the
    steps, the DAG and the app come from that copy, and the generic names do not exist."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = ("import importlib.util, pathlib, stereo_spot.components.chunk, stereo_spot.pipelines.config, "
            "stereo_spot.ui\n"
            "print(pathlib.Path(stereo_spot.ui.__file__).parent)\n"
            "print(*(importlib.util.find_spec(name) for name in ('ui', 'components', 'pipelines')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr
    app_folder, specs = run.stdout.splitlines()
    assert Path(app_folder) == target / "stereo_spot" / "ui"
    assert (Path(app_folder) / "app.py").is_file()  # what `stereo-spot ui` hands to `streamlit run`
    assert specs == "None None None"


def test_this_environments_install_has_no_generic_top_level_names(tmp_path):
    """However the project is installed here (editable from scripts/setup, or a wheel), from outside the
    checkout only stereo_spot's names resolve."""
    code = ("import importlib.util, stereo_spot.components, stereo_spot.pipelines, stereo_spot.ui\n"
            "print(*(importlib.util.find_spec(name) for name in ('ui', 'components', 'pipelines')))")
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["None", "None", "None"]
