"""One line for each error in a config: the key's path, what is wrong, and a hint."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel


def describe_error(err: Any, model: type[BaseModel], prefix: str = "") -> str:
    """One line for one validation error: the key's path, the problem and a hint."""
    loc = [part for part in err["loc"] if not str(part).startswith("function-")]
    key = prefix + _dotted(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"  {key}: unknown key ({hint})"
    if kind == "missing":
        return f"  {key}: required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        message += f" (got {type(err.get('input')).__name__} {_short(err.get('input'))})"
    return f"  {key}: {message}"


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _known_keys(model: type[BaseModel], loc: list[Any]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part)) if hasattr(current, "model_fields") else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    return sorted(current.model_fields) if hasattr(current, "model_fields") else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
