"""Waiting for mail without IDLE, on the real Dovecot: a NOOP every ``check_interval``, and
the wait ends as soon as the server reports new mail."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sarbot.app import App
from sarbot.mail.mailbox import Mailbox
from sarbot.testing import Correspondent, MailServer
from sarbot.testing import config as testconfig
from tests.conftest import unique

pytestmark = pytest.mark.mailstack
LONG_POLL = 120.0
"""A poll no test waits out: a wait that ends before it ended because mail came."""


@pytest.fixture
def support(mailstack: MailServer) -> Correspondent:
    return Correspondent(mailstack, unique("support", "redtrain.test"))


@pytest.fixture
def waiter() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@contextmanager
def polling(tmp_path: Path, server: MailServer, support: str, **imap: Any) -> Iterator[Mailbox]:
    """The support mailbox, connected, with IDLE turned off (unless ``imap`` says otherwise)
    and ``imap`` settings; closed when the block ends."""
    config = testconfig.write_config(
        tmp_path / "config.toml",
        support,
        server=server,
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        imap={"use_idle": False, **imap},
    )
    box = Mailbox(App.load(config).settings.imap)
    box.connect()
    try:
        yield box
    finally:
        box.close()


def count_noops(box: Mailbox, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one for each NOOP the real client sends."""
    sent: list[int] = []
    client = box.client
    assert client is not None
    real = client.noop

    def counted() -> Any:
        sent.append(1)
        return real()

    monkeypatch.setattr(client, "noop", counted)
    return sent


class TestWaitWithoutIdle:
    def test_new_mail_ends_the_wait_long_before_the_poll_is_over(
        self,
        tmp_path: Path,
        mailstack: MailServer,
        support: Correspondent,
        waiter: ThreadPoolExecutor,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Mail that comes while sarbot waits is reported by a NOOP, long before the poll
        is over, and the wait says mail came."""
        with polling(
            tmp_path, mailstack, support.address, check_interval=0.1, poll_interval=LONG_POLL
        ) as box:
            noops = count_noops(box, monkeypatch)
            stop = threading.Event()
            came: Future[bool] = waiter.submit(box.wait_for_mail, LONG_POLL, stop)
            support.send(support.address, "GDPR DATA REQUEST")
            try:
                assert came.result(timeout=LONG_POLL / 2) is True
            finally:
                stop.set()
            assert len(noops) >= 1
            assert [h.uid for h in box.new_headers(0)] == [1]

    def test_a_quiet_mailbox_is_asked_each_check_until_the_poll_is_over(
        self,
        tmp_path: Path,
        mailstack: MailServer,
        support: Correspondent,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """No mail: NOOPs every check_interval, and the wait ends with the poll, saying none
        came."""
        with polling(tmp_path, mailstack, support.address, check_interval=0.1) as box:
            noops = count_noops(box, monkeypatch)
            began = time.monotonic()
            assert box.wait_for_mail(1.0, threading.Event()) is False
            assert time.monotonic() - began >= 1.0  # the whole poll, never less
            assert len(noops) >= 2  # ten checks in a quiet second; at least two on any machine

    def test_without_a_check_interval_the_server_is_asked_once_a_poll(
        self,
        tmp_path: Path,
        mailstack: MailServer,
        support: Correspondent,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The default: one NOOP when the poll is over, and a cycle after it, as before."""
        with polling(tmp_path, mailstack, support.address) as box:
            noops = count_noops(box, monkeypatch)
            assert box.wait_for_mail(0.3, threading.Event()) is False
            assert len(noops) == 1

    def test_a_stop_ends_the_wait_without_asking_the_server(
        self,
        tmp_path: Path,
        mailstack: MailServer,
        support: Correspondent,
        waiter: ThreadPoolExecutor,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """SIGTERM while waiting: the wait ends, having reported no mail."""
        with polling(
            tmp_path,
            mailstack,
            support.address,
            check_interval=LONG_POLL / 4,
            poll_interval=LONG_POLL,
        ) as box:
            noops = count_noops(box, monkeypatch)
            stop = threading.Event()
            came = waiter.submit(box.wait_for_mail, LONG_POLL, stop)
            time.sleep(0.2)  # most likely waiting by now; stopped before it began, it ends too
            stop.set()
            assert came.result(timeout=LONG_POLL / 2) is False
            assert noops == []


class TestMailAnnouncedToAnotherCommand:
    @pytest.mark.parametrize("use_idle", [False, True], ids=["checks", "idle"])
    def test_mail_that_came_during_the_search_ends_the_next_wait(
        self,
        tmp_path: Path,
        mailstack: MailServer,
        support: Correspondent,
        waiter: ThreadPoolExecutor,
        monkeypatch: pytest.MonkeyPatch,
        use_idle: bool,
    ) -> None:
        """Mail delivered between the cycle's NOOP and its SEARCH is not in the search, and
        Dovecot announces it once, at the end of the SEARCH; neither a NOOP nor IDLE tells of
        it again.  The next wait ends at once, so the next cycle takes it, instead of waiting
        out the poll."""
        with polling(
            tmp_path,
            mailstack,
            support.address,
            use_idle=use_idle,
            check_interval=0.1,
            poll_interval=LONG_POLL,
        ) as box:
            client = box.client
            assert client is not None
            search = client.search

            def delivered_first(*args: Any, **kwargs: Any) -> Any:
                support.append(REQUEST)  # another session: in the mailbox when it returns
                return search(*args, **kwargs)

            monkeypatch.setattr(client, "search", delivered_first)
            assert box.new_headers(0) == []  # the search did not see it
            monkeypatch.setattr(client, "search", search)
            came = waiter.submit(box.wait_for_mail, LONG_POLL, threading.Event())
            assert came.result(timeout=LONG_POLL / 2) is True
            assert [h.uid for h in box.new_headers(0)] == [1]

    def test_a_cycle_that_finds_nothing_new_leaves_the_wait_to_wait(
        self, tmp_path: Path, mailstack: MailServer, support: Correspondent
    ) -> None:
        """What the cycle's own NOOP was told of is in its search: it does not end the next
        wait early (else sarbot would cycle without end)."""
        support.append(REQUEST)
        with polling(tmp_path, mailstack, support.address, check_interval=0.1) as box:
            support.append(REQUEST)  # after the SELECT: announced to the cycle's NOOP
            assert [h.uid for h in box.new_headers(0)] == [1, 2]
            assert box.wait_for_mail(0.5, threading.Event()) is False


REQUEST = (
    b"From: alice@example.test\r\nTo: support@redtrain.test\r\n"
    b"Subject: GDPR DATA REQUEST\r\nMessage-ID: <wait@example.test>\r\n\r\nMy data, please.\r\n"
)
