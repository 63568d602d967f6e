"""Where the test mail stack of ``scripts/mailstack`` listens and keeps its files.

The defaults are the stack's own: IMAP 10143, SMTP 10025, LMTP 10024, milter 10026, DNS
10053, identity provider 10080, files in ``<repo>/.mailstack``. A second stack beside the
first (for development) is started with the same environment variables these read:

- ``SARBOT_MAILSTACK_DIR``: the folder instead of ``<repo>/.mailstack``;
- ``SARBOT_MAILSTACK_PORT_BASE``: every port is BASE + 143, 25, 24, 26, 53 or 80;
- ``SARBOT_MAILSTACK_IMAP_PORT`` (and ``SMTP``, ``LMTP``, ``MILTER``, ``DNS``, ``IDP``): one port.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

OFFSETS: Final = {"imap": 143, "smtp": 25, "lmtp": 24, "milter": 26, "dns": 53, "idp": 80}
DEFAULT_PORT_BASE: Final = 10000
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
"""The checkout this module is in (sarbot is installed editable for the tests and the demo)."""


def port(name: str) -> int:
    """The port of one part of the stack: imap, smtp, lmtp, milter, dns or idp."""
    if name not in OFFSETS:
        raise ValueError(f"no such part of the mail stack: {name!r}")
    own = os.environ.get(f"SARBOT_MAILSTACK_{name.upper()}_PORT")
    if own:
        return int(own)
    return int(os.environ.get("SARBOT_MAILSTACK_PORT_BASE") or DEFAULT_PORT_BASE) + OFFSETS[name]


def state_dir(root: Path = REPO_ROOT) -> Path:
    """The stack's folder: ``ca.pem``, ``dkim/``, ``log/`` and the rest."""
    own = os.environ.get("SARBOT_MAILSTACK_DIR")
    return Path(own) if own else root / ".mailstack"


def ca_file(root: Path = REPO_ROOT) -> Path:
    """The CA that signed the stack's certificate (IMAP, SMTP and the identity provider)."""
    return state_dir(root) / "ca.pem"


def idp_url(*, tls: bool = False) -> str:
    """The identity provider's base URL: plain HTTP, or HTTPS (msal accepts only https)."""
    return f"{'https' if tls else 'http'}://127.0.0.1:{port('idp')}"
