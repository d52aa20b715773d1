"""The package's layers, read from its imports (every import, inside functions too; those under
`if TYPE_CHECKING:` are types only, never run): no import circle between its modules, nothing
below the job importing upward, and Ray imported only by the Ray executor (job/executors/)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batch_inpaint"
BASE = {"errors", "vocab", "option", "params", "batches"}  # plain modules any layer may use
# What each package below the job may import besides itself and BASE (docs/architecture.md).
BELOW_THE_JOB = {
    "storage": set(),
    "models": {"storage"},
    "image": {"models", "storage"},
    "detect": {"image", "models", "storage"},
    "manifest": {"detect", "image", "storage"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str) -> list[tuple[str, int]]:
    """(module imported, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(up + ([mod] if mod else []))
            found.append((mod, node.lineno))
            found += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return found


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports. `from pkg import x` counts `pkg` (its
    __init__ runs) and `pkg.x` when x is a module; the root package's face is left out (it
    re-exports from everywhere and nothing inside imports it)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in _imports(path, name):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and "." in target:
                graph[name].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_circle_finder_finds_a_circle():
    # the check itself: a -> b -> c -> a is one circle, d -> a is none
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    graph = _graph(_modules())
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # it read the package
    circles = [" <-> ".join(c) for c in _circles(graph)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_nothing_below_the_job_imports_upward():
    mods = _modules()
    wrong = []
    for name, path in mods.items():
        layer = name.split(".")[1] if name.count(".") else None
        if layer not in BELOW_THE_JOB:
            continue
        allowed = {layer} | BASE | BELOW_THE_JOB[layer]
        for target, line in _imports(path, name):
            parts = target.split(".")
            if parts[0] == "batch_inpaint" and len(parts) > 1 and parts[1] not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_ray_is_imported_only_by_the_ray_executor():
    executors = PACKAGE / "job" / "executors"
    users, wrong = [], []
    for name, path in _modules().items():
        for target, line in _imports(path, name):
            if target == "ray" or target.startswith("ray."):
                users.append(path)
                if executors not in path.parents:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert users, "no module imports ray: the check reads nothing"
    assert not wrong, "\n".join(wrong)
