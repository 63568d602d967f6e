"""A small OAuth 2.0 identity provider on loopback, for testing OAuth logins to the mail stack.

Not part of sarbot's runtime: nothing outside ``sarbot.testing`` and the tests imports it.
``scripts/mailstack up`` starts it on ``127.0.0.1:10080`` (``SARBOT_MAILSTACK_IDP_PORT``)
with the stack's certificate, and Dovecot's ``oauth2`` passdb asks its introspection
endpoint about every XOAUTH2 or OAUTHBEARER login (Postfix authenticates through Dovecot, so
SMTP AUTH gets the same). Run alone::

    python -m sarbot.testing.idp --port 10080 --state DIR [--tls-cert PEM --tls-key PEM]

The one port speaks HTTP, and HTTPS when a certificate is given (msal accepts only https).
Standard library only, but for ``cryptography`` to check assertion signatures and sign ID
tokens.

Clients
-------
``DIR/clients.json`` holds ``{"clients": [CLIENT, ...]}``, read at start and rewritten by
``POST /admin/clients``. A CLIENT::

    {"client_id": "app",                  # required
     "client_secret": "s3cret",           # client_secret_basic / client_secret_post
     "keys": ["-----BEGIN CERTIFICATE-----..."],   # PEM certificates or RSA public keys:
                                          # private_key_jwt client assertions (msal) and the
                                          # JWT bearer grant (google-auth service accounts)
     "users": ["alice@example.test", "*@redtrain.test"],   # mailboxes it may act for
     "scopes": ["https://mail.google.com/"],   # what it may ask for
     "auto_approve": "alice@example.test",     # device flow: approve at once, as this user
     "rotate_refresh_tokens": false}           # true: each refresh returns a new refresh
                                               # token and ends the old one

A client with neither secret nor keys is public: it may use the device flow and refresh
tokens only. Every token acts for exactly one mailbox (introspection's ``username``).
Scopes: none asked for means all of the client's; ``openid``, ``profile``, ``email`` and
``offline_access`` are always allowed and never granted.

OAuth endpoints (any path prefix works: ``/tenant/v2.0/token`` is ``/token``)
-------------------------------------------------------------------------
Form-encoded requests, JSON answers; errors are RFC 6749 JSON
``{"error", "error_description"}``: 400 (``invalid_request``, ``invalid_grant``,
``unauthorized_client``, ``invalid_scope``, ``unsupported_grant_type``, and for the device
flow ``authorization_pending``, ``access_denied``, ``expired_token``), 401
``invalid_client`` (with ``WWW-Authenticate: Basic`` after HTTP Basic).

``GET [PREFIX]/.well-known/openid-configuration`` (and ``oauth-authorization-server``)
    issuer = base URL + PREFIX, and ``token_endpoint``, ``device_authorization_endpoint``,
    ``introspection_endpoint``, ``revocation_endpoint``, ``jwks_uri``,
    ``authorization_endpoint`` (which refuses: there is no browser sign-in) under the same
    prefix. msal's ``authority=https://127.0.0.1:10080/tenant`` reads
    ``/tenant/v2.0/.well-known/openid-configuration``; ``oidc_authority=`` the same URL
    reads ``/tenant/.well-known/openid-configuration``.
``POST /token``
    Client authentication: HTTP Basic, or ``client_id`` + ``client_secret`` in the body, or
    ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` +
    ``client_assertion`` (RS256 or PS256, iss = sub = client_id, aud = this token endpoint,
    exp within an hour; signed by one of the client's keys). Grants:

    - ``client_credentials``: confidential clients. The mailbox is the client's only user,
      or the one named by the extra field ``username``.
    - ``refresh_token``: ``refresh_token`` (optional ``scope``, no wider than before).
    - ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (RFC 7523; google-auth's service
      accounts): ``assertion`` signed by one of the client's keys, iss = client_id,
      aud = this token endpoint or Google's (``https://oauth2.googleapis.com/token``, which
      google-auth puts there whatever ``token_uri`` says), ``sub`` = the mailbox
      (domain-wide delegation; may be left out when the client has one user), scopes from
      ``scope`` or the assertion's ``scope`` claim. A mailbox the client may not act for is
      ``unauthorized_client``, a bad signature ``invalid_grant``.
    - ``urn:ietf:params:oauth:grant-type:device_code`` (RFC 8628): ``device_code``.

    Answer: ``{"access_token", "token_type": "Bearer", "expires_in", "scope"}``, plus
    ``refresh_token`` from the device flow and from a rotating refresh. A user's grant (the
    device flow, a minted refresh token) asked for with ``openid`` in the scope also gets an
    ``id_token`` (RS256, key at ``/jwks``, new at each start; ``iss`` the issuer,
    ``aud`` the client, ``sub``, ``preferred_username`` = the mailbox) and, for
    ``client_info=1`` as msal sends, ``client_info``: so msal keeps an account and
    ``acquire_token_silent`` refreshes.
``POST /device_authorization``
    ``client_id`` (and credentials if confidential), ``scope``. Answer: ``device_code``,
    ``user_code`` (``BCDF-GHJK``), ``verification_uri`` (``[PREFIX]/device``, a form where
    a person types the code and the mailbox), ``verification_uri_complete``, ``expires_in``
    (600), ``interval`` (1), ``message``.
``POST /introspect`` (RFC 7662; no client authentication, loopback only)
    ``token=...``. A live access token: ``{"active": true, "username", "email", "sub",
    "client_id", "scope", "token_type": "Bearer", "iat", "exp"}``. Anything else (expired,
    revoked, unknown, a refresh token): ``{"active": false}``.
``POST /revoke`` (RFC 7009)
    ``token=...`` with the client's credentials: a refresh token (and every access token got
    with it) or an access token. Always 200 ``{}``.
``GET /health``
    ``{"status": "ok"}``.

Admin API (JSON bodies; errors 400/404 ``{"error": "invalid_request", "error_description"}``)
------------------------------------------------------------------------------------------
``POST /admin/clients`` CLIENT
    Register (or replace) a client; saved to clients.json. 201 ``{"client": CLIENT}`` with
    the secret shown as ``"*****"``. ``GET /admin/clients``: ``{"clients": [...]}``.
``POST /admin/refresh-tokens`` ``{"client_id", "user", "scope"?}``
    A user's one-time consent: a new grant and its refresh token. 201 ``{"refresh_token",
    "grant_id", "scope"}``.
``POST /admin/expire`` ``{"client_id"?, "user"?, "refresh_tokens"?: false}``
    Every live access token of that client and/or user (all, if neither is given) expires
    now; with ``refresh_tokens: true`` their refresh tokens too. ``{"expired": N}``.
``POST /admin/expire`` ``{"client_id"?, "user"?, "lifetime": N | null}``
    Access tokens issued from now on (for that client and/or user) live N seconds (0: born
    expired); null restores the default. The most specific setting wins.
    ``{"lifetime": N}``.
``POST /admin/revoke`` one of ``{"refresh_token"}``, ``{"access_token"}``, ``{"grant_id"}``,
``{"client_id", "user"?}``
    A refresh token ends with the access tokens got with it; a grant (or every grant of a
    client, for one user or all) ends with all its tokens: refreshing then gives
    ``invalid_grant``. A client that still has credentials can get new client-credentials
    or JWT-bearer tokens (a new grant). ``{"revoked": N}`` (tokens ended).
``GET /admin/device``
    ``{"pending": [{"user_code", "client_id", "scope", "expires_in"}]}``.
``POST /admin/device`` ``{"user_code", "user"}`` or ``{"user_code", "deny": true}``
    Approve a device authorization as that user (one the client may act for), or deny it.
    ``{"user_code", "user"}`` / ``{"user_code", "denied": true}``.
``GET /admin/log?since=N``
    ``{"events": [EVENT, ...], "next": M}``: what happened after sequence number N. An
    EVENT: ``{"seq", "time", "event", ...}``; events ``client_registered``, ``token_issued``
    (``grant_type``, ``client_id``, ``user``, ``grant_id``, ``scope``, ``token_id``,
    ``expires_in``, ``refresh_token_id``?), ``token_refused`` (``grant_type``, ``client_id``,
    ``error``, ``error_description``), ``introspected`` (``token_id``, ``active``, ``user``),
    ``expired``, ``lifetime_set``, ``revoked``, ``refresh_token_minted``,
    ``device_authorization``, ``device_approved``, ``device_denied``. Token values never
    appear: ``token_id`` is the first 16 hex digits of the token's SHA-256.

Grants and tokens are kept in memory only: a restart ends them all (clients stay). Assertion
``jti`` values are not checked for reuse (msal re-sends one assertion for several minutes).
"""

from sarbot.testing.idp.client import IdpClient, IdpError

__all__ = ["IdpClient", "IdpError"]
