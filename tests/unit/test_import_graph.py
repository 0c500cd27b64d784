"""The rooms of core/ keep their walls: read from the source, so a new import that breaks one fails here.

- No import cycle between modules, nor between rooms, at import time (imports inside functions are
  how a room reaches a later one on purpose, e.g. a task reaching its Celery app).
- core never imports the GUI or Qt, anywhere.
- transfer and processing import no Celery or kombu: they know nothing about the task they serve.
- The server rooms import nothing from the contributor's supervisor or the GUI.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import ROOT

pytestmark = pytest.mark.unit

CORE = ROOT / "core"
PREFIX = "morag_worker.core"


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (absolute)
    at_import_time: bool  # a statement of the module's body, not inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PREFIX, *parts])


def room(module: str) -> str:
    """``morag_worker.core.transfer.downloader`` -> ``transfer``; a top-level module is its own room."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else "core"


def imports() -> Iterator[Import]:
    for path in sorted(CORE.rglob("*.py")):
        source = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        body = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.ImportFrom):
                raise AssertionError(f"{path}: use absolute imports (from {'.' * node.level}{node.module})")
            else:
                continue
            for target in targets:
                yield Import(source, target, id(node) in body)


ALL = list(imports())


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_was_read() -> None:
    assert len({i.source for i in ALL}) > 60
    assert {room(i.source) for i in ALL} >= {"server", "supervisor", "execution", "transfer", "config", "cli"}


def test_no_module_imports_itself_round_a_cycle_at_import_time() -> None:
    graph: dict[str, set[str]] = {}
    for i in ALL:
        if i.at_import_time and i.target.startswith(PREFIX + ".") and i.target != i.source:
            graph.setdefault(i.source, set()).add(i.target)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_room_depends_on_another_round_a_cycle_at_import_time() -> None:
    graph: dict[str, set[str]] = {}
    for i in ALL:
        if i.at_import_time and i.target.startswith(PREFIX + "."):
            a, b = room(i.source), room(i.target)
            if a != b or a == "core":
                if a == "core":
                    a = i.source.rsplit(".", 1)[-1]
                if b == "core":
                    b = i.target.rsplit(".", 1)[-1]
                if a != b:
                    graph.setdefault(a, set()).add(b)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def _offenders(rooms: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{i.source} imports {i.target}"
        for i in ALL
        if room(i.source) in rooms and (i.target + ".").startswith(tuple(f + "." for f in forbidden))
    )


def test_core_never_imports_the_gui_or_qt() -> None:
    every_room = {room(i.source) for i in ALL}
    assert _offenders(every_room, ("morag_worker.gui", "PySide6", "shiboken6")) == []


def test_transfer_and_processing_import_no_celery() -> None:
    assert _offenders({"transfer", "processing"}, ("celery", "kombu", "billiard")) == []


def test_the_server_rooms_import_nothing_from_the_supervisor_or_the_gui() -> None:
    forbidden = (f"{PREFIX}.supervisor", f"{PREFIX}.config.credentials", "morag_worker.gui", "PySide6")
    assert _offenders({"server"}, forbidden) == []


def test_no_room_holds_more_than_about_a_dozen_modules() -> None:
    for folder in [CORE, *(p for p in CORE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= 14, f"{folder.relative_to(ROOT)} holds {len(modules)} modules"
