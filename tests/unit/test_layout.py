"""The house's rules, read from the source: imports only point down a floor (or stay in
their room), no circle of imports, and no `sys.path` patch anywhere (README: Layout)."""

from __future__ import annotations

import ast
import subprocess

import pytest

from support.helpers import ROOT

# Floors, top to bottom: a module may import its own room and the floors below it.
# http stands apart: it imports nothing of the others but the basement (it serves any app).
FLOORS = {
    "cli": 8, "process": 7, "app": 6, "config": 5, "admission": 4, "ops": 3, "sales": 2, "store": 1,
    "http": 1, "exits": 0, "throttle": 0, "": 0,
}
BASEMENT = {room for room, floor in FLOORS.items() if floor == 0}  # what every floor may use


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "" : the package itself (__version__)


def imports() -> dict[str, set[str]]:
    """Every seckill module and the seckill modules it imports (TYPE_CHECKING ones too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "seckill").rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seckill"):
                for alias in node.names:  # `from seckill.sales import outcomes` names a module
                    candidate = f"{node.module}.{alias.name}"
                    is_module = (ROOT / (candidate.replace(".", "/") + ".py")).exists()
                    found.add(candidate if is_module else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("seckill"))
        graph[module] = found - {module}
    return graph


GRAPH = imports()


def test_every_room_has_a_floor() -> None:
    assert {room(m) for m in GRAPH} <= set(FLOORS), {room(m) for m in GRAPH} - set(FLOORS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    here = room(module)
    for target in sorted(GRAPH[module]):
        there = room(target)
        if there == here:
            continue
        if here == "http" and there not in BASEMENT:
            pytest.fail(f"{module} imports {target}: http imports nothing of the others")
        assert FLOORS[there] < FLOORS[here], f"{module} ({here}) imports {target} ({there}): up a floor"


def test_no_circle_of_imports() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("circular imports: " + " -> ".join([*path[path.index(module):], module]))
        if module in done or module not in GRAPH:
            return
        for target in sorted(GRAPH[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_no_sys_path_patch_anywhere() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    patched = [name for name in tracked if name != "tests/unit/test_layout.py"
               and "sys.path" in (ROOT / name).read_text()]
    assert patched == []
