"""The docs keep up with the code: every connector and each of its settings is described."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pydantic import BaseModel

from sarbot.connector import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parent.parent
BUILT_IN = sorted(
    ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith("connectors.")
)


def setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of a settings model, nested tables as ``outer.inner``."""
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            inner = getattr(arg, "__args__", (arg,))
            for candidate in (arg, *inner):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    names.extend(setting_names(candidate, prefix + name + "."))
    return sorted(set(names))


def test_all_built_in_connectors_are_registered() -> None:
    """The six built-in connector types are entry points."""
    assert BUILT_IN == ["access_log", "imap_mailbox", "keepass", "sql", "tacticalrmm", "wordpress"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_connector_is_documented(name: str) -> None:
    """docs/connectors/<type>.md exists and names every setting of the type."""
    [ep] = entry_points(group=ENTRY_POINT_GROUP, name=name)
    doc = ROOT / "docs" / "connectors" / f"{name}.md"
    assert doc.is_file(), f"{doc} is missing"
    text = doc.read_text()
    for setting in setting_names(ep.load().Settings):
        assert f"`{setting}`" in text, f"{name}: setting {setting} is not documented in {doc.name}"


@pytest.mark.parametrize("name", BUILT_IN)
def test_connector_has_an_example_in_the_config(name: str) -> None:
    """config.example.toml shows each built-in connector."""
    assert f'type = "{name}"' in (ROOT / "config.example.toml").read_text()


def test_security_page_names_tests_that_exist() -> None:
    """Every test docs/security.md points to exists (a class, or a test in it)."""
    import re

    text = (ROOT / "docs" / "security.md").read_text()
    for ref in sorted(set(re.findall(r"`(tests/[\w/]+\.py(?:::\w+)*)`", text))):
        path, *names = ref.split("::")
        source = (ROOT / path).read_text()
        for name in names:
            assert re.search(rf"\b(class|def) {name}\b", source), f"{ref} does not exist"


def logged_events() -> dict[str, str]:
    """Every event name the code logs, with the file that logs it."""
    import ast

    found: dict[str, str] = {}
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    for path in sorted([*(ROOT / "sarbot").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in levels
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and "." in node.args[0].value
                and " " not in node.args[0].value
            ):
                found[node.args[0].value] = str(path.relative_to(ROOT))
    return found


def test_every_logged_event_is_in_the_catalogue() -> None:
    """docs/events.md lists every event the code logs."""
    catalogue = (ROOT / "docs" / "events.md").read_text()
    events = logged_events()
    assert len(events) > 20
    missing = {name: where for name, where in events.items() if f"| `{name}` |" not in catalogue}
    assert missing == {}, f"events missing from docs/events.md: {missing}"
