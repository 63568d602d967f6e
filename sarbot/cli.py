"""The ``sarbot`` command."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from sarbot import db
from sarbot.app import App
from sarbot.audit import verify as verify_trail
from sarbot.errors import SarbotError
from sarbot.lifecycle import audit, transition
from sarbot.logging import configure_logging
from sarbot.models import Request, utcnow
from sarbot.registry import check_connector
from sarbot.states import RequestState

DEFAULT_CONFIG = "/etc/sarbot/config.toml"


def _app(ctx: click.Context) -> App:
    app: App | None = ctx.obj.get("app")
    if app is None:
        try:
            app = App.load(ctx.obj["config_path"])
        except SarbotError as exc:
            raise click.ClickException(str(exc)) from None
        configure_logging(app.settings.logging.level, app.settings.logging.format)
        ctx.obj["app"] = app
    return app


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SARBOT_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Config file (or set SARBOT_CONFIG).",
)
@click.version_option(package_name="sarbot")
@click.pass_context
def cli(ctx: click.Context, config_path: Path) -> None:
    """Answer GDPR subject access requests that arrive by email."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@cli.command()
@click.option("--once", is_flag=True, help="Work until nothing is actionable right now, then exit.")
@click.pass_context
def run(ctx: click.Context, once: bool) -> None:
    """Watch the mailbox and answer requests."""
    app = _app(ctx)
    try:
        daemon = app.daemon()
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    if not asyncio.run(daemon.run(once=once)):
        ctx.exit(1)


@cli.group("db")
def db_group() -> None:
    """The state database."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the state database to the current schema."""
    app = _app(ctx)
    db.upgrade(app.engine)
    click.echo(f"database at revision {db.current_revision(app.engine)}")


@cli.group()
def config() -> None:
    """The config file."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the config file and every connector's settings."""
    app = _app(ctx)
    try:
        connectors = app.build_connectors()
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    for configured in connectors:
        configured.connector.close()
    click.echo(f"{app.config_path}: ok ({len(connectors)} connector(s))")


@cli.group()
def connectors() -> None:
    """The data stores sarbot asks."""


@connectors.command("list")
@click.pass_context
def connectors_list(ctx: click.Context) -> None:
    """Installed connector types, and the connectors the config sets up."""
    app = _app(ctx)
    click.echo("installed types: " + ", ".join(sorted(app.connector_types)))
    _table(
        [
            {"name": e.name, "type": e.type, "enabled": e.enabled, "description": e.description}
            for e in app.settings.connectors
        ],
        ["name", "type", "enabled", "description"],
    )


@connectors.command("check")
@click.pass_context
def connectors_check(ctx: click.Context) -> None:
    """Connect to each connector and run a harmless lookup; one line each."""
    app = _app(ctx)
    try:
        built = app.build_connectors()
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    failures = 0
    for configured in built:
        started = time.monotonic()
        try:
            check_connector(configured.connector)
        except Exception as exc:  # any failure is reported on its line, not raised
            failures += 1
            click.echo(
                f"FAILED  {configured.name} ({configured.type}): {type(exc).__name__}: {exc}"
            )
        else:
            elapsed = (time.monotonic() - started) * 1000
            click.echo(f"ok      {configured.name} ({configured.type}): {elapsed:.0f} ms")
        finally:
            configured.connector.close()
    if failures:
        ctx.exit(1)


@cli.group("audit")
def audit_group() -> None:
    """The audit trail."""


@audit_group.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the audit trail's hash chain; name the first broken link."""
    app = _app(ctx)
    with app.sessions() as session:
        result = verify_trail(session)
    if result.intact:
        click.echo(f"audit trail intact: {result.events} events")
        return
    click.echo(
        f"audit trail BROKEN at event {result.broken_at}: {result.problem} "
        f"({result.events} events verified before it)"
    )
    ctx.exit(1)


@cli.group("requests")
def requests_group() -> None:
    """The requests sarbot has received."""


@requests_group.command("list")
@click.option(
    "--state", type=click.Choice([s.value for s in RequestState]), help="Only this state."
)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def requests_list(ctx: click.Context, state: str | None, as_json: bool) -> None:
    """List requests, newest first."""
    app = _app(ctx)
    query = select(Request).order_by(Request.id.desc())
    if state:
        query = query.where(Request.state == RequestState(state))
    with app.sessions() as session:
        rows = [_summary(r) for r in session.scalars(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(rows, ["reference", "state", "email", "received_at", "confirmed_at", "delivered_at"])


@requests_group.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def requests_show(ctx: click.Context, reference: str, as_json: bool) -> None:
    """Show one request with its audit trail."""
    app = _app(ctx)
    with app.sessions() as session:
        request = session.scalar(select(Request).where(Request.reference == reference))
        if request is None:
            raise click.ClickException(f"no request {reference}")
        detail = _summary(request) | {
            "expires_at": _iso(request.expires_at),
            "attempts": request.attempts,
            "last_error": request.last_error,
            "audit": [
                {
                    "at": _iso(event.at),
                    "event": event.event,
                    "from_state": event.from_state,
                    "to_state": event.to_state,
                    "reason": event.reason,
                    "actor": event.actor,
                }
                for event in request.audit
            ],
        }
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    for key, value in detail.items():
        if key != "audit":
            click.echo(f"{key:>13}: {'' if value is None else value}")
    click.echo("\naudit trail:")
    _table(detail["audit"], ["at", "event", "reason"])


@requests_group.command("approve")
@click.argument("reference")
@click.pass_context
def requests_approve(ctx: click.Context, reference: str) -> None:
    """Let a request that waits for review go on (to collection once its sender confirmed)."""
    app = _app(ctx)
    with app.sessions.begin() as session:
        request = session.scalar(select(Request).where(Request.reference == reference))
        if request is None:
            raise click.ClickException(f"no request {reference}")
        if request.state is not RequestState.NEEDS_REVIEW:
            raise click.ClickException(f"{reference} is {request.state.value}, not needs_review")
        to = RequestState.CONFIRMED if request.confirmed_at else RequestState.AWAITING_CONFIRMATION
        request.review_reason = None
        transition(
            session, request, to, at=utcnow(), reason="approved by an operator", actor=_actor()
        )
    click.echo(f"{reference}: approved; now {to.value}")


@requests_group.command("deliver")
@click.argument("reference")
@click.option("--partial", is_flag=True, required=True, help="Send what can be collected now.")
@click.option("--reason", required=True, help="Why; it is quoted in the letter to the requester.")
@click.pass_context
def requests_deliver(ctx: click.Context, reference: str, partial: bool, reason: str) -> None:
    """Deliver a request whose collection keeps failing, with the sources that answer."""
    app = _app(ctx)
    with app.sessions.begin() as session:
        request = session.scalar(select(Request).where(Request.reference == reference))
        if request is None:
            raise click.ClickException(f"no request {reference}")
        if request.state not in (RequestState.CONFIRMED, RequestState.COLLECTING):
            raise click.ClickException(
                f"{reference} is {request.state.value}; only a request being collected can be "
                "delivered in part"
            )
        request.partial_reason = reason
        request.next_attempt_at = None
        audit(
            session, request, "request.partial_delivery", at=utcnow(), reason=reason, actor=_actor()
        )
    click.echo(f"{reference}: will be delivered with the sources that answer, at the next cycle")


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _summary(request: Request) -> dict[str, Any]:
    return {
        "reference": request.reference,
        "state": request.state.value,
        "email": request.email,
        "received_at": _iso(request.received_at),
        "confirmed_at": _iso(request.confirmed_at),
        "delivered_at": _iso(request.delivered_at),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    cli(obj={}, prog_name="sarbot")
