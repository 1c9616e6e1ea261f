"""A Python environment that sees only what ``scripts/setup`` (no ``--dev``) installs: the project and the
closure of its base dependencies.

The test environment has every extra installed. Rather than build a second virtualenv (torch alone is hundreds
of MB), this builds a shadow of the virtualenv's site-packages holding links to the base distributions' files
only, and a ``sitecustomize`` that puts the shadow in place of site-packages. To the interpreter an extra's
package is then simply absent: ``importlib.util.find_spec`` answers None and ``importlib.metadata`` does not list
it, exactly as after a base install.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import site
import sys
from pathlib import Path

from packaging.requirements import Requirement

_ALWAYS = {"pip", "setuptools", "wheel"}  # what `python -m venv` and the editable install bring


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_distributions(project: str = "stereo-spot") -> set[str]:
    """The project and everything its base requirements pull in (no extras), by normalised name."""
    seen: set[str] = set()
    pending = [project]
    while pending:
        name = pending.pop()
        if _key(name) in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(_key(name))
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen | _ALWAYS


def _site_packages() -> Path:
    return Path(next(p for p in site.getsitepackages() if p.startswith(sys.prefix)))


def base_environment(root: Path) -> dict[str, str]:
    """Environment variables for a subprocess that sees only the base install (``root`` holds the shadow)."""
    real = _site_packages()
    keep = base_distributions()
    shadow = root / "site-packages"
    shadow.mkdir(parents=True)
    wanted: set[str] = set()
    for dist in metadata.distributions():
        if _key(dist.metadata["Name"]) not in keep:
            continue
        for file in dist.files or []:
            first = Path(str(file)).parts[0]
            if first != "..":
                wanted.add(first)
    for entry in real.iterdir():
        # .pth files install the project's editable finder; keep those of the kept distributions only
        if entry.name in wanted or (entry.suffix == ".pth" and "stereo_spot" in entry.name):
            (shadow / entry.name).symlink_to(entry)
    hook = root / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        f"sys.path[:] = [{str(shadow)!r} if p == {str(real)!r} else p for p in sys.path]\n"
        "sys.path_importer_cache.clear()\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(hook)
    return env
