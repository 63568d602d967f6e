"""The ``sarbot`` command."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from sarbot.cli.common import app_from, operator, table
from sarbot.errors import SarbotError
from sarbot.ops import retention
from sarbot.store import db
from sarbot.store.audit import verify as verify_trail
from sarbot.store.models import utcnow

DEFAULT_CONFIG = "/etc/sarbot/config.toml"


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
    app = app_from(ctx)
    try:
        daemon = app.daemon()
        clean = asyncio.run(daemon.run(once=once))
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    if not clean:
        ctx.exit(1)


@cli.group("db")
def db_group() -> None:
    """The state database."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the state database to the current schema."""
    app = app_from(ctx)
    db.upgrade(app.engine, crash_points=app.crash_points)
    click.echo(f"database at revision {db.current_revision(app.engine)}")


@cli.group()
def config() -> None:
    """The config file."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the config file, every connector's settings and the recognition phrases."""
    app = app_from(ctx)
    try:
        connectors = app.build_connectors()
        for configured in connectors:
            configured.connector.close()
        phrases = len(app.recogniser.phrases)
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{app.config_path}: ok ({len(connectors)} connector(s), {phrases} request phrase(s))"
    )


@cli.group()
def connectors() -> None:
    """The data stores sarbot asks."""


@connectors.command("list")
@click.pass_context
def connectors_list(ctx: click.Context) -> None:
    """Installed connector types, and the connectors the config sets up."""
    app = app_from(ctx)
    click.echo("installed types: " + ", ".join(sorted(app.connector_types)))
    table(
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
    app = app_from(ctx)
    try:
        built = app.build_connectors()
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    failures = 0
    for configured in built:
        started = time.monotonic()
        try:
            configured.connector.check()
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
    app = app_from(ctx)
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


@cli.command()
@click.pass_context
def purge(ctx: click.Context) -> None:
    """Delete sarbot's records past their retention period (the daemon does it daily)."""
    app = app_from(ctx)
    with app.sessions.begin() as session:
        purged = retention.purge(session, app.settings, utcnow(), actor=operator())
    click.echo(
        f"purged {purged.requests} request(s) and {purged.audit_events} audit event(s); "
        "the audit trail stays verifiable"
    )


def _register_commands() -> None:
    from sarbot.cli.requests import requests_group

    cli.add_command(requests_group)


_register_commands()


def main() -> None:
    cli(obj={}, prog_name="sarbot")
