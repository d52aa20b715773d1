"""The package's layers, read from its imports (every import, inside functions too; those under
`if TYPE_CHECKING:` are types only, never run): no import circle between its modules, nothing
below the job importing upward, Ray imported only by the executors (job/executors/), torch only
where models run; no module above 350 lines; and tests/job/ laid out as batch_inpaint/job/ is."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batch_inpaint"
TESTS = Path(__file__).resolve().parent
MAX_LINES = 350
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


@functools.cache
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
        elif _dynamic(node):  # importlib.import_module("ray"), __import__("ray"): imports too
            found.append((node.args[0].value, node.lineno))
    return found


def _dynamic(node: ast.AST) -> bool:
    """A call of import_module or __import__ with a constant module name."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
    return name in ("import_module", "__import__") and isinstance(node.args[0].value, str)


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


# What each part of the job may import from the rest of job/ (docs/architecture.md, "Layout"):
# io/ is its bottom; the stages (they run on workers) reach io/ and nothing else of the job;
# only run.py picks an executor. The rest (driver, report, pipeline, run) is kept circle-free by
# test_no_import_circle.
JOB_MAY_IMPORT = {
    "io": set(),
    "stages": {"io"},
    "executors": {"pipeline", "stages", "driver", "report", ""},  # "": job/__init__ itself
    "pipeline": {"stages", "driver"},
}


def test_the_job_parts_import_down():
    wrong = []
    for name, path in _modules().items():
        parts = name.split(".")
        if parts[:2] != ["batch_inpaint", "job"] or len(parts) < 3:
            continue
        part = parts[2]
        for target, line in _imports(path, name):
            t = target.split(".")
            if t[:2] != ["batch_inpaint", "job"]:
                continue
            to = t[2] if len(t) > 2 else ""
            if to == part:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if part in JOB_MAY_IMPORT and to not in JOB_MAY_IMPORT[part]:
                wrong.append(where)
            elif to == "executors" and part != "run":
                wrong.append(where + " (only job/run.py picks an executor)")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_import_reader_sees_dynamic_imports(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import importlib\nimportlib.import_module('ray.data')\n__import__('torch')\n"
                    "importlib.import_module(f'x.{1}')\n", encoding="utf-8")  # fmt: skip
    found = {t for t, _ in _imports(path, "probe")}
    assert found == {"importlib", "ray.data", "torch"}  # an f-string name is not read


def _users(prefix: str) -> dict[str, list[str]]:
    """Package module -> the lines where it imports `prefix` (or a submodule of it)."""
    out: dict[str, list[str]] = {}
    for name, path in _modules().items():
        for target, line in _imports(path, name):
            if target == prefix or target.startswith(prefix + "."):
                out.setdefault(name, []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return out


def test_torch_is_imported_only_where_models_run():
    """The driver's bookkeeping, the stages' glue, storage, manifests and images stay light: torch
    comes in through the models and detectors (and two lazy device counts), never directly."""
    allowed = ("batch_inpaint.models.", "batch_inpaint.detect.")
    lazy = {"batch_inpaint.job.executors", "batch_inpaint.cli.demo"}  # cuda device counts
    users = _users("torch")
    assert any(u.startswith(allowed) for u in users), "no model imports torch: nothing read"
    wrong = [line for u, lines in users.items() if not u.startswith(allowed) and u not in lazy
             for line in lines]  # fmt: skip
    assert not wrong, "torch imported outside models/ and detect/:\n" + "\n".join(wrong)


def test_no_module_is_longer_than_350_lines():
    sizes = {
        path: len(path.read_text(encoding="utf-8").splitlines()) for path in _modules().values()
    }
    assert len(sizes) > 100
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p, n in sorted(sizes.items())
            if n > MAX_LINES]  # fmt: skip
    assert not long, f"modules above {MAX_LINES} lines (split them by concern):\n" + "\n".join(long)


# tests/job/ at its top level: the end-to-end tests of the whole job (and shared helpers); every
# other job test sits in the folder of the role it tests.
END_TO_END = {"test_contract.py", "test_first_day.py", "test_error_rate.py"}


def test_tests_mirror_the_job_layout():
    job = PACKAGE / "job"
    roles = sorted(p.name for p in job.iterdir() if (p / "__init__.py").is_file())
    assert {"stages", "driver", "report", "io", "executors"} <= set(roles)
    for role in roles:
        folder = TESTS / "job" / role
        assert (folder / "__init__.py").is_file(), f"tests/job/{role}/ is missing"
        assert list(folder.glob("test_*.py")), f"tests/job/{role}/ has no test"
    top = {p.name for p in (TESTS / "job").glob("test_*.py")}
    stray = sorted(top - END_TO_END)
    assert not stray, f"tests/job/ holds {stray}: move each into the folder of the role it tests"
