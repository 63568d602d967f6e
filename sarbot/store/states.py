"""The states a request and an outgoing mail can be in, and the allowed moves."""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    POSSIBLE = "possible"
    """Mail that may be an access request in other words: an operator accepts or dismisses it."""
    HISTORY = "history"
    """A request-looking mail that was in the mailbox before sarbot started watching it."""
    RECEIVED = "received"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    CONFIRMED = "confirmed"
    COLLECTING = "collecting"
    READY = "ready"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    REJECTED = "rejected"
    NEEDS_REVIEW = "needs_review"
    FAILED = "failed"
    DISMISSED = "dismissed"
    """A possible request an operator found was none."""

    @property
    def is_open(self) -> bool:
        return self not in TERMINAL

    @property
    def is_possible(self) -> bool:
        """Not a request yet: registered for an operator, never answered by itself."""
        return self in POSSIBLE


TERMINAL = frozenset(
    {
        RequestState.DELIVERED,
        RequestState.EXPIRED,
        RequestState.REJECTED,
        RequestState.FAILED,
        RequestState.DISMISSED,
    }
)
POSSIBLE = frozenset({RequestState.POSSIBLE, RequestState.HISTORY})

_S = RequestState
ALLOWED: dict[RequestState, frozenset[RequestState]] = {
    _S.POSSIBLE: frozenset({_S.RECEIVED, _S.DISMISSED}),
    _S.HISTORY: frozenset({_S.RECEIVED, _S.DISMISSED}),
    _S.RECEIVED: frozenset({_S.AWAITING_CONFIRMATION, _S.CONFIRMED, _S.NEEDS_REVIEW, _S.REJECTED}),
    _S.AWAITING_CONFIRMATION: frozenset({_S.CONFIRMED, _S.EXPIRED, _S.NEEDS_REVIEW, _S.REJECTED}),
    _S.CONFIRMED: frozenset({_S.COLLECTING, _S.NEEDS_REVIEW, _S.REJECTED}),
    _S.COLLECTING: frozenset({_S.READY, _S.NEEDS_REVIEW, _S.REJECTED, _S.FAILED}),
    _S.READY: frozenset({_S.DELIVERED, _S.COLLECTING, _S.NEEDS_REVIEW, _S.REJECTED, _S.FAILED}),
    _S.NEEDS_REVIEW: frozenset(
        {_S.AWAITING_CONFIRMATION, _S.CONFIRMED, _S.READY, _S.REJECTED, _S.FAILED}
    ),
    _S.DELIVERED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.FAILED: frozenset(),
    _S.DISMISSED: frozenset(),
}


class MailState(StrEnum):
    """An outgoing message: persisted as pending before it is handed to SMTP."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class MailKind(StrEnum):
    ACKNOWLEDGEMENT = "acknowledgement"
    EXPORT = "export"
    EXPIRY_NOTICE = "expiry_notice"
    REMINDER = "reminder"
    EXTENSION_NOTICE = "extension_notice"
    REJECTION = "rejection"
    OPERATOR_REVIEW = "operator_review"
    OPERATOR_CONNECTOR = "operator_connector"
    OPERATOR_DEADLINE = "operator_deadline"
    OPERATOR_OVERDUE = "operator_overdue"
    OPERATOR_DIGEST = "operator_digest"
    OPERATOR_POSSIBLE = "operator_possible"
    OPERATOR_HISTORY = "operator_history"
    OPERATOR_LOGIN = "operator_login"

    @property
    def to_operators(self) -> bool:
        return self.value.startswith("operator_")


class Outcome(StrEnum):
    """What intake did with one incoming message that concerned sarbot."""

    REQUEST = "request"
    CONFIRMATION = "confirmation"
    CONFIRMATION_REFUSED = "confirmation_refused"
    RATE_LIMITED = "rate_limited"
    GUARDED = "guarded"
    TOO_LARGE = "too_large"
    INVALID_SENDER = "invalid_sender"
    UNRELATED_REPLY = "unrelated_reply"
    UNREADABLE = "unreadable"
    JOINED = "joined"
    POSSIBLE = "possible"
    HISTORY = "history"
    BEFORE_START = "before_start"
