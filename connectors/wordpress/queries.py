"""The tables the wordpress connector reads, its statements (built once, bound per lookup),
and the indexes they need."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Connection, TableClause, bindparam, column, select, table

from connectors.indexed import (
    Collation,
    Needed,
    any_spelling,
    column_collations,
)
from connectors.statements import Paged, Prepared

PROFILE_META = {
    "first_name": "First name",
    "last_name": "Last name",
    "nickname": "Nickname",
    "description": "Biographical info",
}
SESSION_META = "session_tokens"
LOCATION_KEY = "community-events-location"


class Comment(NamedTuple):
    """A comment row as the comments statement selects it, in its column order (a plain
    tuple reads each field several times faster than a result row, and a person may have
    thousands of comments)."""

    comment_ID: Any
    comment_post_ID: Any
    comment_author: Any
    comment_author_email: Any
    comment_author_url: Any
    comment_author_IP: Any
    comment_date_gmt: Any
    comment_content: Any
    comment_approved: Any
    comment_agent: Any
    comment_type: Any
    user_id: Any
    post_title: Any
    post_guid: Any


class Tables:
    """The columns the connector may read; ``user_pass`` and activation keys are not among them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.users = _table(
            f"{prefix}users",
            "ID",
            "user_login",
            "user_nicename",
            "user_email",
            "user_url",
            "user_registered",
            "display_name",
        )
        self.usermeta = _table(f"{prefix}usermeta", "user_id", "meta_key", "meta_value")
        self.posts = _table(f"{prefix}posts", "ID", "post_title", "guid")
        self.comments = _table(f"{prefix}comments", *Comment._fields[:-2])

    def needed(self, match_usernames: bool) -> list[Needed]:
        """The indexes the lookups need (docs/connectors/wordpress.md)."""
        t = self.prefix
        needs = [
            Needed(f"{t}users", "user_email", True, "lookups of accounts by address"),
            Needed(f"{t}comments", "comment_author_email", True, "lookups of comments by address"),
            Needed(f"{t}comments", "user_id", False, "lookups of comments by account"),
            Needed(f"{t}usermeta", "user_id", False, "lookups of an account's profile"),
        ]
        if match_usernames:
            needs.insert(1, Needed(f"{t}users", "user_login", True, "lookups by login"))
        return needs


def _table(name: str, *columns: str) -> TableClause:
    return table(name, *(column(c) for c in columns))


class Queries:
    """Each statement built the first time it is needed, then reused: building one costs
    more than running it.  A text column's clause depends on its collation, read from the
    database once (``connectors.indexed``)."""

    def __init__(self, tables: Tables, skip_comment_types: tuple[str, ...]) -> None:
        self.t = tables
        self.skip = skip_comment_types
        self.collations: dict[str, Collation] | None = None
        self.built: dict[tuple[str, int], Any] = {}

    def collation(self, connection: Connection, table: TableClause, name: str) -> Collation:
        if self.collations is None:
            self.collations = {
                f"{each}.{column}": collation
                for each in (self.t.users.name, self.t.comments.name)
                for column, collation in column_collations(connection, each).items()
            }
        return self.collations.get(f"{table.name}.{name.lower()}", Collation())

    def accounts(self, collation: Collation, field: str, shape: int) -> Prepared:
        """Accounts whose ``field`` holds one of the spellings bound as ``spellings``."""
        key = (f"accounts {field} {collation}", shape)
        if key not in self.built:
            users = self.t.users
            match = any_spelling(users.c[field], collation, "spellings", shape)
            self.built[key] = Prepared(select(users).where(match).order_by(users.c.ID))
        built: Prepared = self.built[key]
        return built

    def meta(self) -> Prepared:
        """The profile rows of the account bound as ``user_id``."""
        key = ("meta", 0)
        if key not in self.built:
            meta = self.t.usermeta.c
            wanted = [*PROFILE_META, SESSION_META, LOCATION_KEY]
            self.built[key] = Prepared(
                select(meta.meta_key, meta.meta_value)
                .where(meta.user_id == bindparam("user_id"), meta.meta_key.in_(wanted))
                .order_by(meta.meta_key)
            )
        built: Prepared = self.built[key]
        return built

    def comments(self, collation: Collation | None, shape: int = 0) -> Paged:
        """Comments with their post, by the address bound as ``spellings`` (with a collation)
        or by the account bound as ``user_id`` (without); each row in ``Comment``'s order."""
        key = (f"comments {collation}", shape)
        if key not in self.built:
            c, p = self.t.comments.c, self.t.posts.c
            if collation is None:
                match = c.user_id == bindparam("user_id")
            else:
                match = any_spelling(c.comment_author_email, collation, "spellings", shape)
            query = (
                select(*c, p.post_title.label("post_title"), p.guid.label("post_guid"))
                .select_from(self.t.comments.outerjoin(self.t.posts, c.comment_post_ID == p.ID))
                .where(match)
            )
            if self.skip:
                query = query.where(c.comment_type.not_in(self.skip))
            self.built[key] = Paged.of(query, c.comment_ID)
        built: Paged = self.built[key]
        return built
