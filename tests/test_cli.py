"""The ``sarbot`` command line, run as a real subprocess where it matters."""

from __future__ import annotations

import ast
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from sarbot.app import App
from sarbot.cli.common import table
from sarbot.cli.main import cli
from sarbot.cli.requests import LIST_COLUMNS
from sarbot.store import db
from sarbot.store.audit import verify as verify_trail
from sarbot.store.lifecycle import audit
from sarbot.store.models import utcnow
from sarbot.testing import Correspondent, MailServer, subject_contains
from sarbot.testing import config as testconfig
from sarbot.testing.stores import create_wordpress_tables
from tests.conftest import CA_FILE, ROOT, unique
from tests.servers import free_port, mariadb_server

SARBOT = [sys.executable, "-m", "sarbot"]


def write_config(tmp_path: Path, support: str, *, imap_port: int | None = None) -> Path:
    server = MailServer(ca_file=str(CA_FILE))
    return testconfig.write_config(
        tmp_path / "config.toml",
        support,
        server=server,
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        imap={"port": imap_port or server.imap_port, "timeout": 5},
    )


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], obj={})
    return result.exit_code, result.output


class TestCommands:
    def test_db_upgrade_then_empty_listing(self, tmp_path: Path) -> None:
        """``db upgrade`` creates the schema; an empty listing says so."""
        config = write_config(tmp_path, "support@redtrain.test")
        assert invoke(config, "db", "upgrade") == (
            0,
            f"database at revision {db.head_revision()}\n",
        )
        assert invoke(config, "requests", "list") == (0, "(none)\n")
        assert invoke(config, "requests", "list", "--json") == (0, "[]\n")

    def test_config_check(self, tmp_path: Path) -> None:
        """``config check`` validates and reports."""
        config = write_config(tmp_path, "support@redtrain.test")
        code, output = invoke(config, "config", "check")
        assert code == 0 and "ok (0 connector(s), " in output

    def test_config_check_refuses_a_realm_joining_website_logins(self, tmp_path: Path) -> None:
        """A realm that would join logins anyone can choose to a client's directory is an
        error naming the realm, the namespace and why."""
        config = write_config(tmp_path, "support@redtrain.test")
        website = tmp_path / "wordpress.db"
        sqlite3.connect(website).close()
        config.write_text(
            config.read_text()
            + f"""
[[connectors]]
name = "website"
type = "wordpress"
url = "sqlite:///{website}"

[[realms]]
label = "Acme Ltd"
same_as = ["wordpress:website", "ad:ACME"]
"""
        )
        code, output = invoke(config, "config", "check")
        assert code == 1
        assert "realm 'Acme Ltd': 'wordpress:website'" in output
        assert "chosen by whoever typed them" in output

    def test_broken_config_is_an_error_not_a_traceback(self, tmp_path: Path) -> None:
        """A bad key gives its path and a hint, exit status 1 and no traceback."""
        config = tmp_path / "config.toml"
        config.write_text("[controller]\nname = 'x'\nemail = 'a@b.test'\nfoo = 1\n")
        result = subprocess.run(
            [*SARBOT, "--config", str(config), "run"], capture_output=True, text=True
        )
        assert result.returncode == 1
        assert "controller.foo: unknown key" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout

    def test_config_from_environment(self, tmp_path: Path) -> None:
        """SARBOT_CONFIG names the config when --config is not given."""
        config = write_config(tmp_path, "support@redtrain.test")
        env = {**os.environ, "SARBOT_CONFIG": str(config)}
        result = subprocess.run(
            [*SARBOT, "config", "check"], capture_output=True, text=True, env=env
        )
        assert result.returncode == 0, result.stderr

    def test_unknown_reference(self, tmp_path: Path) -> None:
        """``requests show`` of a reference that does not exist is a clear error."""
        config = write_config(tmp_path, "support@redtrain.test")
        invoke(config, "db", "upgrade")
        code, output = invoke(config, "requests", "show", "SAR-2026-99999999")
        assert code == 1 and "no request SAR-2026-99999999" in output

    def test_run_refuses_an_unmigrated_database(self, tmp_path: Path) -> None:
        """``run`` says to upgrade first instead of creating tables on its own."""
        config = write_config(tmp_path, "support@redtrain.test")
        code, output = invoke(config, "run", "--once")
        assert code == 1 and "run 'sarbot db upgrade' first" in output


@pytest.mark.mailstack
class TestRunning:
    def test_request_shows_up_in_list_and_show(self, tmp_path: Path, mailstack: MailServer) -> None:
        """After ``run --once`` the request is listed, and ``show`` gives its audit trail."""
        support = unique("support", "redtrain.test")
        config = write_config(tmp_path, support)
        alice = Correspondent(mailstack, unique("alice", "example.test"))
        alice.send(support, "GDPR DATA REQUEST")
        Correspondent(mailstack, support).wait_for(subject_contains("GDPR"))
        assert invoke(config, "db", "upgrade")[0] == 0
        run = subprocess.run(
            [*SARBOT, "--config", str(config), "run", "--once"], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        events = [
            json.loads(line)["event"]
            for line in run.stderr.splitlines() + run.stdout.splitlines()
            if line.startswith("{")
        ]
        assert "mail.accepted" in events and "mail.sent" in events
        code, output = invoke(config, "requests", "list", "--json")
        [listed] = json.loads(output)
        assert (listed["state"], listed["email"]) == ("awaiting_confirmation", alice.address)
        code, output = invoke(config, "requests", "show", listed["reference"], "--json")
        shown = json.loads(output)
        assert [e["event"] for e in shown["audit"]] == [
            "request.received",
            "request.authentication",
            "state.awaiting_confirmation",
        ]
        code, output = invoke(config, "requests", "show", listed["reference"])
        assert code == 0 and "audit trail:" in output and "state.awaiting_confirmation" in output

    def test_sigterm_stops_the_daemon_cleanly(self, tmp_path: Path, mailstack: MailServer) -> None:
        """The daemon waits on the mailbox; SIGTERM makes it finish and exit 0."""
        config = write_config(tmp_path, unique("support", "redtrain.test"))
        assert invoke(config, "db", "upgrade")[0] == 0
        proc = subprocess.Popen(
            [*SARBOT, "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in proc.stdout or ():
                lines.put(line)

        reader = threading.Thread(target=read)
        reader.start()
        seen = ""
        while "mailbox.connected" not in seen:
            try:
                seen = lines.get(timeout=20)
            except queue.Empty:
                proc.kill()
                pytest.fail("the daemon did not connect to the mailbox within 20 s")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        reader.join(timeout=5)
        rest = "".join(lines.get() for _ in range(lines.qsize()))
        assert '"daemon.stopped"' in rest

    def test_unreachable_mailbox_fails_once_mode_without_traceback(self, tmp_path: Path) -> None:
        """With IMAP down, ``run --once`` logs the error and exits 1."""
        config = write_config(tmp_path, "support@redtrain.test", imap_port=free_port())
        assert invoke(config, "db", "upgrade")[0] == 0
        run = subprocess.run(
            [*SARBOT, "--config", str(config), "run", "--once"], capture_output=True, text=True
        )
        assert run.returncode == 1
        assert '"mailbox.error"' in run.stderr + run.stdout
        assert "Traceback" not in run.stderr + run.stdout


class TestConnectorCommands:
    def test_check_reports_each_connector(self, tmp_path: Path) -> None:
        """One line per connector; a store that cannot be read fails the command."""
        good = tmp_path / "good.db"
        sqlite3.connect(good).close()
        config = write_config(tmp_path, "support@redtrain.test")
        for name, path in (("good", good), ("missing", tmp_path / "nope" / "missing.db")):
            config.write_text(
                config.read_text()
                + f'\n[[connectors]]\nname = "{name}"\ntype = "sql"\nurl = "sqlite:///{path}"\n'
                '[[connectors.queries]]\nname = "q"\ncategory = "c"\nverify = "email"\n'
                'sql = "SELECT 1 AS email WHERE :email IS NOT NULL"\n'
            )
        code, output = invoke(config, "connectors", "check")
        lines = output.splitlines()
        assert code == 1
        assert lines[0].startswith("ok      good (sql): ")
        assert lines[1].startswith("FAILED  missing (sql): OperationalError")
        code, output = invoke(config, "connectors", "check", "--json")
        good_row, missing_row = json.loads(output)
        assert code == 1
        assert (good_row["name"], good_row["type"], good_row["ok"]) == ("good", "sql", True)
        assert isinstance(good_row["ms"], int)
        assert (missing_row["name"], missing_row["ok"]) == ("missing", False)
        assert missing_row["error"].startswith("OperationalError: ")

    def test_check_warns_about_a_missing_index(self, tmp_path: Path) -> None:
        """On a real MariaDB holding WordPress's own tables, the index core lacks is named on a
        WARNING line (and in --json), the check still passing; once created, no warning."""
        with mariadb_server() as url:
            engine = create_engine(url)
            create_wordpress_tables(engine)
            config = write_config(tmp_path, "support@redtrain.test")
            config.write_text(
                config.read_text()
                + f'\n[[connectors]]\nname = "website"\ntype = "wordpress"\nurl = "{url}"\n'
            )
            code, output = invoke(config, "connectors", "check")
            lines = output.splitlines()
            assert code == 0
            assert lines[0].startswith("ok      website (wordpress): ")
            assert lines[1:] == [
                "WARNING website (wordpress): no index on user_id of wp_comments: lookups of "
                "comments by account read the whole table; create it: CREATE INDEX "
                "sarbot_wp_comments_user_id ON wp_comments (user_id)"
            ]
            code, output = invoke(config, "connectors", "check", "--json")
            [row] = json.loads(output)
            assert code == 0 and row["ok"] is True
            assert [w.split(":")[0] for w in row["warnings"]] == [
                "no index on user_id of wp_comments"
            ]
            with engine.begin() as connection:
                connection.exec_driver_sql("CREATE INDEX by_user ON wp_comments (user_id)")
            engine.dispose()
            code, output = invoke(config, "connectors", "check")
            assert code == 0 and "WARNING" not in output
            code, output = invoke(config, "connectors", "check", "--json")
            assert json.loads(output)[0]["warnings"] == []

    def test_list_shows_types_and_configured_connectors(self, tmp_path: Path) -> None:
        """``connectors list`` names the installed types and the configured instances."""
        config = write_config(tmp_path, "support@redtrain.test")
        code, output = invoke(config, "connectors", "list")
        assert code == 0
        assert "installed types: " in output and "keepass" in output and "sql" in output

    def test_list_as_json(self, tmp_path: Path) -> None:
        """``connectors list --json``: the installed types and each configured connector."""
        config = write_config(tmp_path, "support@redtrain.test")
        config.write_text(
            config.read_text() + '\n[[connectors]]\nname = "crm"\ntype = "sql"\nenabled = false\n'
            'description = "The old CRM"\nurl = "sqlite:///crm.db"\n'
            '[[connectors.queries]]\nname = "q"\ncategory = "c"\nverify = "email"\n'
            'sql = "SELECT 1 AS email WHERE :email IS NOT NULL"\n'
        )
        code, output = invoke(config, "connectors", "list", "--json")
        assert code == 0
        listed = json.loads(output)
        assert {"keepass", "sql", "wordpress"} <= set(listed["installed_types"])
        assert listed["installed_types"] == sorted(listed["installed_types"])
        assert listed["connectors"] == [
            {"name": "crm", "type": "sql", "enabled": False, "description": "The old CRM"}
        ]
        code, output = invoke(config, "connectors", "list")
        assert code == 0 and "crm   sql   False    The old CRM" in output


class TestAuditCommand:
    def test_verify_reports_intact_then_broken(self, tmp_path: Path) -> None:
        """``audit verify`` passes on a sound trail and names the row someone edited."""
        config = write_config(tmp_path, "support@redtrain.test")
        invoke(config, "db", "upgrade")
        app = App.load(config)
        with app.sessions.begin() as session:
            for n in range(3):
                audit(session, None, f"test.{n}", at=utcnow())
        assert invoke(config, "audit", "verify") == (0, "audit trail intact: 3 events\n")
        with app.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER audit_events_no_update")
            connection.exec_driver_sql("UPDATE audit_events SET reason = 'forged' WHERE id = 2")
        code, output = invoke(config, "audit", "verify")
        assert code == 1
        assert output.startswith("audit trail BROKEN at event 2: its content was changed")


def test_tables_print_no_terminal_controls(capsys: pytest.CaptureFixture[str]) -> None:
    """A stored value (a yielded login, say) with an escape sequence is shown inert."""
    table([{"value": "asmith\x1b[2J\x1b]0;pwned\x07", "n": None}], ["value", "n"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "asmith?[2J?]0;pwned?" in out


class TestListings:
    def test_requests_list_by_state(self, tmp_path: Path) -> None:
        """``requests list --state S`` lists the requests in that state only, as a table or
        as JSON; a state nobody is in lists none, and an unknown state is refused."""
        config = write_config(tmp_path, "support@redtrain.test")
        invoke(config, "db", "upgrade")
        references = {}
        for name in ("alice", "bob"):
            code, output = invoke(
                config, "requests", "create", "--email", f"{name}@example.test", "--note", "post"
            )
            assert code == 0, output
            references[name] = output.split(":")[0]
        code, output = invoke(config, "requests", "reject", references["bob"], "--reason", "dup")
        assert code == 0, output
        code, output = invoke(config, "requests", "list", "--state", "rejected")
        assert code == 0
        header, row = output.splitlines()
        assert header.split() == LIST_COLUMNS
        assert row.split()[:3] == [references["bob"], "rejected", "bob@example.test"]
        code, output = invoke(
            config, "requests", "list", "--state", "awaiting_confirmation", "--json"
        )
        [listed] = json.loads(output)
        assert (listed["reference"], listed["email"]) == (
            references["alice"],
            "alice@example.test",
        )
        assert invoke(config, "requests", "list", "--state", "delivered") == (0, "(none)\n")
        code, output = invoke(config, "requests", "list", "--state", "lost")
        assert code == 2 and "'lost' is not one of" in output

    def test_the_register_takes_one_format(self, tmp_path: Path) -> None:
        """``export-register`` writes CSV or JSON: one of the two must be asked for."""
        config = write_config(tmp_path, "support@redtrain.test")
        invoke(config, "db", "upgrade")
        invoke(config, "requests", "create", "--email", "alice@example.test", "--note", "phone")
        for both_or_none in ([], ["--csv", "--json"]):
            code, output = invoke(config, "requests", "export-register", *both_or_none)
            assert code == 2 and "give one of --csv and --json" in output
        code, output = invoke(config, "requests", "export-register", "--json")
        [row] = json.loads(output)
        assert (row["email"], row["received_via"]) == ("alice@example.test", "manual")
        assert "request.created: phone" in row["decisions"]

    def test_version(self) -> None:
        """``--version`` names the installed version."""
        result = CliRunner().invoke(cli, ["--version"], obj={}, prog_name="sarbot")
        assert result.exit_code == 0
        assert result.output == f"sarbot, version {version('sarbot')}\n"


class TestPurgeWithoutTheMailbox:
    def test_purge_says_the_mail_copies_were_not_purged(self, tmp_path: Path) -> None:
        """With IMAP down, ``purge`` purges the database, says that the copies in the processed
        folder stay, logs it and exits 1."""
        config = write_config(tmp_path, "support@redtrain.test", imap_port=free_port())
        assert invoke(config, "db", "upgrade")[0] == 0
        run = subprocess.run(
            [*SARBOT, "--config", str(config), "purge"], capture_output=True, text=True
        )
        assert run.returncode == 1
        assert run.stdout.startswith("purged 0 request(s) and 0 audit event(s);")
        assert "mail copies NOT purged: the mailbox could not be reached" in run.stderr
        assert "the folder GDPR received before" in run.stderr
        assert "Traceback" not in run.stderr + run.stdout
        events = {
            json.loads(line)["event"]: json.loads(line)
            for line in run.stderr.splitlines()
            if line.startswith("{")
        }
        assert events["retention.mail_not_purged"]["folder"] == "GDPR"
        assert events["retention.mail_not_purged"]["level"] == "warning"
        assert "retention.purged" in events and "retention.mail_deleted" not in events
        with App.load(config).sessions() as session:
            assert verify_trail(session).events == 1  # the purge is in the audit trail


def _invocations() -> Iterator[list[str | None]]:
    """The words of every call, list and tuple in the tests; None for what is not a string."""
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            items = (
                node.args
                if isinstance(node, ast.Call)
                else node.elts
                if isinstance(node, ast.List | ast.Tuple)
                else []
            )
            yield [
                n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else None
                for n in items
            ]


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, str]]:
    """Every command as (path, ""), and each of its options as (path, "--option")."""
    yield path, ""
    for param in command.params:
        if isinstance(param, click.Option):
            yield path, max(param.opts, key=len)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_every_command_and_option_is_run_by_a_test() -> None:
    """Each command and each of its options appears in some test's invocation of sarbot."""
    covered = {("sarbot", "")}
    for words in _invocations():
        command: click.Command = cli
        path = "sarbot"
        for word in words:
            if word is None:
                continue
            if isinstance(command, click.Group) and word in command.commands:
                command = command.commands[word]
                path = f"{path} {word}"
                covered.add((path, ""))
            elif word.startswith("--") and (path != "sarbot" or word in ("--config", "--version")):
                covered.add((path, word))
    missing = sorted(set(_commands(cli, "sarbot")) - covered)
    assert missing == [], f"commands or options no test runs: {missing}"
