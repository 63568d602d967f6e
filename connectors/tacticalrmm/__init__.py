"""``tacticalrmm``: the computers a person used, read from a Tactical RMM database.

``connector`` finds and exports computers; ``people`` links a computer to the
person through its users and withholds everyone else; ``inventory`` reads its
hardware, disks and software.
"""

from connectors.tacticalrmm.connector import (
    CATEGORY,
    LAST_USER_NOTE,
    NOW_WITHHELD,
    OTHERS_NOTE,
    WITHHELD_USER,
    TacticalRmmConnector,
    TacticalRmmSettings,
)
from connectors.tacticalrmm.inventory import WITHHELD_DEVICE
from connectors.tacticalrmm.people import WITHHELD_TEXT

__all__ = [
    "CATEGORY",
    "LAST_USER_NOTE",
    "NOW_WITHHELD",
    "OTHERS_NOTE",
    "WITHHELD_DEVICE",
    "WITHHELD_TEXT",
    "WITHHELD_USER",
    "TacticalRmmConnector",
    "TacticalRmmSettings",
]
