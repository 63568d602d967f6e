"""OAuth 2.0 failures in words an administrator can act on, never holding a token."""

from __future__ import annotations

from typing import Any

from sarbot.errors import MailboxError


class OAuthError(MailboxError):
    """A login by token failed; the message says why, in words an admin can act on.

    ``cause`` names the kind of failure for logs and metrics: ``grant`` (none stored, or
    expired or revoked), ``client`` (the app's credentials), ``permission`` (the app may not
    act for the mailbox, or the server refused a new token), ``tenant``, ``unreachable``,
    ``tls`` or ``provider`` (anything else the provider said).
    """

    def __init__(self, message: str, cause: str = "provider") -> None:
        super().__init__(message)
        self.cause = cause


CAUSES = {
    "invalid_grant": "grant",
    "expired_token": "grant",
    "invalid_client": "client",
    "unauthorized_client": "permission",
    "invalid_scope": "permission",
    "access_denied": "permission",
}
"""RFC 6749 error codes by the cause an admin sees."""

HINTS = {
    "invalid_grant": "the grant was revoked or expired: run sarbot auth login",
    "invalid_client": (
        "the provider refused the client's credentials (invalid_client): check client_id and "
        "client_secret or the certificate"
    ),
    "unauthorized_client": (
        "the client may not use this grant or act for this mailbox (unauthorized_client): "
        "check the app's permissions and consent"
    ),
    "invalid_scope": "the provider refused the scopes asked for (invalid_scope): check scopes",
    "unsupported_grant_type": "the provider does not offer this grant (unsupported_grant_type)",
}


MICROSOFT_TENANT_CODES = {
    "AADSTS90002": "the tenant is unknown to Microsoft: check tenant",
    "AADSTS900023": "the tenant is not a valid tenant name or id: check tenant",
    "AADSTS700016": (
        "the app is not registered in this tenant: check client_id and tenant "
        "(the directory the app registration lives in)"
    ),
}
"""Entra ID error codes (in ``error_description``) that mean the wrong tenant or app."""


def describe(error: str, description: str = "") -> OAuthError:
    """The OAuthError for an RFC 6749 error code, in an admin's words."""
    for code, hint in MICROSOFT_TENANT_CODES.items():
        if code in description:
            return OAuthError(hint, "tenant")
    hint = HINTS.get(error, f"the provider refused the token request ({error or 'no reason'})")
    first_line = description.strip().splitlines()[0] if description.strip() else ""
    message = f"{hint}: {first_line[:200]}" if first_line else hint
    return OAuthError(message, CAUSES.get(error, "provider"))


def refused_by_server(username: str) -> OAuthError:
    """The server refused a token just got for ``username``: the app may not use the mailbox."""
    return OAuthError(
        f"the mail server refused a new OAuth 2.0 token for {username}: the app may lack "
        "access to this mailbox (its permissions, the mailbox's grant to the app, or a "
        "username that is not the mailbox)",
        "permission",
    )


def checked(result: dict[str, Any]) -> tuple[str, float]:
    """(token, lifetime) from a token endpoint's answer, or the OAuthError it means."""
    if "access_token" not in result:
        raise describe(str(result.get("error", "")), str(result.get("error_description", "")))
    return str(result["access_token"]), float(result.get("expires_in") or 0)
