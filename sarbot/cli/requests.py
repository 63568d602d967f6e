"""``sarbot requests ...``: the register of requests and what an operator decides on them."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from datetime import timedelta
from typing import Any

import click
from sqlalchemy import select

from sarbot.cli.common import app_from, iso, operator, table
from sarbot.errors import SarbotError
from sarbot.ops.decisions import (
    REGISTER_COLUMNS,
    InFlight,
    Operations,
    encryption_failed,
    register,
)
from sarbot.steps.collect import ConnectorOutcome, begin_collection
from sarbot.store.instances import Claim
from sarbot.store.models import Request, utcnow
from sarbot.store.states import TERMINAL, RequestState

IN_FLIGHT_WAIT = 600.0
"""Seconds a decision waits for a message being handed to SMTP (a send with its retries)."""
LIST_COLUMNS = ["reference", "state", "email", "received_at", "due", "delivered_at"]
GRAPH_COLUMNS = ["kind", "value", "namespace", "realm", "trust", "scope", "reason", "origin"]


@click.group("requests")
def requests_group() -> None:
    """The requests sarbot has received, and the decisions a person makes on them."""


def _summary(request: Request) -> dict[str, Any]:
    return {
        "reference": request.reference,
        "state": request.state.value,
        "email": request.email,
        "received_via": request.received_via,
        "received_at": iso(request.received_at),
        "confirmed_at": iso(request.confirmed_at),
        "due_on": iso(request.due_on),
        "extended_due_on": iso(request.extended_due_on),
        "due": iso(request.deadline),
        "delivered_at": iso(request.delivered_at),
        "recognised_by": request.recognised_by,
    }


@requests_group.command("list")
@click.option(
    "--state", type=click.Choice([s.value for s in RequestState]), help="Only this state."
)
@click.option("--overdue", is_flag=True, help="Only open requests past their due date.")
@click.option(
    "--due-within", type=click.IntRange(min=0), help="Only open requests due within DAYS."
)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def requests_list(
    ctx: click.Context, state: str | None, overdue: bool, due_within: int | None, as_json: bool
) -> None:
    """List requests, newest first."""
    app = app_from(ctx)
    today = app.calendar.local_date(utcnow())
    query = select(Request).order_by(Request.id.desc())
    if state:
        query = query.where(Request.state == RequestState(state))
    with app.sessions() as session:
        requests = list(session.scalars(query))
    if overdue or due_within is not None:
        limit = today - timedelta(days=1) if overdue else today + timedelta(days=due_within or 0)
        requests = [
            r
            for r in requests
            if r.state not in TERMINAL and r.deadline is not None and r.deadline <= limit
        ]
    rows = [_summary(r) for r in requests]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table(rows, LIST_COLUMNS)


@requests_group.command("history")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def requests_history(ctx: click.Context, as_json: bool) -> None:
    """Mail from before sarbot's start that looks like a request; none of it was answered."""
    app = app_from(ctx)
    query = select(Request).where(Request.state == RequestState.HISTORY).order_by(Request.id)
    with app.sessions() as session:
        rows = [_summary(r) for r in session.scalars(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table(rows, ["reference", "email", "received_at", "due", "recognised_by"])
    if rows:
        click.echo(
            "\ntake one in with 'sarbot requests accept REF', close it with "
            "'sarbot requests dismiss REF --reason TEXT'"
        )


@requests_group.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.pass_context
def requests_show(ctx: click.Context, reference: str, as_json: bool) -> None:
    """Show one request: its dates, how it was verified, and its whole audit trail."""
    app = app_from(ctx)
    with app.sessions() as session:
        request = _find(app.operations, session, reference)
        detail = _summary(request) | {
            "expires_at": iso(request.expires_at),
            "verification": request.authentication,
            "extension_reason": request.extension_reason,
            "review_reason": request.review_reason,
            "note": request.note,
            "attempts": request.attempts,
            "last_error": request.last_error,
            "identity_graph": json.loads(request.identity_graph or "[]"),
            "audit": [
                {
                    "at": iso(event.at),
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
        if key not in ("audit", "identity_graph") and value not in (None, ""):
            click.echo(f"{key:>16}: {value}")
    if detail["identity_graph"]:
        click.echo("\nidentity graph (the last collection):")
        table(detail["identity_graph"], GRAPH_COLUMNS)
    click.echo("\naudit trail:")
    table(detail["audit"], ["at", "event", "actor", "reason"])


def _find(ops: Operations, session: Any, reference: str) -> Request:
    try:
        return ops.find(session, reference)
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None


def _decide(ctx: click.Context, action: str, reference: str, **kwargs: Any) -> Any:
    """Run one operator decision in a transaction; errors are the operator's to read."""
    app = app_from(ctx)
    ops = app.operations
    waited_since: float | None = None
    while True:
        try:
            with app.sessions.begin() as session:
                return getattr(ops, action)(
                    session, reference, now=utcnow(), actor=operator(), **kwargs
                )
        except InFlight as exc:  # asked again, outside any transaction, once sending ended
            now = time.monotonic()
            if waited_since is None:
                waited_since = now
                click.echo(f"{exc} ...", err=True)
            elif now - waited_since > IN_FLIGHT_WAIT:
                raise click.ClickException(
                    f"{exc}; still not ended after {IN_FLIGHT_WAIT:.0f} s. If no daemon is "
                    "sending it (a mark left by one that was killed), stop the daemon and run "
                    "the command again: it then withdraws the export"
                ) from None
            time.sleep(0.2)
        except SarbotError as exc:
            raise click.ClickException(str(exc)) from None


@requests_group.command("approve")
@click.argument("reference")
@click.pass_context
def requests_approve(ctx: click.Context, reference: str) -> None:
    """Let a request that waits for review go on (to collection once its sender confirmed)."""
    request = _decide(ctx, "approve", reference)
    click.echo(f"{reference}: approved; now {request.state.value}")


@requests_group.command("accept")
@click.argument("reference")
@click.option("--reason", default="", help="Why it is a request (kept in the audit trail).")
@click.pass_context
def requests_accept(ctx: click.Context, reference: str, reason: str) -> None:
    """Take a possible request in: the requester is acknowledged and asked to confirm; its
    deadline still runs from its receipt."""
    request = _decide(ctx, "accept", reference, reason=reason)
    click.echo(
        f"{reference}: accepted; now {request.state.value}, due {request.deadline}; "
        "the daemon sends the acknowledgement"
    )


@requests_group.command("dismiss")
@click.argument("reference")
@click.option("--reason", required=True, help="Why it is no request (kept in the audit trail).")
@click.pass_context
def requests_dismiss(ctx: click.Context, reference: str, reason: str) -> None:
    """Close a possible request that is none; nobody is written to."""
    _decide(ctx, "dismiss", reference, reason=reason)
    click.echo(f"{reference}: dismissed")


@requests_group.command("reject")
@click.argument("reference")
@click.option("--reason", required=True, help="Why; it is quoted in the letter to the requester.")
@click.pass_context
def requests_reject(ctx: click.Context, reference: str, reason: str) -> None:
    """Close a request without sending data; the requester gets the reason."""
    _, warnings = _decide(ctx, "reject", reference, reason=reason)
    for warning in warnings:
        click.echo(f"WARNING {warning}", err=True)
    click.echo(f"{reference}: rejected; the requester will be told why")


@requests_group.command("extend")
@click.argument("reference")
@click.option("--reason", required=True, help="Why; it is quoted in the notice to the requester.")
@click.pass_context
def requests_extend(ctx: click.Context, reference: str, reason: str) -> None:
    """Extend the deadline by two further months (only within the first month)."""
    request = _decide(ctx, "extend", reference, reason=reason)
    click.echo(f"{reference}: now due {request.extended_due_on}; the requester will be told why")


@requests_group.command("resend")
@click.argument("reference")
@click.pass_context
def requests_resend(ctx: click.Context, reference: str) -> None:
    """Send the acknowledgement again, with a new challenge."""
    what = _decide(ctx, "resend", reference)
    click.echo(f"{reference}: {what} queued")


@requests_group.command("retry")
@click.argument("reference")
@click.pass_context
def requests_retry(ctx: click.Context, reference: str) -> None:
    """Retry a stuck step at the next cycle: collection, or mail that failed or waits."""
    what = _decide(ctx, "retry", reference)
    click.echo(f"{reference}: will retry {what}")


@requests_group.command("deliver")
@click.argument("reference")
@click.option(
    "--partial", is_flag=True, help="Send what can be collected now, without the failing sources."
)
@click.option(
    "--unencrypted",
    is_flag=True,
    help="Send without encryption an export that could not be encrypted to the requester's key.",
)
@click.option("--reason", required=True, help="Why; it is quoted in the letter to the requester.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --unencrypted).")
@click.pass_context
def requests_deliver(
    ctx: click.Context, reference: str, partial: bool, unencrypted: bool, reason: str, yes: bool
) -> None:
    """Send a request's export although something stands in its way, for a reason the letter
    quotes: --partial when collection keeps failing, --unencrypted when its export cannot be
    encrypted to the key the requester sent."""
    if partial == unencrypted:
        raise click.UsageError("give one of --partial and --unencrypted")
    if not reason.strip():
        raise click.UsageError("--reason must say why: the letter quotes it")
    if partial:
        _decide(ctx, "deliver_partial", reference, reason=reason)
        click.echo(
            f"{reference}: will be delivered with the sources that answer, at the next cycle"
        )
        return
    app = app_from(ctx)
    with app.sessions() as session:
        request = _find(app.operations, session, reference)
        if not encryption_failed(request):
            raise click.ClickException(
                f"{reference} is {request.state.value}; only a request held for review because "
                "its export could not be encrypted can be sent unencrypted"
            )
        email = request.email
    if not yes:
        click.confirm(
            f"{reference}: the requester asked for encryption. Send their data to {email} "
            "WITHOUT encryption?",
            abort=True,
        )
    _decide(ctx, "deliver_unencrypted", reference, reason=reason)
    click.echo(
        f"{reference}: will be collected again and sent unencrypted to {email} at the next "
        "cycle; the letter quotes your reason"
    )


@requests_group.command("create")
@click.option("--email", required=True, help="The requester's address; the challenge goes there.")
@click.option("--note", required=True, help="How the request came (post, phone) and when.")
@click.pass_context
def requests_create(ctx: click.Context, email: str, note: str) -> None:
    """Enter a request received by post or phone; it takes the same path as one by email."""
    app = app_from(ctx)
    ops = app.operations
    try:
        with app.sessions.begin() as session:
            verdict = ops.create(session, email, note, now=utcnow(), actor=operator())
            request = verdict.request
            if request is None:
                raise click.ClickException(f"{email}: {verdict.reason}")
            reference, state = request.reference, request.state.value
    except (SarbotError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    joined = " (joined the address's open request)" if verdict.outcome.value == "joined" else ""
    click.echo(f"{reference}: {state}{joined}; the daemon sends the acknowledgement")


@requests_group.command("collect")
@click.argument("reference")
@click.pass_context
def requests_collect(ctx: click.Context, reference: str) -> None:
    """Collect for a confirmed request now, showing each connector as it answers."""
    app = app_from(ctx)
    with app.sessions() as session:
        request_id = _find(app.operations, session, reference).id
    try:
        pipeline = app.pipeline()
    except SarbotError as exc:
        raise click.ClickException(str(exc)) from None
    types = {c.name: c.type for c in pipeline.connectors}

    def show(outcome: ConnectorOutcome) -> None:
        where = f"{outcome.name} ({types.get(outcome.name, '?')})"
        if outcome.ok:
            click.echo(f"  ok      {where}: {outcome.records} record(s) in {outcome.seconds:.2f} s")
        else:
            click.echo(f"  FAILED  {where}: {outcome.error_type} after {outcome.seconds:.2f} s")

    try:
        with app.instances.claim(Claim.REQUEST, request_id) as mine:
            if not mine:
                raise click.ClickException(f"{reference}: a running instance is working on it")
            with app.sessions.begin() as session:  # read again once claimed
                request = session.get_one(Request, request_id)
                if request.state not in (RequestState.CONFIRMED, RequestState.COLLECTING):
                    state = request.state.value
                    raise click.ClickException(f"{reference} is {state}, not being collected")
                begin_collection(session, request, at=utcnow(), actor=operator())
            click.echo(f"{reference}: asking {len(pipeline.connectors)} connector(s)")
            done = asyncio.run(pipeline.collect_one(request, [show]))
    finally:
        app.instances.stop()
        for configured in pipeline.connectors:
            configured.connector.close()
    if not done:
        raise click.ClickException(f"{reference}: not complete; the daemon will retry")
    click.echo(f"{reference}: packaged; the daemon sends it")


@requests_group.command("export-register")
@click.option("--csv", "as_csv", is_flag=True, help="CSV on standard output.")
@click.option("--json", "as_json", is_flag=True, help="JSON on standard output.")
@click.pass_context
def requests_register(ctx: click.Context, as_csv: bool, as_json: bool) -> None:
    """Every request with its dates, verification, state and decisions, for accountability
    (the same columns either way)."""
    if as_csv == as_json:
        raise click.UsageError("give one of --csv and --json")
    app = app_from(ctx)
    with app.sessions() as session:
        rows = list(register(session))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=REGISTER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
