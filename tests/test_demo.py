"""``make demo`` works: the demo script runs end to end on the real mail stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sarbot.testing import MailServer
from tests.conftest import ROOT, unique

pytestmark = pytest.mark.mailstack


def test_demo_answers_alice_from_all_three_sources(tmp_path: Path, mailstack: MailServer) -> None:
    """Her export has her vault entry, website data and both computers, and nothing of bob's."""
    env = {
        **os.environ,
        "SARBOT_DEMO_DIR": str(tmp_path / "demo"),
        "SARBOT_DEMO_SUPPORT": unique("support", "redtrain.test"),
        "SARBOT_DEMO_ALICE": unique("alice", "example.test"),
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "- Our secure vault (client system access details and contracts): 1 record\n" in out
    assert "- Our website: comments and your account: 4 records\n" in out
    assert "- The monitoring agents on computers we support: 2 records\n" in out
    # Her machines are reached through the realm that maps the vault group to the RMM client.
    assert "login asmith at Acme Ltd [everywhere] from keepass 'vault': UserName of entry" in out
    assert "login alice_s [not_followed] from wordpress 'website'" in out
    assert "alice's vault password appears nowhere in what she received." in out
    assert "bjones" not in out and "Bob" not in out
    assert (tmp_path / "demo" / "config.toml").is_file()
    assert re.search(r"requests show SAR-\d{4}-\d{8}\n", out)  # the random reference of hers
