"""``wordpress``: website comments, accounts and login sessions from a WordPress database.

``connector`` finds and exports them; ``php`` reads the values WordPress stores
PHP-serialized.
"""

from connectors.wordpress.connector import (
    UNREADABLE_LOCATION,
    UNREADABLE_SESSIONS,
    WITHHELD,
    WordpressConnector,
    WordpressSettings,
)

__all__ = [
    "UNREADABLE_LOCATION",
    "UNREADABLE_SESSIONS",
    "WITHHELD",
    "WordpressConnector",
    "WordpressSettings",
]
