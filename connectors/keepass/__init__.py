"""``keepass``: the entries of a KeePass vault that belong to a person, and those that mention them.

``connector`` finds and exports entries; ``fields`` decides which fields hold a
secret; ``mentions`` recognises an entry that only mentions the person.
"""

from connectors.keepass.connector import CATEGORY, KeepassConnector, KeepassSettings
from connectors.keepass.fields import OTP_HELD, PASSWORD_HELD, SECRET_HELD
from connectors.keepass.mentions import MENTION_CATEGORY, MENTION_ONLY_NOTE

__all__ = [
    "CATEGORY",
    "MENTION_CATEGORY",
    "MENTION_ONLY_NOTE",
    "OTP_HELD",
    "PASSWORD_HELD",
    "SECRET_HELD",
    "KeepassConnector",
    "KeepassSettings",
]
