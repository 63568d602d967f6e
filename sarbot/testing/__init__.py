"""Helpers for the tests and the demo: the people at the other end, and the stores sarbot reads."""

from sarbot.testing.mail import Correspondent, MailServer, subject_contains

__all__ = ["Correspondent", "MailServer", "subject_contains"]
