"""The shape of the code, kept: what each part may import (docs/architecture.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

STEPS = (
    "intake",
    "classify",
    "recognise",
    "acknowledge",
    "verify",
    "collect",
    "package",
    "deliver",
)
"""The steps of a request, in order: each may import only the ones before it."""
ABOVE = ("sarbot.cli", "sarbot.app", "sarbot.daemon", "sarbot.pipeline")
"""The command, the wiring, the loop and the driver: nothing in the folders imports them."""
LAYERS = {
    "sarbot.store": {"sarbot.mail", "sarbot.export", "sarbot.steps", "sarbot.ops", *ABOVE},
    "sarbot.mail": {"sarbot.export", "sarbot.steps", "sarbot.ops", *ABOVE},
    "sarbot.export": {"sarbot.steps", "sarbot.ops", *ABOVE},
    "sarbot.steps": {"sarbot.ops", *ABOVE},
    "sarbot.ops": set(ABOVE),
}
"""For each folder, the folders above it, which it must not import."""
MAX_LINES = 400


def modules(folder: str) -> dict[str, Path]:
    """Every Python module under a folder of the project, by dotted name."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, package: str) -> Iterator[str]:
    """The modules a file imports (``from x import y`` counts as x, and x.y where that is one)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against the file's package
                base = ".".join([*package.split(".")[: -node.level + 1 or None], base])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


SARBOT = modules("sarbot")
CONNECTORS = modules("connectors")


def graph() -> dict[str, set[str]]:
    """sarbot's own modules and what each imports of sarbot."""
    return {
        name: {m for m in imports(path, name) if m in SARBOT and m != name}
        for name, path in SARBOT.items()
    }


@pytest.mark.parametrize("name", sorted(CONNECTORS))
def test_a_connector_imports_only_the_contract(name: str) -> None:
    """A connector imports sarbot.connector and nothing else of sarbot."""
    of_sarbot = {m for m in imports(CONNECTORS[name], name) if m.split(".")[0] == "sarbot"}
    others = {m for m in of_sarbot if not m.startswith("sarbot.connector")} - {"sarbot"}
    assert not others, f"{name} imports {sorted(others)}: use what sarbot.connector hands on"


@pytest.mark.parametrize("step", STEPS)
def test_a_step_imports_no_later_step(step: str) -> None:
    """The request's path reads one way: a step uses the steps before it, never after."""
    later = {f"sarbot.steps.{s}" for s in STEPS[STEPS.index(step) + 1 :]}
    found = graph()[f"sarbot.steps.{step}"] & later
    assert not found, f"sarbot.steps.{step} imports the later step(s) {sorted(found)}"


def test_the_steps_folder_holds_the_steps_only() -> None:
    """Every module in sarbot/steps is a step of the request, named in order above."""
    names = {n.rpartition(".")[2] for n in SARBOT if n.startswith("sarbot.steps.")}
    assert names == set(STEPS)


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_a_folder_imports_nothing_above_it(folder: str) -> None:
    """The state store knows no mail; the mail edge no step; nothing below operations them."""
    edges = graph()
    wrong = {
        (name, target)
        for name, targets in edges.items()
        if name == folder or name.startswith(folder + ".")
        for target in targets
        if any(target == up or target.startswith(up + ".") for up in LAYERS[folder])
    }
    assert not wrong, f"{folder} imports from above it: {sorted(wrong)}"


def test_the_daemon_never_imports_the_test_helpers() -> None:
    """sarbot.testing (the test identity provider among them) serves the tests and the demo:
    no module of the daemon or a connector imports it."""
    wrong = {
        (name, target)
        for name, path in {**SARBOT, **CONNECTORS}.items()
        if not name.startswith("sarbot.testing")
        for target in imports(path, name)
        if target == "sarbot.testing" or target.startswith("sarbot.testing.")
    }
    assert not wrong, f"the daemon imports test helpers: {sorted(wrong)}"


def test_there_is_no_import_loop() -> None:
    """No module of sarbot reaches itself through its imports."""
    edges, state, loops = graph(), {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                loops.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not loops, f"import loops: {loops}"


@pytest.mark.parametrize("name", sorted({**SARBOT, **CONNECTORS}))
def test_modules_stay_small(name: str) -> None:
    """A module that grows past about 400 lines is split by concern."""
    path = {**SARBOT, **CONNECTORS}[name]
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path} is over {MAX_LINES} lines"
