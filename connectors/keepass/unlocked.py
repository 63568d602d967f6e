"""The unlocked vault, kept for a bounded time: opening one costs its key derivation.

A KDBX file's key derivation (Argon2 or AES-KDF) is made to be slow, about 0.3 s with
pykeepass's defaults and a second with KeePassXC's; a request's identity expansion looks the
vault up once per round, and a burst of requests once per request. ``Unlocked`` keeps the
decrypted vault in memory only:

* for at most ``keep_seconds`` from the moment it was opened (a timer drops it then, whether
  or not another lookup comes), never longer, however often it is used;
* while the file (and the key file) on disk is the one that was opened: the same device,
  inode, size, modification and change times; a vault saved anew is opened again at the
  next lookup;
* until the connector is closed.

Nothing of it is ever written anywhere: the vault is opened read-only and held as the
parsed object, in this process's memory. ``keep_seconds = 0`` opens it for every lookup.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Fingerprint = tuple[tuple[int, int, int, int, int], ...]


class Unlocked:
    """The vault opened by ``opener``, kept while it is fresh (see the module's text)."""

    def __init__(
        self,
        opener: Callable[[], Any],
        files: Sequence[Path],
        keep_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self._files = tuple(files)
        self.keep_seconds = keep_seconds
        self.clock = clock
        self.opens = 0
        """How many times the vault was opened (decrypted): for the tests and metrics."""
        self._lock = threading.RLock()
        self._vault: Any = None
        self._fingerprint: Fingerprint | None = None
        self._until = 0.0
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Any:
        """The vault for one lookup, held locked against a concurrent open or drop."""
        self._lock.acquire()
        try:
            return self._current()
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        if self.keep_seconds <= 0:
            self._drop()
        self._lock.release()

    @property
    def held(self) -> bool:
        """Whether a decrypted vault is in memory now."""
        with self._lock:
            return self._vault is not None

    def forget(self) -> None:
        """Drop the decrypted vault now (the connector is closed, or its time is up)."""
        with self._lock:
            self._drop()

    def _current(self) -> Any:
        fingerprint = self._stat()
        if (
            self._vault is not None
            and fingerprint == self._fingerprint
            and self.clock() < self._until
        ):
            return self._vault
        self._drop()
        vault = self._opener()
        self.opens += 1
        if self.keep_seconds > 0 and fingerprint is not None:
            # The file is looked at before it is opened: a change while it was being read
            # makes the next lookup open it again, never keep a stale copy.
            self._vault, self._fingerprint = vault, fingerprint
            self._until = self.clock() + self.keep_seconds
            self._timer = threading.Timer(self.keep_seconds, self._expire, (vault,))
            self._timer.daemon = True
            self._timer.start()
        return vault

    def _expire(self, vault: Any) -> None:
        with self._lock:
            if self._vault is vault:  # not one opened since
                self._drop()

    def _drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._vault, self._fingerprint, self._timer = None, None, None

    def _stat(self) -> Fingerprint | None:
        """What identifies the files' content on disk; None if one cannot be looked at (the
        opener then reports why)."""
        found = []
        for path in self._files:
            try:
                st = os.stat(path)
            except OSError:
                return None
            found.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(found)
