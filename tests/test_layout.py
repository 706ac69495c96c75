"""The floor plan as tests: which package may import which, no import cycles, and the size budget.

Imports are read with ``ast`` (every ``import`` anywhere in a file, lazy ones inside functions included; only
``if TYPE_CHECKING:`` blocks are left out, since they never run), so a violation fails here before it ships.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "rewards", "datamodules", "evaluation", "models", "rl", "training", "lightning_modules")
TOP = ("inference", "experiments")  # may import anything below
# Packages that must not import the ones named: the data layer and the scoring code sit below the modules.
FORBIDDEN = {
    "common": set(PACKAGES) - {"common"},
    "rewards": {"datamodules", "evaluation", "models", "rl", "training", "lightning_modules"},
    "datamodules": {"evaluation", "models", "rl", "training", "lightning_modules"},
    "evaluation": {"models", "training", "lightning_modules"},
    "models": {"rl", "training", "lightning_modules"},
    "rl": {"evaluation", "training", "lightning_modules"},
    "training": {"lightning_modules"},
}
COMPONENT_LINES = 200
MODULE_LINES = 400  # LightningModules, LightningDataModules and command-line entry points
GRPO_LINES = 300  # the GRPO module holds step logic; settings, bookkeeping and metrics live in rl/


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path) -> set[str]:
    """Project modules ``path`` imports (dotted names), wherever the import statement stands."""
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            todo.append(child)
    return {m for m in found if m.split(".")[0] in (*PACKAGES, *TOP, "cli")}


def project_files() -> dict[str, Path]:
    files = {"cli": ROOT / "cli.py"}
    for package in (*PACKAGES, *TOP):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports. Importing ``a.b.c`` also runs the package ``a.b``'s
    ``__init__``, an edge too unless the importer lives inside that package (then it has run already)."""
    files = project_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for module in imported_modules(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                inside = name == target or name.startswith(target + ".")
                if target in files and not inside and (i == len(parts) or (ROOT / Path(*parts[:i])).is_dir()):
                    targets.add(target)
        graph[name] = targets
    return graph


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_do_not_import_upward(package):
    bad = [
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if name.split(".")[0] == package
        for target in sorted(targets)
        if target.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a closed path, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _budget(path: Path) -> int:
    if path == ROOT / "lightning_modules" / "grpo.py":
        return GRPO_LINES
    text = path.read_text()
    big = path.parent.name == "lightning_modules" or "(L.LightningDataModule)" in text or "__main__" in text
    return MODULE_LINES if big or path.name == "cli.py" else COMPONENT_LINES


def test_size_budget():
    over = [
        f"{path.relative_to(ROOT)}: {n} lines > {_budget(path)}"
        for path in project_files().values()
        if (n := len(path.read_text().splitlines())) > _budget(path)
    ]
    assert not over, "\n".join(over)


def test_every_package_says_what_it_holds():
    for package in (*PACKAGES, *TOP):
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) == 1, package


def test_tests_mirror_the_packages():
    """Every test folder is a package's name, and only whole-project tests (CLI, configs, layout) stay at the top."""
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= set(PACKAGES + TOP), folders - set(PACKAGES + TOP)
    top = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    assert top == {"test_cli.py", "test_configs.py", "test_layout.py"}, top


# check_against_trl.py takes no options and needs TRL, a benchmark-only dependency: `make bench` runs it.
BENCHMARK_SCRIPTS = sorted(
    p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in ("common.py", "check_against_trl.py")
)


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS)
def test_benchmark_scripts_start(script):
    """Each benchmark imports our packages, not a same-named file beside it (benchmarks/common.py once shadowed
    the ``common`` package), and shows its options."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr[-2000:]
