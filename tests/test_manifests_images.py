"""Every image and entrypoint the manifests reference exists in this repository: images/<name>/Dockerfile for
each image, the component function for each Argo runner entrypoint and Kubeflow executor, the CLI command the UI
Deployment runs; and the Dockerfiles are pinned, non-root and install the project."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
IMAGE = re.compile(r"^(?:[\w.-]+(?::\d+)?/)*stereo-spot-(?P<name>[a-z0-9-]+)(?::(?P<tag>[\w.-]+))?"
                   r"(?:@sha256:[0-9a-f]{64})?$")


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _manifest_docs() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if path.name not in ("kustomization.yaml", "kustomizeconfig.yaml"):
            docs += _yaml_docs(path)
    kubectl = shutil.which("kubectl")
    if kubectl:  # what the overlays really apply, images rewritten
        for overlay in sorted((MANIFESTS / "overlays").glob("*/kustomization.yaml")):
            out = subprocess.run([kubectl, "kustomize", str(overlay.parent)], capture_output=True, text=True,
                                 timeout=120, check=True).stdout
            docs += [d for d in yaml.safe_load_all(out) if d]
    return docs


def _images(node) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                found += _images(value)
    elif isinstance(node, list):
        for value in node:
            found += _images(value)
    return found


# Images the project runs but does not build, each pinned to a release.
THIRD_PARTY = {"quay.io/oauth2-proxy/oauth2-proxy:v7.6.0"}  # the app's sign-in proxy (manifests/base/ui.yaml)


def test_every_referenced_image_has_a_dockerfile():
    images = set(_images(_manifest_docs())) - THIRD_PARTY
    names = {IMAGE.match(image)["name"] if IMAGE.match(image) else image for image in images}
    assert {"cpu", "gpu", "ui"} <= names, images
    for name in names:
        assert (ROOT / "images" / name / "Dockerfile").is_file(), f"no images/{name}/Dockerfile for {images}"


def _resolve(entrypoint: str):
    module, function = entrypoint.split(":")
    return getattr(importlib.import_module(module), function)


def test_every_argo_entrypoint_exists():
    template = _yaml_docs(MANIFESTS / "generated" / "workflowtemplate.yaml")[0]
    scripts = [t for t in template["spec"]["templates"] if "script" in t]
    assert scripts
    for t in scripts:
        args = t["script"]["args"]
        entrypoint = args[args.index("-e") + 1]
        function = _resolve(entrypoint)
        declared = [p["name"] for p in t["inputs"]["parameters"]]
        assert declared == list(inspect.signature(function).parameters), entrypoint


def test_every_kfp_executor_runs_an_existing_step_command():
    """The container components run the image's `stereo-spot step <name>`: the command exists, and every option
    the compiled spec passes is one of its options (a renamed option fails here, not in a pod)."""
    from typer.main import get_command

    from stereo_spot.cli.main import app

    spec = _yaml_docs(MANIFESTS / "generated" / "kfp-pipeline.yaml")[0]
    commands = get_command(app).commands
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        program, group, step = container["command"]
        assert program == "stereo-spot" and group in commands, name
        command = commands[group].commands[step]
        known = {option for param in command.params for option in param.opts}
        passed = [arg for arg in container["args"] if arg.startswith("--")]
        assert passed and set(passed) <= known, (name, set(passed) - known)
        required = {param.opts[0] for param in command.params if param.required}
        assert required <= set(passed), (name, required - set(passed))


def test_the_ui_deployment_runs_an_existing_command():
    from typer.main import get_command

    from stereo_spot.cli.main import app

    deployment = next(d for d in _yaml_docs(MANIFESTS / "base" / "ui.yaml") if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "stereo-spot" and "stereo-spot" in (ROOT / "pyproject.toml").read_text()
    assert args[1] in get_command(app).commands


@pytest.mark.parametrize("name", ["cpu", "gpu", "ui"])
def test_dockerfiles_are_pinned_non_root_and_install_the_project(name):
    text = (ROOT / "images" / name / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))  # FROM ${BASE_IMAGE}: the ARG's default
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), b)
             for b in re.findall(r"^FROM\s+(\S+)", text, re.M)]
    assert bases and all(re.search(r":[\w.-]*\d[\w.-]*$", b) and not b.endswith(":latest") for b in bases), bases
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for source in re.findall(r"^COPY\s+(?!--from=)(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"images/{name}/Dockerfile copies {path}, which is not in the repo"
    assert re.search(r'pip install [^\n]*"\.\[', text), "the project is not installed"
    assert "pip install" not in text.split("USER")[-1], "installs after dropping root"
