"""Loop and abuse guards: messages sarbot must never answer, whatever they say.

Bounces, auto-replies, list traffic and sarbot's own mail would otherwise start
mail loops or let a machine confirm a request on a person's behalf.
"""

from __future__ import annotations

from sarbot.mail.message import IncomingMail

LOOP_HEADER = "X-Sarbot-Loop"
"""Carried by everything sarbot sends; its value is the controller's address."""

_SYSTEM_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster"})
_BULK_PRECEDENCE = frozenset({"bulk", "junk", "list"})
_AUTOMATION_HEADERS = (
    "x-auto-response-suppress",
    "list-id",
    "x-loop",
    "x-autoreply",
    "x-autorespond",
)


def refusal(mail: IncomingMail, own_address: str) -> str | None:
    """Why this message must not be answered, or None if it may be."""
    if mail.has(LOOP_HEADER):
        return "own_mail"
    return_path = mail.header("return-path")
    if return_path is not None and return_path.strip() in {"<>", ""}:
        return "null_sender"
    sender = mail.sender  # parsed from the From field as written, not a decoded display name
    if sender == own_address:
        return "own_mail"
    if sender is not None and sender.partition("@")[0] in _SYSTEM_LOCAL_PARTS:
        return "system_sender"
    auto_submitted = (mail.header("auto-submitted") or "no").split(";")[0].strip().lower()
    if auto_submitted != "no":
        return "auto_submitted"
    if (mail.header("precedence") or "").strip().lower() in _BULK_PRECEDENCE:
        return "bulk_precedence"
    for name in _AUTOMATION_HEADERS:
        if mail.has(name):
            return f"header_{name.replace('-', '_')}"
    content_type = (mail.header("content-type") or "").lower()
    if content_type.startswith("multipart/report"):
        return "delivery_report"
    return None
