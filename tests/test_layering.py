"""The package's import graph, read from the source with ``ast``: no cycles, no borrowed private names, and
no layer reaching up: the core and the services never import the operations or the interfaces, and the
operations never import an interface.

The layers are the table below (the README's Architecture section draws it); moving a package changes only that
table. A module belongs to the layer with the longest prefix that names it or a package above it.

Seen red: on the code before ``stereo/segment_stages.py``, ``inpainter.py`` and ``frame_edges.py`` (the three
circles, ``chunk_chain`` taking ``segment``'s private names); with ``from .. import cli`` planted in a function of
``stereo/warp.py`` (a relative import, core -> interface); with ``from stereo_spot.cluster import worker``
planted in ``delivery.py`` (service -> operation).
"""

import ast
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Where each package of the installed distribution lives in the source tree (pyproject's package-dir).
PACKAGE_DIRS = {
    "stereo_spot": "stereo_spot",
    "stereo_spot.ui": "ui",
    "stereo_spot.components": "components",
    "stereo_spot.pipelines": "pipelines",
}

# Layers from the top down. Imports point down: FORBIDDEN below lists the upward ones the test refuses.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # What a person or a pipeline starts: the command line, the app, the pipelines and their steps' entry points.
    (
        "interfaces",
        (
            "stereo_spot.__main__",
            "stereo_spot.cli",
            "stereo_spot.ui",
            "stereo_spot.pipelines",
            "stereo_spot.components",
        ),
    ),
    # What runs beside a deployment (the SQS worker, reconcile, kfp-trigger, doctor) and the AWS account tooling.
    # The interfaces start them; they never reach back into an interface.
    ("operations", ("stereo_spot.cluster", "stereo_spot.aws")),
    # Everything not named elsewhere: the runner, delivery, reports, leases, garbage collection, ...
    ("services", ("stereo_spot",)),
    # The domain every engine meets, and the adapters that implement its ports (including the links to a job's
    # Argo or Kubeflow run and logs: every backend the adapters build carries one).
    (
        "core",
        (
            "stereo_spot.models",
            "stereo_spot.keys",
            "stereo_spot.ports",
            "stereo_spot.config",
            "stereo_spot.errors",
            "stereo_spot.steps",
            "stereo_spot.media",
            "stereo_spot.stereo",
            "stereo_spot.adapters",
        ),
    ),
]

# Pairs (importer layer, imported layer) that the import graph must never contain. The core does import a few
# services (steps reads report and leases, stereo/ reads weights and hub_models), so that pair is not here yet.
FORBIDDEN = {
    ("operations", "interfaces"),
    ("services", "interfaces"),
    ("services", "operations"),
    ("core", "interfaces"),
    ("core", "operations"),
}


def _source_modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """Every module of the distribution: dotted name -> (file, whether it is a package's __init__)."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if package == "stereo_spot" and parts[0] in {"ui", "components", "pipelines"}:
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


MODULES = _source_modules()


def _resolve_from(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from, relative dots resolved."""
    if not node.level:
        return node.module or ""
    package = importer if is_package else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(name: str) -> Iterator[tuple[str, int, str | None]]:
    """(imported module, line, imported attribute name or None) for every import statement anywhere in a module,
    those inside functions included: an import deferred into a function still closes a circle."""
    path, is_package = MODULES[name]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, None
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(name, is_package, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in MODULES:
                    yield submodule, node.lineno, None
                else:
                    yield base, node.lineno, alias.name


def _internal(target: str) -> str | None:
    """The project module an import lands on (the nearest enclosing one for ``import a.b.c``), or None."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _, _ in _imports(name):
            module = _internal(target)
            if module and module != name:
                edges[name].add(module)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, for a stable message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _shortest_circle(edges: dict[str, set[str]], component: list[str]) -> list[str]:
    """The shortest import path from the component's first module back to itself (breadth first): one circle
    to read and break, where the component may hold many."""
    members, start = set(component), component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a cycle but no path leads back to it")


def _layer(module: str) -> str:
    best, best_len = "", -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    assert best, f"{module} belongs to no layer: add it to LAYERS"
    return best


def test_the_table_knows_every_module():
    """A misspelt prefix in LAYERS would silently leave its modules to the catch-all layer."""
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            assert prefix in MODULES, f"LAYERS names {prefix}, which is no module of the package"
    assert len(MODULES) > 50, "the package was not found where pyproject says it is"


def test_no_import_cycle():
    """Catches any circle, two modules or more, through imports at module level or inside functions."""
    edges = _graph()
    cycles = [f"{' -> '.join(_shortest_circle(edges, c))} ({len(c)} modules import each other in all)"
              for c in _cycles(edges)]
    assert not cycles, "import cycles in stereo_spot:\n" + "\n".join(cycles)


def test_no_module_imports_another_modules_private_name():
    """``from x import _y`` couples to what x keeps to itself. A private module of the importer's own package
    (``components/_common.py``) is that package's shared code and is fine."""
    borrowed = []
    for name in MODULES:
        for target, line, attribute in _imports(name):
            module = _internal(target)
            if module is None:
                continue
            if attribute is not None and attribute.startswith("_") and not attribute.startswith("__"):
                borrowed.append(f"{MODULES[name][0].relative_to(ROOT)}:{line} takes {attribute} from {module}")
            private_parts = [p for p in module.split(".") if p.startswith("_") and not p.startswith("__")]
            if private_parts and not name.startswith(module.rpartition(".")[0] + "."):
                borrowed.append(f"{MODULES[name][0].relative_to(ROOT)}:{line} imports private module {module}")
    assert not borrowed, "private names used across modules:\n" + "\n".join(borrowed)


@pytest.mark.parametrize("importer_layer,imported_layer", sorted(FORBIDDEN))
def test_layers_point_down(importer_layer, imported_layer):
    """Catches a core module (models, stereo/, media/, ...) or a service (runner, delivery, ...) importing an
    operation (cluster/, aws/) or an interface (cli/, ui, pipelines, ...), and an operation importing an
    interface."""
    wrong = []
    for name in MODULES:
        if _layer(name) != importer_layer:
            continue
        for target, line, _ in _imports(name):
            module = _internal(target)
            if module and _layer(module) == imported_layer:
                wrong.append(f"{MODULES[name][0].relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, f"the {importer_layer} layer imports the {imported_layer} layer:\n" + "\n".join(wrong)
