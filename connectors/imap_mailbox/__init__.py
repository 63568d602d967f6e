"""``imap_mailbox``: a person's mail kept in internal mailboxes (contact-form copies, letters).

``connector`` searches the folders and exports messages; ``headers`` reads who
a message is from and to; ``content`` its text and attachments.
"""

from connectors.imap_mailbox.connector import (
    CATEGORY,
    PART_UNREADABLE_NOTE,
    SAR_REFERENCE_RE,
    UNREADABLE_NOTE,
    ImapMailboxConnector,
    ImapMailboxSettings,
    imap_search_criteria,
)

__all__ = [
    "CATEGORY",
    "PART_UNREADABLE_NOTE",
    "SAR_REFERENCE_RE",
    "UNREADABLE_NOTE",
    "ImapMailboxConnector",
    "ImapMailboxSettings",
    "imap_search_criteria",
]
