"""Reference numbers: ``SAR-2026-48213907``, the year and eight random digits.

A reference is printed in every letter and quoted in replies, so it must not
tell anyone how many requests there were, nor let them guess the reference of
someone else's request from their own.  The digits come from ``secrets``; a
reference already in use is drawn again.  The format matches the pattern
``[A-Z]{2,10}-\\d{4}-\\d{4,9}`` by which replies are recognised.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from sarbot.store.models import Request

DIGITS = 8
MAX_DRAWS = 20


class ReferenceExhausted(RuntimeError):
    """No unused reference was drawn (never expected: 10**8 per prefix and year)."""


def random_reference(prefix: str, year: int) -> str:
    """A reference with fresh random digits; not checked against the database."""
    return f"{prefix}-{year:04d}-{secrets.randbelow(10**DIGITS):0{DIGITS}d}"


def new_reference(session: Session, prefix: str, year: int) -> str:
    """A random reference that no request in the database has."""
    for _ in range(MAX_DRAWS):
        reference = random_reference(prefix, year)
        if session.scalar(select(Request.id).where(Request.reference == reference)) is None:
            return reference
    raise ReferenceExhausted(f"no unused {prefix}-{year} reference in {MAX_DRAWS} draws")
