"""The ``sarbot`` command."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import click
import structlog

from sarbot.cli.auth import check_logins
from sarbot.cli.common import app_from, operator, table
from sarbot.errors import SarbotError
from sarbot.mail.mailbox import Mailbox, MailboxThread
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
    newer = db.upgrade(app.engine, crash_points=app.crash_points)
    if newer is not None:
        click.echo(
            f"database at revision {newer}, newer than this sarbot ({db.head_revision()}), "
            "which runs on it: left as it is"
        )
        return
    click.echo(f"database at revision {db.current_revision(app.engine)}")


@cli.group()
def config() -> None:
    """The config file."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the config file, every connector's settings and the recognition phrases;
    for each login by OAuth 2.0 token, get a token and log in."""
    app = app_from(ctx)
    try:
        connectors = app.build_connectors()
        for configured in connectors:
            configured.connector.close()
        phrases = len(app.recogniser.phrases)
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    failed = False
    for check in check_logins(app.settings):
        if check.problem is None:
            click.echo(f"{check.login.upper()} login by OAuth 2.0 token: ok")
        else:
            failed = True
            click.echo(f"{check.login.upper()} login by OAuth 2.0 token FAILED: {check.problem}")
    if failed:
        ctx.exit(1)
    click.echo(
        f"{app.config_path}: ok ({len(connectors)} connector(s), {phrases} request phrase(s))"
    )


@cli.group()
def connectors() -> None:
    """The data stores sarbot asks."""


@connectors.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def connectors_list(ctx: click.Context, as_json: bool) -> None:
    """Installed connector types, and the connectors the config sets up."""
    app = app_from(ctx)
    types = sorted(app.connector_types)
    rows = [
        {"name": e.name, "type": e.type, "enabled": e.enabled, "description": e.description}
        for e in app.settings.connectors
    ]
    if as_json:
        click.echo(json.dumps({"installed_types": types, "connectors": rows}, indent=2))
        return
    click.echo("installed types: " + ", ".join(types))
    table(rows, ["name", "type", "enabled", "description"])


@connectors.command("check")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def connectors_check(ctx: click.Context, as_json: bool) -> None:
    """Connect to each connector and run a harmless lookup; one line each, and a WARNING line
    for what works but should not stay so (an index the lookups need that is missing)."""
    app = app_from(ctx)
    try:
        built = app.build_connectors()
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    results: list[dict[str, object]] = []
    for configured in built:
        started = time.monotonic()
        result: dict[str, object] = {"name": configured.name, "type": configured.type}
        warnings: list[str] = []
        try:
            warnings = [str(w) for w in configured.connector.check() or ()]
        except Exception as exc:  # any failure is reported on its line, not raised
            result |= {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            ms = round((time.monotonic() - started) * 1000)
            result |= {"ok": True, "ms": ms, "warnings": warnings}
        finally:
            configured.connector.close()
        results.append(result)
        if not as_json:
            where = f"{configured.name} ({configured.type})"
            if result["ok"]:
                click.echo(f"ok      {where}: {result['ms']} ms")
            else:
                click.echo(f"FAILED  {where}: {result['error']}")
            for warning in warnings:
                click.echo(f"WARNING {where}: {warning}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    if not all(result["ok"] for result in results):
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
    """Apply the retention settings now, as the daemon does daily: delete the records and the
    copies of request mail in the processed folder that are past their retention period."""
    app = app_from(ctx)
    mailbox = MailboxThread(Mailbox(app.settings.imap))
    try:
        applied = asyncio.run(
            retention.apply(
                app.sessions,
                app.settings,
                mailbox,
                now=utcnow(),
                log=structlog.get_logger("sarbot"),
                actor=operator(),
            )
        )
    finally:
        mailbox.shutdown()
    click.echo(
        f"purged {applied.requests} request(s) and {applied.audit_events} audit event(s); "
        "the audit trail stays verifiable"
    )
    where = f"the folder {applied.folder} received before {applied.mail_before}"
    if applied.mail_deleted is None:
        click.echo(
            f"mail copies NOT purged: the mailbox could not be reached ({applied.mail_error}); "
            f"the copies in {where} are still there: run 'sarbot purge' again once it can be",
            err=True,
        )
        ctx.exit(1)
    click.echo(f"deleted {applied.mail_deleted} mail copy(ies) in {where}")


def _register_commands() -> None:
    from sarbot.cli.auth import auth_group
    from sarbot.cli.requests import requests_group

    cli.add_command(requests_group)
    cli.add_command(auth_group)


_register_commands()


def main() -> None:
    cli(obj={}, prog_name="sarbot")
