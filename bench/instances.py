"""Two ``sarbot run`` instances on one PostgreSQL state database against one.

The same burst of requesters (each sends a request, confirms it when the
acknowledgement arrives, and gets an export) is answered once by one instance
and once by two, each on a fresh database of one throw-away PostgreSQL server
and the real mail stack.  The figure is the time from the first request sent
to the last answer delivered; the ratio is two instances' time to one's
(0.67 or less is 1.5 times the throughput).  Every run is also checked like
the crash tests check theirs: every request answered, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bench._site import filler, smtp
from bench.common import Row, Scale
from sarbot.testing import MailServer
from tests.conftest import CA_FILE, ROOT
from tests.crashkit import make_requesters, run_instances
from tests.servers import postgres_server

REQUESTS = {"smoke": 2, "full": 60}


def run(scale: Scale) -> list[Row]:
    subprocess.run([str(ROOT / "scripts" / "mailstack"), "up"], check=True, capture_output=True)
    server = MailServer(ca_file=str(CA_FILE))
    count = REQUESTS[scale]
    seconds: dict[int, float] = {}
    with postgres_server() as url, tempfile.TemporaryDirectory(prefix="sarbot-bench-") as tmp:
        for instances in (1, 2):
            database = _fresh_database(url, f"bench_{instances}")
            people = make_requesters(count, random.Random(instances), big_share=0.2)
            findings, _ = run_instances(
                Path(tmp) / str(instances), server, people, database, instances=instances
            )
            if findings.failures:
                raise RuntimeError(findings.report())
            seconds[instances] = findings.answered_in
    recipients = [person.address for person in people]
    floor = {sessions: _stack_alone(server, recipients, sessions) for sessions in (1, 2)}
    return [
        Row(
            f"{count} requesters answered by two instances (baseline: one)",
            seconds[2],
            seconds[1],
            goal="<= 0.67x (1.5x the throughput)",
            note="request, acknowledgement, confirmation, export; PostgreSQL state",
        ),
        Row(
            f"the mail stack alone: the run's {4 * count} mails on two SMTP sessions at once "
            "(baseline: on one)",
            floor[2],
            floor[1],
            note="for each requester a request, a confirmation, an acknowledgement's and an "
            "export's size; no sarbot",
        ),
        Row(
            "two instances against the mail stack alone on two sessions",
            seconds[2],
            floor[2],
            note="what is left for sarbot to gain: the run's time over the stack's own",
        ),
    ]


SIZES = (1_000, 1_000, 2_000, 15_000)
"""A request, a confirmation, an acknowledgement and an export, in bytes (as measured)."""


def _stack_alone(server: MailServer, recipients: list[str], sessions: int) -> float:
    """Seconds to send every requester's four mails through the stack on ``sessions``
    SMTP sessions at once."""
    mails = [(to, size) for to in recipients for size in SIZES]

    async def one_session(share: list[tuple[str, int]]) -> None:
        async with smtp(server) as client:
            for recipient, size in share:
                sender = "bench@redtrain.test"
                await client.sendmail(sender, [recipient], filler(sender, recipient, size))

    async def all_sessions() -> None:
        await asyncio.gather(*(one_session(mails[n::sessions]) for n in range(sessions)))

    started = time.perf_counter()
    asyncio.run(all_sessions())
    return time.perf_counter() - started


def _fresh_database(url: str, name: str) -> str:
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as db:
        db.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"
