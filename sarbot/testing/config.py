"""The configuration of a sarbot that watches a mailbox on a test mail server.

Tests that run ``sarbot`` as a process write it with ``write_config``: they
override single settings and append their own sections.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from sarbot.testing.mail import MailServer

Value = str | int | float | bool


def write_config(
    path: Path,
    support: str,
    *,
    server: MailServer,
    database_url: str,
    export_dir: Path | str = "exports",
    login_file: str | None = "imap-password",
    imap: Mapping[str, Value] | None = None,
    smtp: Mapping[str, Value] | None = None,
    extra: str = "",
) -> Path:
    """Write ``path``: sarbot reads ``support``'s mailbox on ``server`` and sends through it.

    It holds ``[controller]``, ``[imap]``, ``[smtp]``, ``[storage]`` and JSON
    ``[logging]``, then ``extra``.  The mailbox password goes to
    ``login_file``, beside ``path`` unless absolute, as a secret reference; with
    ``login_file=None`` there is none (a login by token: ``[imap.oauth2]`` in ``extra``).
    """
    if server.ca_file is None:
        raise ValueError("the test mail server needs its CA file")
    sections: dict[str, dict[str, Value]] = {
        "controller": {"name": "Red Train IT Ltd", "email": support},
        "imap": {
            "host": server.host,
            "port": server.imap_port,
            "security": "starttls",
            "ca_file": server.ca_file,
            "username": support,
            "poll_interval": 1,
            "timeout": 10,
            "start": "2000-01-01",  # a new mailbox: mail a test put there first is answered
            **(imap or {}),
        },
        "smtp": {
            "host": server.host,
            "port": server.smtp_port,
            "ca_file": server.ca_file,
            **(smtp or {}),
        },
        "storage": {"database_url": database_url, "export_dir": str(export_dir)},
        "logging": {"format": "json"},
    }
    lines: list[str] = []
    for name, settings in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in settings.items())
        if name == "imap" and login_file is not None:
            lines.append(f"password = {{ file = {_toml(login_file)} }}")
    if login_file is not None:
        login = path.parent / login_file
        login.parent.mkdir(parents=True, exist_ok=True)
        login.write_text(server.password + "\n")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _toml(value: Value) -> str:
    """A TOML literal: JSON's strings, numbers and booleans are TOML's too."""
    return json.dumps(value)
