"""Template rendering.  HTML templates are always autoescaped; text ones never are."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("sarbot", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["date"] = _date
    env.filters["datetime"] = _datetime
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)


def _date(value: datetime | None) -> str:
    return value.strftime("%-d %B %Y") if value else "-"


def _datetime(value: datetime | None) -> str:
    return value.strftime("%-d %B %Y, %H:%M UTC") if value else "-"
