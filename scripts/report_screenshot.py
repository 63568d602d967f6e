"""Screenshot the demo's report for docs/report.md, in headless Chromium.

Builds the demo's stores and logs in a temporary folder exactly as ``make demo``
does, collects alice's data through the demo's configured connectors (all but
the contact-form mailbox, which lives on the mail stack), renders the export's
``index.html`` and photographs it.  No mail stack is needed, and only the
demo's fictional people appear.

    .venv/bin/python scripts/report_screenshot.py [OUTPUT.png]
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "report-screenshot.png"
WIDTH, HEIGHT = 1000, 2600


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else DEFAULT_OUTPUT
    with tempfile.TemporaryDirectory(prefix="sarbot-screenshot-") as scratch:
        folder = Path(scratch)
        # demo.py reads its folder from the environment when imported.
        os.environ["SARBOT_DEMO_DIR"] = str(folder / "demo")
        os.environ.pop("SARBOT_DEMO_ALICE", None)
        sys.path.insert(0, str(ROOT))
        import demo
        import demo_data

        from sarbot.app import App
        from sarbot.export.files import ExportContext, build_files
        from sarbot.graph import Realms
        from sarbot.steps.collect import Collector
        from tests.browser import BrowserError, render

        demo.write_demo_files()
        app = App.load(demo.DEMO / "config.toml")
        # The contact-form copies are in a folder of the demo's mailbox, on the mail stack.
        connectors = []
        for configured in app.build_connectors():
            if configured.type == "imap_mailbox":
                configured.connector.close()
            else:
                connectors.append(configured)
        log = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        )
        try:
            collection = asyncio.run(
                Collector(
                    connectors, app.settings.collection, log, realms=Realms(app.settings.realms)
                ).collect(demo.ALICE)
            )
        finally:
            for configured in connectors:
                configured.connector.close()
        # The demo's stores were made a moment ago; the request follows them.
        now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        ctx = ExportContext(
            reference=f"SAR-{now.year}-48213907",
            email=demo.ALICE,
            controller=app.settings.controller,
            received_at=now,
            confirmed_at=now + timedelta(minutes=17),
            generated_at=now + timedelta(minutes=18),
            sources=collection.sources,
            links=collection.links,
        )
        html = build_files(ctx, app.templates)["index.html"]
        if demo_data.VAULT_PASSWORD_OF_ALICE.encode() in html:
            print("report_screenshot: alice's vault password is in the report", file=sys.stderr)
            return 1
        page = folder / "index.html"
        page.write_bytes(html)
        try:
            rendering = render(page, folder, width=WIDTH, height=HEIGHT)
        except BrowserError as exc:
            print(f"report_screenshot: {exc}", file=sys.stderr)
            return 1
        shutil.copyfile(rendering.screenshot, output)
    print(f"{output}: {WIDTH}x{HEIGHT}, {output.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
