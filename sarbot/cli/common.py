"""What the ``sarbot`` commands share: the app from the config, the operator's name, tables."""

from __future__ import annotations

import getpass
import os
import re
from datetime import date, datetime
from typing import Any

import click

from sarbot.app import App
from sarbot.errors import SarbotError
from sarbot.logging import configure_logging


def app_from(ctx: click.Context) -> App:
    app: App | None = ctx.obj.get("app")
    if app is None:
        try:
            app = App.load(ctx.obj["config_path"])
        except SarbotError as exc:
            raise click.ClickException(str(exc)) from None
        configure_logging(app.settings.logging.level, app.settings.logging.format)
        ctx.obj["app"] = app
    return app


def operator() -> str:
    """Who runs the command, for the audit trail: the sudo caller when run through sudo."""
    user = getpass.getuser()
    caller = os.environ.get("SUDO_USER")
    return f"cli:{caller} (as {user})" if caller and caller != user else f"cli:{user}"


def iso(value: datetime | date | None) -> str | None:
    """A timestamp to the second, or a date, as ISO 8601."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value.isoformat()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(value: Any) -> str:
    """A cell as one line of plain text: stored values (a yielded identifier, a reason) may
    hold what a terminal would obey, such as escape sequences."""
    return "" if value is None else _CONTROL.sub("?", str(value))


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_printable(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
