"""The images are reproducible from this repository: every pip install in every Dockerfile is constrained by
constraints.txt, which is exactly what scripts/lock writes from the environment the tests run in (so the images
run the versions the tests ran); one torch policy (the lock's version, CPU or CUDA build by index, same base);
OCI labels from build arguments; LICENSE in the image; a .dockerignore that admits just what the builds copy."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("cpu", "gpu", "ui")
LABELS = ("source", "revision", "version")


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of images/<name>/Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "images" / name / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^(\w+)\s+(.*)$", joined, re.M)]


def _args(name: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in instructions(name) if kind == "ARG" and "=" in arg)


def _locked() -> dict[str, str]:
    return dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))


def test_the_lock_is_what_this_environment_locks():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_lock_pins_the_torch_the_tests_run():
    assert _locked()["torch"] == Version(torch.__version__).public
    assert {"hera", "kfp", "streamlit", "av", "boto3"} <= set(_locked())
    assert not any(name.startswith(("pytest", "ruff", "moto", "playwright")) for name in _locked())


def _extra_requirements(project: dict, extras: list[str]) -> set[str]:
    """The distributions the project's ``extras`` name, through extras that name other extras."""
    own, names = canonicalize_name(project["name"]), set()
    for extra in extras:
        for line in project["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == own:
                names |= _extra_requirements(project, sorted(requirement.extras))
            else:
                names.add(canonicalize_name(requirement.name))
    return names


@pytest.mark.parametrize("name", NAMES)
def test_the_lock_pins_every_extra_the_image_installs(name):
    """An extra an image installs but the lock does not walk would be installed unpinned."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runs = " ".join(arg for kind, arg in instructions(name) if kind == "RUN")
    extras = [extra for group in re.findall(r"\"\.\[([\w,]+)\]\"", runs) for extra in group.split(",")]
    assert extras, "the image installs the project with its extras"
    missing = _extra_requirements(project, extras) - {canonicalize_name(n) for n in _locked()}
    assert not missing, f"images/{name} installs {sorted(missing)}, which constraints.txt does not pin"


@pytest.mark.parametrize("name", NAMES)
def test_every_pip_install_is_constrained_by_the_lock(name):
    steps = instructions(name)
    runs = [arg for kind, arg in steps if kind == "RUN" and "pip install" in arg]
    assert len(runs) == 1, "one install layer"
    installs = re.findall(r"pip install ([^&]*)", runs[0])
    assert len(installs) >= 3
    assert all("-c constraints.txt" in command for command in installs), installs
    copied = " ".join(arg for kind, arg in steps if kind == "COPY")
    assert "constraints.txt" in copied and "LICENSE" in copied


@pytest.mark.parametrize("name", NAMES)
def test_one_base_and_one_torch_policy(name):
    args = _args(name)
    # the image's stage, and any build stage before it, start from the one base
    assert all(arg.split()[0] == "${BASE_IMAGE}" for kind, arg in instructions(name) if kind == "FROM")
    assert args["BASE_IMAGE"] == _args("cpu")["BASE_IMAGE"]  # the same pinned base for all three
    index = args["TORCH_INDEX_URL"]
    if name == "gpu":
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    else:
        assert index == "https://download.pytorch.org/whl/cpu"
    run = next(arg for kind, arg in instructions(name) if kind == "RUN" and "pip install" in arg)
    assert '--extra-index-url "${TORCH_INDEX_URL}" torch' in run


@pytest.mark.parametrize("name", NAMES)
def test_oci_labels_come_from_build_arguments(name):
    args = _args(name)
    labels = " ".join(arg for kind, arg in instructions(name) if kind == "LABEL")
    for label in LABELS:
        match = re.search(rf'org\.opencontainers\.image\.{label}="\$\{{(\w+)\}}"', labels)
        assert match and match[1] in args, f"{label}: {labels}"
    assert f'org.opencontainers.image.title="stereo-spot-{name}"' in labels


@pytest.mark.parametrize("name", NAMES)
def test_the_image_runs_the_projects_console_commands_as_its_user(name):
    steps = instructions(name)
    env = " ".join(arg for kind, arg in steps if kind == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env  # `python`, `python3` and `stereo-spot` are the project's
    assert not [arg for kind, arg in steps if kind == "ENTRYPOINT"]  # the manifests' command/args run as written
    user_index = max(i for i, (kind, _) in enumerate(steps) if kind == "USER")
    assert steps[user_index][1] == "1000:1000"
    assert not [arg for kind, arg in steps[user_index:] if kind in ("RUN", "COPY", "ADD")]


def _ignored(patterns: list[str], path: str) -> bool:
    """.dockerignore's rule: the last matching pattern wins; `!` re-admits; a folder pattern covers its files."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = [path, *["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removeprefix("**/"))
               or fnmatch.fnmatch(c.split("/")[-1], pattern.removeprefix("**/")) for c in candidates):
            ignored = not negate
    return ignored


def test_the_dockerignore_admits_what_the_builds_copy_and_nothing_else():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = set()
    for name in NAMES:
        for kind, arg in instructions(name):
            if kind == "COPY" and not arg.startswith("--from="):  # a build stage's files are not the context's
                copied.update(arg.split()[:-1])
    for source in copied:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, source
        for file in files:
            assert not _ignored(patterns, str(file.relative_to(ROOT))), f"{file} is copied but ignored"
    for outside in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/bench_convert.py",
                    "sample.mp4", "stereo_spot/__pycache__/cli.cpython-311.pyc", "manifests/base/ui.yaml",
                    "scripts/setup"):
        assert _ignored(patterns, outside), outside


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_step_images_carry_the_multiview_x265_and_not_its_compilers(name):
    """--format spatial works in the pods: a build stage runs the script scripts/setup --spatial runs (the same
    pinned source and checksum) and the image takes only the installed program, where media/mvhevc.py looks.
    Caught: the COPY --from dropped, another prefix, the build inlined into the final stage (its compilers kept)."""
    from stereo_spot.media.mvhevc import DEFAULT_X265

    prefix = str(DEFAULT_X265.parent.parent)
    steps = instructions(name)
    froms = [i for i, (kind, _) in enumerate(steps) if kind == "FROM"]
    stage, final = steps[froms[0]:froms[-1]], steps[froms[-1]:]
    assert steps[froms[0]][1].split()[-2:] == ["AS", "x265-multiview"], steps[froms[0]]
    assert any(kind == "RUN" and f"build-x265-multiview {prefix}" in arg for kind, arg in stage), stage
    assert ("COPY", "scripts/build-x265-multiview /usr/local/bin/build-x265-multiview") in stage
    assert ("COPY", f"--from=x265-multiview {prefix}/bin {prefix}/bin") in final  # the program, not the library
    assert not any("build-x265-multiview" in arg or "apt-get" in arg for _, arg in final), final
