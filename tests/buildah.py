"""Build and run the project's images without a Docker daemon: Debian's buildah (chroot isolation, vfs storage).

Base images cannot be pulled where the tests run, so the Dockerfiles' base (a build argument, BASE_IMAGE) is
replaced by a stand-in made with debootstrap from the machine's own Debian mirror: the same Debian release as the
real base, with python3 and venv. `pip install` inside a build sees this machine's pip configuration (its indexes,
wheel folders and CA bundle), mounted read-only for the build and never copied into the image.

Everything lives in one buildah storage under the user's cache folder. The stand-in base is kept under a tag
derived from its recipe, and each built image under a tag derived from everything its build reads (Dockerfile,
lock, sources, base), so a rerun with nothing changed reuses the image and a change rebuilds it.

A Dockerfile's build stages (``FROM ${BASE_IMAGE} AS <stage>``, e.g. the multiview x265 the CPU and GPU images
compile) are built once as images of their own, tagged from the stage's instructions, the files it copies and the
base, and handed to the image's build as a build context of the stage's name, which buildah uses in place of the
stage for ``COPY --from=<stage>`` and then skips the stage (``--skip-unused-stages``, on by default; buildah's
imagebuildah/stage_executor.go looks up ``additionalBuildContexts[from]`` before the stages). A change to the
project's sources then rebuilds only the image, not the compiler's work.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("buildah", "debootstrap")
SUITE = "bookworm"  # the Debian release of the Dockerfiles' python:3.11-slim-bookworm base
BASE_PACKAGES = ("python3", "python3-venv")
BASE_REPOSITORY = "localhost/stereo-spot-stand-in-base"
# what `pip install .` reads, as .dockerignore admits it, plus the lock
CONTEXT = ("constraints.txt", "pyproject.toml", "README.md", "LICENSE", "stereo_spot", "components", "pipelines",
           "ui", "scripts/build-x265-multiview")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stereo-spot" / "buildah"


def _buildah(*args: str, check: bool = True, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    store = cache_dir()
    command = ["buildah", "--root", str(store / "storage"), "--runroot", str(store / "run"),
               "--storage-driver", "vfs", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:8])} ... failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
                           f"\n{proc.stderr[-4000:]}")
    return proc


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for uri in re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)",
                                                                            text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _exists(image: str) -> bool:
    return _buildah("inspect", "--type", "image", image, check=False).returncode == 0


def stand_in_base() -> str:
    """The stand-in for python:3.11-slim-bookworm, made once per recipe and kept in the cache."""
    mirror = debian_mirror()
    recipe = f"{SUITE} minbase {' '.join(BASE_PACKAGES)} {mirror} trimmed-v1"
    image = f"{BASE_REPOSITORY}:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    if _exists(image):
        return image
    container = _buildah("from", "scratch").stdout.strip()
    try:
        root = Path(_buildah("mount", container).stdout.strip())
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
                               str(root), mirror], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        # what a slim base leaves out: package caches and lists, docs, man pages, translations
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale",
                     "usr/share/info"):
            shutil.rmtree(root / junk, ignore_errors=True)
        _buildah("umount", container)
        _buildah("config", "--cmd", "/bin/sh", "--env", "LANG=C.UTF-8", container)
        _buildah("commit", "--rm", container, image)
    except BaseException:
        _buildah("rm", container, check=False)
        raise
    return image


def pip_mounts(workdir: Path) -> list[str]:
    """`-v` arguments giving a build this machine's pip configuration: one pip.conf with every setting pip sees
    here (files and environment), and each local path it names (CA bundle, wheel folders, file:// indexes)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          timeout=60, check=True)
    config = configparser.ConfigParser(interpolation=None)
    paths: set[str] = set()
    for line in proc.stdout.splitlines():
        match = re.match(r"^(:env:|[\w-]+)\.([\w-]+)='(.*)'$", line.strip())
        if not match:
            continue
        section, key, value = match.groups()
        section = "global" if section == ":env:" else section
        if not config.has_section(section):
            config.add_section(section)
        config.set(section, key, value)
        for token in value.split():
            path = token.removeprefix("file://").rstrip("/")
            if path.startswith("/") and os.path.exists(path):
                # a file:// index (…/simple) links to files beside it: mount the folder that holds both
                paths.add(str(Path(path).parent) if token.startswith("file://") and path.endswith("/simple")
                          else path)
    conf = workdir / "pip.conf"
    with conf.open("w") as handle:
        config.write(handle)
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro"]
    for path in sorted(paths):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def local_torch_index(version: str) -> str | None:
    """Where this machine's pip configuration has the CPU build of torch ``version`` in a local wheel folder (a
    mirror without PyTorch's index), the index to give the build instead of PyTorch's: pip then takes torch from
    the folder (``+cpu`` sorts above the plain version) and its dependencies from the usual index. None elsewhere:
    the Dockerfile's own default (PyTorch's CPU index) applies."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          timeout=60, check=True)
    settings = dict(re.findall(r"^(?::env:|global)\.([\w-]+)='(.*)'$", proc.stdout, re.M))
    folders = [Path(p.removeprefix("file://")) for p in settings.get("find-links", "").split()]
    if any(folder.is_dir() and any(folder.glob(f"torch-{version}+cpu-*.whl")) for folder in folders):
        return settings.get("index-url", "https://pypi.org/simple")
    return None


def context_digest(dockerfile: Path, base: str, build_args: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps([base, sorted(build_args.items())]).encode())
    for name in (str(dockerfile.relative_to(ROOT)), *CONTEXT):
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(ROOT)
            if "__pycache__" in relative.parts or file.suffix == ".pyc" or ".egg-info" in str(relative):
                continue
            digest.update(f"{relative}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def git_revision() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def build_stages(dockerfile: Path) -> dict[str, str]:
    """The Dockerfile's stages before its last (``FROM … AS <stage>``, named), each as block of instructions."""
    blocks = re.split(r"^(?=FROM\s)", dockerfile.read_text(), flags=re.M)
    stages = {}
    for block in blocks[1:-1]:
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", block, re.I)
        if match:
            stages[match[1]] = block
    return stages


def _stage_image(dockerfile: Path, stage: str, block: str, base: str) -> str:
    """The stage built on its own (``--target``), reused while its instructions, the files it copies and the base
    are the same: the CPU and GPU images' identical stages share one build."""
    digest = hashlib.sha256(json.dumps([base, re.sub(r"(?m)^#.*\n", "", block)]).encode())
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)", block, re.M):
        digest.update((ROOT / source).read_bytes())
    repository = f"localhost/stereo-spot-{stage}"
    image = f"{repository}:{digest.hexdigest()[:16]}"
    if not _exists(image):
        _buildah("bud", "--isolation", "chroot", "--pull=never", "--layers=false", "-f", str(dockerfile),
                 "--target", stage, "--build-arg", f"BASE_IMAGE={base}", "-t", image, str(ROOT), timeout=3600)
    _remove_other_tags(repository, image)
    return image


def _remove_other_tags(repository: str, image: str) -> None:
    """Older cached builds of the same image (vfs storage keeps full copies)."""
    for line in _buildah("images", "--format", "{{.Name}}:{{.Tag}}").stdout.split():
        if line.startswith(f"{repository}:") and line != image:
            _buildah("rmi", "--force", line, check=False)


def build(name: str, build_args: dict[str, str] | None = None) -> str:
    """Build images/<name>/Dockerfile on the stand-in base, its stages from their own cached images; reuse the
    cached image when nothing it reads changed. Older cached builds of the same image are removed."""
    base = stand_in_base()
    dockerfile = ROOT / "images" / name / "Dockerfile"
    stages = {stage: _stage_image(dockerfile, stage, block, base)
              for stage, block in build_stages(dockerfile).items()}
    repository = f"localhost/stereo-spot-{name}"
    args = {"BASE_IMAGE": base, "REVISION": git_revision(), **(build_args or {})}
    image = f"{repository}:{context_digest(dockerfile, base, {**args, **stages})}"
    if not _exists(image):
        with tempfile.TemporaryDirectory() as scratch:
            command = ["bud", "--isolation", "chroot", "--pull=never", "--layers=false", "-f", str(dockerfile),
                       *pip_mounts(Path(scratch)), "-t", image]
            for key, value in args.items():
                command += ["--build-arg", f"{key}={value}"]
            for stage, stage_image in stages.items():
                command += ["--build-context", f"{stage}=container-image://{stage_image}"]
            _buildah(*command, str(ROOT), timeout=3600)
    _remove_other_tags(repository, image)
    return image


def image_config(image: str) -> dict:
    """The image's OCI configuration (User, Env, Labels, Cmd, WorkingDir ...)."""
    return json.loads(_buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]


class Container:
    """A working container of an image; commands run in it with chroot isolation and the host's network."""

    def __init__(self, image: str, volumes: Sequence[str] = (), env: dict[str, str] | None = None):
        self.image = image
        self.volumes = list(volumes)
        self.env = dict(env or {})
        self.id = _buildah("from", "--pull=never", image).stdout.strip()

    def _command(self, argv: Sequence[str]) -> list[str]:
        store = cache_dir()
        command = ["buildah", "--root", str(store / "storage"), "--runroot", str(store / "run"),
                   "--storage-driver", "vfs", "run", "--isolation", "chroot", "--network", "host"]
        for volume in self.volumes:
            command += ["-v", volume]
        for key, value in self.env.items():
            command += ["-e", f"{key}={value}"]
        return [*command, self.id, "--", *argv]

    def run(self, argv: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(argv), capture_output=True, text=True, timeout=timeout)

    @contextlib.contextmanager
    def serve(self, argv: Sequence[str]) -> Iterator[subprocess.Popen]:
        """A long-running command (a server), stopped with its whole process group on exit."""
        proc = subprocess.Popen(self._command(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=30)

    def remove(self) -> None:
        _buildah("rm", self.id, check=False)
