"""The package's shape: no import circles, lower floors never import higher ones, no module past
600 lines. An AST walk over every import, those inside functions included."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "batchcli"

# Floors, top to bottom (README "Where things live"). A module may import its own floor or lower.
FLOORS = [
    ("cli", "server", "__main__"),
    ("api",),
    ("results",),
    ("engine",),
    ("models", "pipeline"),
    ("inputs", "executors", "ops", "video"),
    ("imaging",),
    ("errors", "units", "atomic", "argfiles", "jsonio", "__init__"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    deps = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t.startswith("batchcli") and t != name:
                deps.add(t)
    return deps


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _floor(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module}: not on any floor; add its folder to FLOORS and to the README")


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_lower_floors_never_import_higher_ones():
    wrong = [f"{mod} (floor {_floor(mod)}) imports {dep} (floor {_floor(dep)})"
             for mod, deps in sorted(_graph().items()) for dep in sorted(deps) if _floor(dep) < _floor(mod)]
    assert not wrong, "\n".join(wrong)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    modules = {"batchcli.a": tmp_path / "a.py", "batchcli.b": tmp_path / "b.py"}
    (tmp_path / "a.py").write_text("def f():\n    from batchcli import b\n")
    assert _imports("batchcli.a", modules["batchcli.a"], modules) == {"batchcli.b"}


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_past_600_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 600, f"{path.name}: {lines} lines"


def test_readme_where_things_live_names_every_folder_and_module():
    readme = (PKG.parent / "README.md").read_text()
    section = readme.split("### Where things live", 1)[1].split("\n#", 1)[0]
    named = {cell.strip("`/") for row in section.splitlines() if row.startswith("| `")
             for cell in row.split("|")[1].replace(",", " ").split()}
    present = {p.name if p.is_dir() else p.name for p in PKG.iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and not p.name.startswith("__"))}
    assert present <= named, f"not in the README's table: {sorted(present - named)}"
    assert named <= present, f"in the README's table but not in batchcli/: {sorted(named - present)}"


def test_make_test_lints_before_the_suite():
    recipe = (PKG.parent / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("ruff check") < recipe.index("pytest")
    assert "[tool.ruff" in (PKG.parent / "pyproject.toml").read_text()
    readme = (PKG.parent / "README.md").read_text()
    assert "make test    # same set-up, then the lint (ruff) and the whole test suite" in readme
    assert "2 test processes per CPU, JOBS=N to choose" in readme
    assert "-n $(JOBS)" in recipe
    if shutil.which("make") and shutil.which("nproc"):
        line = next(x for x in (PKG.parent / "Makefile").read_text().splitlines() if x.startswith("JOBS ?="))
        env = dict(os.environ, OMP_NUM_THREADS="1")  # nproc obeys it; a user's shell may have it set
        jobs = subprocess.run(["make", "-s", "-f", "-", "show"], input=f"{line}\nshow:\n\t@echo $(JOBS)\n",
                              capture_output=True, text=True, check=True, env=env)
        assert jobs.stdout.strip() == str(2 * len(os.sched_getaffinity(0)))
