"""The long crash run: many requests through a daemon killed with SIGKILL again and again.

    flock /tmp/sarbot-mailstack.lock .venv/bin/python -m bench.crash --requests 500 --kills 200

Starts the mail stack if it is down (``scripts/mailstack up``), sends the
requests through a real ``sarbot run`` that is killed at moments drawn from
``--seed``, lets it finish unkilled, then checks every invariant (see
``tests/crashkit.py``) and prints the figures.  Exits 1 if an invariant broke;
the run's folder (config, state database, one log per life) is kept then.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sarbot.testing import MailServer
from tests.conftest import CA_FILE, ROOT
from tests.crashkit import Findings, Plan, run_with_kills


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(10**6)
    plan = Plan(
        requests=options.requests,
        kills=options.kills,
        seed=seed,
        max_gap=options.max_gap,
        big_share=options.big_share,
    )
    started = subprocess.run([str(ROOT / "scripts" / "mailstack"), "up"], capture_output=True)
    if started.returncode != 0:
        print("scripts/mailstack up failed:", started.stderr.decode(errors="replace"))
        return 2
    root = Path(tempfile.mkdtemp(prefix="sarbot-crash-"))
    began = time.monotonic()
    print(f"seed {seed}: {plan.requests} requests, {plan.kills} kills, in {root}", flush=True)

    def say(line: str) -> None:
        print(f"[{time.monotonic() - began:6.0f} s] {line}", flush=True)

    findings = run_with_kills(root, plan, MailServer(ca_file=str(CA_FILE)), say)
    print(figures(findings))
    if findings.failures:
        print(findings.report())
        print(f"kept {root} (config, state database, logs/life-*.jsonl)")
        return 1
    if options.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def figures(findings: Findings) -> str:
    where = ", ".join(f"{event} {n}" for event, n in findings.killed_after.most_common())
    rows = [
        ("seed", str(findings.seed)),
        ("requests", str(findings.requests)),
        ("kills", str(findings.kills)),
        ("duplicates", f"{findings.duplicate_acks} acks, {findings.duplicate_exports} exports"),
        ("losses", str(findings.losses)),
        ("broken invariants", str(len(findings.failures))),
        ("time", f"{findings.seconds:.0f} s"),
        ("kills after", where),
    ]
    return "\n".join(f"{name:<18} {value}" for name, value in rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.crash", description="The long crash run."
    )
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument(
        "--max-gap", type=float, default=3.0, help="longest wait after start-up before a kill (s)"
    )
    parser.add_argument("--big-share", type=float, default=0.2, help="share of big exports")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    return parser


if __name__ == "__main__":
    sys.exit(main())
