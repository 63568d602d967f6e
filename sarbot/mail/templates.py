"""Templates for letters and the report.  HTML is always autoescaped; text never is.

Admins override any built-in template by putting a file of the same name in
``[export] template_dir``; the built-in ones in ``sarbot/templates`` are used
for the rest.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)


class Templates:
    """One template environment: the admin's folder first, then the built-in templates."""

    def __init__(self, override_dir: Path | None = None) -> None:
        loaders: list[Any] = [PackageLoader("sarbot", "templates")]
        if override_dir is not None:
            loaders.insert(0, FileSystemLoader(str(override_dir)))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["date"] = _date
        self.env.filters["datetime"] = _datetime

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)


def _date(value: datetime | None) -> str:
    return value.strftime("%-d %B %Y") if value else "-"


def _datetime(value: datetime | None) -> str:
    return value.strftime("%-d %B %Y, %H:%M UTC") if value else "-"
