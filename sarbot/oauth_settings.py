"""OAuth 2.0 logins to IMAP and SMTP: the ``auth`` key and the ``oauth2`` table.

``auth = "oauth2"`` on ``[imap]``, ``[smtp]`` or an IMAP connector replaces the password
with an access token, got from the provider named in the nested ``oauth2`` table and
refreshed before it expires (``sarbot.mail.oauth``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sarbot.secretref import REF_HINT, ConfigPath, Secret

DEFAULT_SCOPES = {
    "microsoft": ("https://outlook.office365.com/.default",),
    "google": ("https://mail.google.com/",),
    "generic": (),
}
MICROSOFT_DELEGATED_SCOPES = (
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
)
"""A Microsoft public client's scopes: the signed-in mailbox's IMAP and SMTP."""
MICROSOFT_LOGIN = "https://login.microsoftonline.com"


class StoredToken(BaseModel):
    """Where a refresh token is kept: ``{ file = "PATH" }`` or ``{ env = "NAME" }``.

    Unlike other secrets it is read when a token is needed, not at start-up: the file may
    not exist until ``sarbot auth login`` writes it, and a grant stored while sarbot runs
    is used from the next login on.  sarbot writes only to a file (mode 0600).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: ConfigPath | None = None
    env: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_place(self) -> StoredToken:
        if (self.file is None) == (self.env is None):
            raise ValueError(f"a secret reference has exactly one key: {REF_HINT}")
        return self

    def __str__(self) -> str:
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"


def _reference_only(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(f"secrets are not written inline; {REF_HINT}")
    return value


TokenReference = Annotated[StoredToken, BeforeValidator(_reference_only)]


class OAuth2Settings(BaseModel):
    """``oauth2``: where the access token comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["microsoft", "google", "generic"]
    client_id: str | None = Field(default=None, min_length=1)
    client_secret: Secret | None = None
    certificate: Secret | None = None
    certificate_key: Secret | None = None
    tenant: str | None = Field(default=None, min_length=1)
    authority: str | None = Field(default=None, pattern=r"^https://")
    token_url: str | None = Field(default=None, pattern=r"^https?://")
    authorization_url: str | None = Field(default=None, pattern=r"^https?://")
    device_authorization_url: str | None = Field(default=None, pattern=r"^https?://")
    refresh_token: TokenReference | None = None
    service_account_file: ConfigPath | None = None
    subject: str | None = Field(default=None, min_length=1)
    scopes: tuple[str, ...] | None = None
    mechanism: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    ca_file: ConfigPath | None = None
    timeout: float = Field(default=30.0, gt=0)

    @property
    def effective_scopes(self) -> tuple[str, ...]:
        """The scopes asked for: the configured ones, else the provider's default."""
        if self.scopes is not None:
            return self.scopes
        if self.public_client:
            return MICROSOFT_DELEGATED_SCOPES
        return DEFAULT_SCOPES[self.provider]

    @property
    def public_client(self) -> bool:
        """A Microsoft app without a credential of its own: a user's grant, delegated access."""
        return (
            self.provider == "microsoft"
            and self.client_secret is None
            and (self.certificate is None)
        )

    @property
    def microsoft_authority(self) -> str:
        """The authority URL msal is given: ``authority``, or the tenant's at Microsoft."""
        return self.authority or f"{MICROSOFT_LOGIN}/{self.tenant}"

    @model_validator(mode="after")
    def _fields_for_the_flow(self) -> OAuth2Settings:
        {"microsoft": _microsoft, "google": _google, "generic": _generic}[self.provider](self)
        return self


def _not_for(settings: OAuth2Settings, provider: str, *names: str) -> None:
    given = [name for name in names if getattr(settings, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} is not used with provider = {provider!r}")


def _microsoft(s: OAuth2Settings) -> None:
    _not_for(s, "microsoft", "token_url", "service_account_file", "subject")
    _not_for(s, "microsoft", "authorization_url", "device_authorization_url")
    if s.client_id is None:
        raise ValueError("provider 'microsoft' needs client_id (the app registration's id)")
    if (s.tenant is None) == (s.authority is None):
        raise ValueError("provider 'microsoft' needs tenant, or authority instead (not both)")
    if (s.certificate is None) != (s.certificate_key is None):
        raise ValueError("certificate and certificate_key go together")
    if s.client_secret is not None and s.certificate is not None:
        raise ValueError("provider 'microsoft' takes client_secret or certificate, not both")
    if s.public_client and s.refresh_token is None:
        raise ValueError(
            "provider 'microsoft' needs client_secret, or certificate and certificate_key "
            "(an app's own access), or refresh_token (a mailbox user's grant, stored by "
            "sarbot auth login)"
        )


def _google(s: OAuth2Settings) -> None:
    _not_for(s, "google", "tenant", "authority", "certificate", "certificate_key")
    _not_for(s, "google", "device_authorization_url")
    if s.service_account_file is not None:
        _not_for(s, "google with service_account_file", "client_id", "client_secret")
        _not_for(s, "google with service_account_file", "refresh_token", "authorization_url")
        if s.subject is None:
            raise ValueError("service_account_file needs subject: the mailbox to act for")
        return
    _not_for(s, "google without service_account_file", "subject")
    if s.client_id is None or s.client_secret is None or s.refresh_token is None:
        raise ValueError(
            "provider 'google' needs client_id, client_secret and refresh_token "
            "(a user's consent), or service_account_file and subject (domain-wide delegation)"
        )


def _generic(s: OAuth2Settings) -> None:
    _not_for(s, "generic", "tenant", "authority", "certificate", "certificate_key")
    _not_for(s, "generic", "authorization_url")
    _not_for(s, "generic", "service_account_file", "subject")
    if s.token_url is None or s.client_id is None:
        raise ValueError("provider 'generic' needs token_url and client_id")
    if s.refresh_token is None and s.client_secret is None:
        raise ValueError(
            "provider 'generic' needs refresh_token (a user's grant) or client_secret "
            "(the client credentials grant)"
        )


class LoginAuth(BaseModel):
    """The ``auth`` and ``oauth2`` keys of a mail login; mixed into the login's settings."""

    auth: Literal["password", "oauth2"] = "password"
    oauth2: OAuth2Settings | None = None

    def check_auth(
        self, username: str | None, password: object, *, password_required: bool
    ) -> None:
        """Raise ValueError unless the login has the keys its ``auth`` needs."""
        check_login(
            self.auth,
            username,
            password is not None,
            self.oauth2,
            password_required=password_required,
        )


def check_login(
    auth: str,
    username: str | None,
    has_password: bool,
    oauth2: OAuth2Settings | None,
    *,
    password_required: bool,
) -> None:
    """The keys a login needs for its ``auth``; raises ValueError saying what is missing."""
    if auth == "password":
        if oauth2 is not None:
            raise ValueError('an oauth2 table needs auth = "oauth2"')
        if password_required and not has_password:
            raise ValueError('password is required (or auth = "oauth2" with an oauth2 table)')
        return
    if oauth2 is None:
        raise ValueError('auth = "oauth2" needs an oauth2 table: provider, client_id, ...')
    if has_password:
        raise ValueError('password is not used with auth = "oauth2"; remove it')
    if not username:
        raise ValueError('auth = "oauth2" needs username: the mailbox the token acts for')
