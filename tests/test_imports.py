"""The package's import graph: no module imports another in a circle, none imports from a higher layer.

The graph is read with `ast` from the sources (nothing is imported): every `import upocr...` and
`from upocr... import ...` of a module, at module level or inside a function (a function-level import
that closes a loop is still a loop, only a deferred one), except under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "upocr"

# Layers, lowest first. A module may import from its own layer and the layers below it, never above.
# `upocr.weights` (file formats, safe loading, inference defaults, training record) imports nothing from
# the network; the network loads and saves through it, so it sits below `upocr.model`.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("upocr.utils", "upocr.tasks", "upocr.io", "upocr.inpaint", "upocr.visualize", "upocr.weights",
                     "upocr.samples", "upocr.tiling", "upocr.removal", "upocr.strokes", "upocr.detector", "upocr.options",
                     "upocr.fields")),  # fmt: skip
    ("network and data", ("upocr.model", "upocr.data", "upocr.export", "upocr.forensics")),  # export: the network as ONNX
    ("inference", ("upocr.decoding", "upocr.predict")),
    ("file pipeline", ("upocr.files",)),
    ("applications", ("upocr.evaluate", "upocr.train", "upocr.serve", "upocr.batch")),  # batch: the file pipeline on Ray
    ("front", ("upocr.commands", "upocr.cli", "upocr")),  # `upocr` itself: the package's API (__init__)
]


def module_files() -> dict[str, tuple[Path, bool]]:
    """{module name: (file, is a package's __init__)} for every module of the package."""
    modules = {}
    for path in sorted((SOURCE / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if _type_checking_only(node):
            pending.extend(node.orelse)  # the `if` body runs for type checkers only
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _owning_module(name: str, modules: dict) -> str | None:
    """The module that `name` (a module, or a name inside one) belongs to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, modules: dict) -> set[str]:
    path, is_package = modules[module]
    targets = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # `from a import b` imports the module a.b when there is one, else a name of module a
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                owner = _owning_module(name, modules)
                if owner is not None and owner != module:
                    targets.add(owner)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imports_of(module, modules) for module in modules}


def layer_of(module: str) -> int | None:
    """Index of the layer whose longest matching prefix covers `module`."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm (the graph has ~70 nodes: recursion is fine)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_within(group, graph) for group in groups]


def _path_within(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A cycle through the group's first module, by breadth-first search inside the group."""
    start, members = group[0], set(group)
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & members):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    return group


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in module_files() if layer_of(module) is None)
    assert not unplaced, f"modules in no layer of tests/test_imports.py LAYERS: {', '.join(unplaced)}"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if layer_of(target) is not None and layer_of(module) is not None and layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_weights_import_nothing_from_the_network():
    graph = import_graph()
    offenders = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("upocr.weights") for t in ts
                       if t.startswith("upocr.model"))  # fmt: skip
    assert not offenders, offenders


# Packages whose modules use no other module's private names (`from upocr.x import _name`, `x._name`):
# what one module needs of another is public there.
NO_PRIVATE_IMPORTS = ("upocr.data", "upocr.batch", "upocr.commands.batch")


def private_uses(module: str, modules: dict) -> list[str]:
    """`other._name` references of `module` to another upocr module's private (one underscore) names."""
    path, is_package = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found, bound = [], {}  # bound: local name -> the upocr module it stands for
    for node in _import_nodes(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE) and not node.level:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in modules:
                    bound[alias.asname or alias.name] = target
                elif alias.name.startswith("_") and node.module != module:
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            bound.update({alias.asname: alias.name for alias in node.names if alias.asname and alias.name in modules})
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{bound[node.value.id]}.{node.attr}")
    return sorted(set(found))


def test_no_module_uses_another_modules_private_names():
    modules = module_files()
    offenders = [f"{module} uses {name}" for module in sorted(modules) if module.startswith(NO_PRIVATE_IMPORTS)
                 for name in private_uses(module, modules)]
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------------------- the checks themselves


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A throwaway `upocr` source tree, read by the same functions."""
    root = tmp_path / "src" / PACKAGE

    def write(files: dict[str, str]) -> dict[str, set[str]]:
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        monkeypatch.setitem(globals(), "SOURCE", tmp_path / "src")
        return import_graph()

    return write


def test_a_deferred_import_loop_is_found(fake_package):
    graph = fake_package({
        "__init__.py": "",
        "evaluate/__init__.py": "",
        "evaluate/fid.py": "def f():\n    from upocr.evaluate.removal import read\n",
        "evaluate/removal.py": "from upocr.evaluate import fid\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from upocr import predict\n",
        "predict.py": "",
    })  # fmt: skip
    assert graph["upocr.evaluate.removal"] == {"upocr.evaluate.fid"}  # the TYPE_CHECKING import does not count
    assert cycles(graph) == [["upocr.evaluate.fid", "upocr.evaluate.removal", "upocr.evaluate.fid"]]


def test_a_private_import_is_found(fake_package):
    fake_package({"__init__.py": "", "data/__init__.py": "", "data/a.py": "def _x():\n    pass\n",
                  "data/b.py": "from upocr.data.a import _x\n", "data/c.py": "from upocr.data import a\na._x()\n"})
    modules = module_files()
    assert private_uses("upocr.data.b", modules) == private_uses("upocr.data.c", modules) == ["upocr.data.a._x"]
    assert private_uses("upocr.data.a", modules) == []


def test_an_upward_import_is_found(fake_package):
    graph = fake_package({"__init__.py": "", "weights.py": "from .model.upocr import UPOCR\n", "model/__init__.py": "",
                          "model/upocr.py": "import upocr.weights\n"})  # fmt: skip
    assert graph["upocr.weights"] == {"upocr.model.upocr"}  # relative imports resolved
    assert layer_of("upocr.weights") < layer_of("upocr.model.upocr")
    assert cycles(graph) == [["upocr.model.upocr", "upocr.weights", "upocr.model.upocr"]]


# ---------------------------------------------------------------- the faces reach the library through its API

# The command line reaches the network and the weights only through the package's public API (`upocr`:
# load_model, build_model, describe_weights, InferenceDefaults, ...), never by importing them itself.
FACE_FORBIDDEN = ("upocr.model", "upocr.weights")


def test_commands_reach_the_network_and_weights_only_through_the_api():
    modules = module_files()
    offenders = sorted(
        f"{module} imports {target}"
        for module in modules if module.startswith("upocr.commands")
        for target in imports_of(module, modules) if target.startswith(FACE_FORBIDDEN)
    )
    assert not offenders, "use the `upocr` API instead:\n" + "\n".join(offenders)


# ---------------------------------------------------------------- the architecture picture is these layers

ARCHITECTURE_DOC = SOURCE.parent / "docs" / "architecture.md"


def layers_mermaid() -> str:
    """The layer picture of docs/architecture.md, made from LAYERS (one box a layer, lowest at the bottom)."""
    lines = ["flowchart BT"]
    for index, (name, members) in enumerate(LAYERS):
        shown = " · ".join(member.removeprefix("upocr.") if member != "upocr" else "upocr (the API)" for member in members)
        lines.append(f'    layer{index}["<b>{name}</b><br/>{shown}"]')
    lines += [f"    layer{index + 1} --> layer{index}" for index in range(len(LAYERS) - 1)]
    return "\n".join(lines)


def _doc_picture(text: str) -> str:
    start = text.index("```mermaid\n") + len("```mermaid\n")
    return text[start : text.index("```", start)].rstrip("\n")


def test_the_architecture_picture_shows_the_tested_layers():
    assert _doc_picture(ARCHITECTURE_DOC.read_text(encoding="utf-8")) == layers_mermaid(), (
        "docs/architecture.md's picture differs from LAYERS: run `python tests/test_imports.py` to redraw it")


if __name__ == "__main__":  # redraw docs/architecture.md's picture from LAYERS
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    ARCHITECTURE_DOC.write_text(text.replace(_doc_picture(text), layers_mermaid()), encoding="utf-8")
    print(f"redrew {ARCHITECTURE_DOC}")


def test_building_the_command_line_leaves_slow_optional_modules_unimported():
    """Every command builds the whole parser first: what it imports is start-up time for all of them (scipy.signal
    was 0.4 s, through the evaluation metrics; the metrics import scipy where they use it)."""
    import subprocess
    import sys

    code = ("import sys, upocr.cli; upocr.cli.build_parser(); "
            "print(' '.join(m for m in ('scipy.signal', 'torch._dynamo') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
