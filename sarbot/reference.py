"""Reference numbers: ``SAR-2026-0001``, counted per year."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from sarbot.models import Request


def next_reference(session: Session, prefix: str, year: int) -> str:
    stem = f"{prefix}-{year:04d}-"
    existing = session.scalars(select(Request.reference).where(Request.reference.startswith(stem)))
    highest = max((int(ref.removeprefix(stem)) for ref in existing), default=0)
    return f"{stem}{highest + 1:04d}"
