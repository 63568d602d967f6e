"""``wordpress``: website comments, accounts and login sessions from a WordPress database.

Exports what WordPress core's own personal-data exporters export: comments by
author email or by account, the account with its profile fields, and the
account's login sessions (without their tokens).  Queries are SQLAlchemy Core
with bound parameters; the validated table prefix is the only configured text
that ever reaches SQL.  SQLite files are opened read-only; for MySQL/MariaDB,
give the connector an account that may only SELECT.

Everything on a WordPress site is typed by whoever signed up or commented: a
login, a profile's email, a comment's author fields prove nothing about who
someone is.  An account belongs to the person when its ``user_email`` is their
address; what it yields (its login, its email) is self-asserted and is looked up
nowhere, not even here.  Every match is checked again in Python, exactly, whatever
the database's collation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, TypeAlias

from pydantic import BaseModel, Field
from sqlalchemy import (
    Connection,
    literal,
    select,
)

from connectors.indexed import Spelled, address_spellings, missing, spellings_of
from connectors.readonly import read_only_engine
from connectors.wordpress.php import (
    Unreadable,
    gmt,
    location_of,
    session_keys,
    sessions_of,
)
from connectors.wordpress.queries import (
    LOCATION_KEY,
    PROFILE_META,
    SESSION_META,
    Comment,
    Queries,
    Tables,
)
from sarbot.connector import (
    EMAIL,
    Identifier,
    Identity,
    InvalidAddress,
    JSONValue,
    MaybeSecretStr,
    Record,
    Section,
    Trust,
    jsonable,
    normalize_address,
    same_address,
)

AnyRow: TypeAlias = Any
"""A row of a ``Prepared`` statement: a named tuple of its columns (``row.ID``)."""

APPROVAL = {
    "1": "approved",
    "0": "pending",
    "spam": "spam",
    "trash": "trash",
    "post-trashed": "post trashed",
}
WITHHELD = (
    "The account's password hash, password-reset key and login session tokens are held "
    "by the website and withheld."
)
UNREADABLE_SESSIONS = (
    "Login session data is stored for this account but could not be read, "
    "so its sessions are not listed."
)
UNREADABLE_LOCATION = (
    "A location for the events widget is stored for this account but could not be read."
)


class WordpressSettings(Section):
    url: MaybeSecretStr
    table_prefix: str = Field(default="wp_", pattern=r"^[A-Za-z0-9_]{1,32}$")
    site_url: str = Field(default="", pattern=r"^(https?://[^\s?#]+)?$")
    match_usernames: bool = True
    skip_comment_types: tuple[str, ...] = ("order_note", "webhook_delivery", "action_log")


class WordpressConnector:
    """Finds a person's comments, account and sessions by email address or username."""

    Settings: ClassVar[type[BaseModel]] = WordpressSettings
    namespace_trust: ClassVar[Trust] = Trust.SELF_ASSERTED

    def __init__(self, name: str, settings: WordpressSettings) -> None:
        self.name = name
        self.settings = settings
        self.t = Tables(settings.table_prefix)
        self.site_url = settings.site_url.rstrip("/")
        self.engine = read_only_engine(settings.url)
        self.namespace = f"wordpress:{name}"
        self.queries = Queries(self.t, settings.skip_comment_types)

    def check(self) -> list[str]:
        """The tables are readable; a warning for each index the lookups need that is missing."""
        with self.engine.connect() as connection:
            connection.execute(select(literal(1)).select_from(self.t.users).limit(1)).all()
            return missing(connection, self.t.needed(self.settings.match_usernames))

    def close(self) -> None:
        self.engine.dispose()

    def collect(self, identity: Identity) -> Iterator[Record]:
        emails = [i for i in identity.of_kind("email") if i.value.strip()]
        names = [
            i for i in identity.of_kind("username") if i.value.strip() and i.covers(self.namespace)
        ]
        if not self.settings.match_usernames:
            names = []
        with self.engine.connect() as connection:
            accounts = self._accounts(connection, emails, names)
            for found_by, account in accounts.values():
                yield from self._account_records(connection, found_by, account)
            seen: set[int] = set()
            for found_by in emails:
                yield from self._comments(connection, found_by, seen, email=found_by.value)
            for user_id, (found_by, _) in accounts.items():
                yield from self._comments(connection, found_by, seen, user_id=user_id)

    # Accounts

    def _accounts(
        self, connection: Connection, emails: list[Identifier], names: list[Identifier]
    ) -> dict[int, tuple[Identifier, AnyRow]]:
        lookups = [(i, "user_email") for i in emails] + [(i, "user_login") for i in names]
        found: dict[int, tuple[Identifier, AnyRow]] = {}
        for identifier, field in lookups:
            collation = self.queries.collation(connection, self.t.users, field)
            spelled = Spelled.of(spellings_of(identifier), collation)
            query = self.queries.accounts(collation, field, spelled.shape)
            for row in query.all(connection, spelled.params("spellings")):
                stored = getattr(row, field)
                if identifier.kind == EMAIL:
                    mine = same_address(stored, identifier.value)
                else:
                    mine = Identity("", (identifier,)).account(stored, self.namespace) is not None
                if mine:
                    found.setdefault(int(row.ID), (identifier, row))
        return found

    def _account_records(
        self, connection: Connection, found_by: Identifier, user: AnyRow
    ) -> Iterator[Record]:
        user_id = int(user.ID)
        meta = self._meta(connection, user_id)
        notes = [WITHHELD]
        sessions: list[dict[str, JSONValue]] = []
        if meta.get(SESSION_META):
            try:
                sessions = sessions_of(meta[SESSION_META])
            except Unreadable:
                notes.append(UNREADABLE_SESSIONS)
        location: dict[str, JSONValue] = {}
        if meta.get(LOCATION_KEY):
            try:
                location = location_of(meta[LOCATION_KEY])
            except Unreadable:
                notes.append(UNREADABLE_LOCATION)
        fields = {
            "User ID": user_id,
            "Login name": jsonable(user.user_login),
            "Nice name": jsonable(user.user_nicename),
            "Email": jsonable(user.user_email),
            "Website": jsonable(user.user_url),
            "Registered (GMT)": gmt(user.user_registered),
            "Display name": jsonable(user.display_name),
        } | {label: meta[key] for key, label in PROFILE_META.items() if meta.get(key)}
        yield Record(
            category="Website account",
            fields=fields,
            found_by=found_by,
            location=f"table {self.t.prefix}users, ID {user_id}",
            yields=self._account_yields(found_by, user),
            notes=tuple(notes),
            key=f"user:{user_id}",
        )
        meta_location = f"table {self.t.prefix}usermeta, user_id {user_id}"
        session_location = f"{meta_location}, meta_key {SESSION_META}"
        for key, session in session_keys(sessions):
            ip = session["IP address"]
            yield Record(
                category="Website login session",
                fields=session,
                found_by=found_by,
                location=session_location,
                yields=(self._ip(ip, session_location),) if isinstance(ip, str) else (),
                key=f"user:{user_id}:session:{key}",
            )
        if location:
            yield Record(
                category="Website events location",
                fields=location,
                found_by=found_by,
                location=f"{meta_location}, meta_key {LOCATION_KEY}",
                key=f"user:{user_id}:events-location",
            )

    def _meta(self, connection: Connection, user_id: int) -> dict[str, str]:
        # WordPress keeps one row per key for these; the first non-empty one wins.
        found: dict[str, str] = {}
        for row in self.queries.meta().all(connection, {"user_id": user_id}):
            key, value = row.meta_key, row.meta_value
            if isinstance(value, str) and value and key not in found:
                found[str(key)] = value
        return found

    def _account_yields(self, found_by: Identifier, user: AnyRow) -> tuple[Identifier, ...]:
        """The account's login and email: chosen at sign-up, so self-asserted."""
        origin = f"wordpress '{self.name}': {self.t.prefix}users.%s of user ID {user.ID}"
        yields = []
        login = user.user_login
        if isinstance(login, str) and login.strip() and found_by.kind != "username":
            yields.append(
                Identifier(
                    "username", login, origin % "user_login", self.namespace, Trust.SELF_ASSERTED
                )
            )
        email = _normalized(str(user.user_email))
        if email and (found_by.kind != EMAIL or email != found_by.value):
            yields.append(
                Identifier(EMAIL, email, origin % "user_email", EMAIL, Trust.SELF_ASSERTED)
            )
        return tuple(yields)

    # Comments

    def _comments(
        self,
        connection: Connection,
        found_by: Identifier,
        seen: set[int],
        *,
        email: str | None = None,
        user_id: int | None = None,
    ) -> Iterator[Record]:
        """Comments by one author address or one account, each exported once."""
        if email is None:
            paged, params = self.queries.comments(None), {"user_id": user_id}
        else:
            collation = self.queries.collation(connection, self.t.comments, "comment_author_email")
            spelled = Spelled.of(address_spellings(email), collation)
            paged, params = (
                self.queries.comments(collation, spelled.shape),
                spelled.params("spellings"),
            )
        mine: dict[object, bool] = {}  # a person's comments repeat a few spellings
        for row in paged.rows(connection, params):
            comment = Comment._make(row)
            comment_id = int(comment.comment_ID)
            stored = comment.comment_author_email
            if email and stored not in mine:
                mine[stored] = same_address(stored, email)
            if comment_id in seen or (email and not mine[stored]):
                continue
            seen.add(comment_id)
            yield self._comment_record(comment, comment_id, found_by)

    def _comment_record(self, row: Comment, comment_id: int, found_by: Identifier) -> Record:
        post_link = self._post_link(row.comment_post_ID, row.post_guid)
        approved = str(row.comment_approved)
        location = f"table {self.t.prefix}comments, comment_ID {comment_id}"
        ip = row.comment_author_IP
        return Record(
            category="Website comment",
            fields={
                "Author": jsonable(row.comment_author),
                "Email": jsonable(row.comment_author_email),
                "Website": jsonable(row.comment_author_url),
                "IP address": jsonable(ip),
                "User agent": jsonable(row.comment_agent),
                "Date (GMT)": gmt(row.comment_date_gmt),
                "Content": jsonable(row.comment_content),
                "Status": APPROVAL.get(approved, approved),
                "Type": jsonable(row.comment_type),
                "Post title": jsonable(row.post_title),
                "Post link": post_link,
                "Comment link": f"{post_link}#comment-{comment_id}" if post_link else None,
            },
            found_by=found_by,
            location=location,
            yields=(self._ip(ip, location),) if isinstance(ip, str) and ip else (),
            key=f"comment:{comment_id}",
        )

    def _post_link(self, post_id: object, guid: object) -> str | None:
        if isinstance(guid, str) and guid:
            return guid
        if self.site_url and isinstance(post_id, int) and post_id > 0:
            return f"{self.site_url}/?p={post_id}"
        return None

    def _ip(self, ip: str, where: str) -> Identifier:
        return Identifier("ip", ip, f"wordpress '{self.name}': {where}", "ip", Trust.SELF_ASSERTED)


# Values stored by PHP


def _normalized(address: str) -> str | None:
    try:
        return normalize_address(address)
    except InvalidAddress:
        return None
