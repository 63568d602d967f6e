"""Two people who look alike in the ``access_log`` connector: neither sees the other's lines
or values, and each still sees all their own.

An address in a field is decided on normalised text (``sarbot.addresses``): where it ends,
what it is, and whether it is the person's.  A user field matches only when it *is* the
person's identifier, and every field shown has other people's addresses withheld.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from connectors.access_log import (
    OTHER_ADDRESSES_WITHHELD,
    AccessLogConnector,
    AccessLogSettings,
)
from connectors.logmatch import Matcher
from sarbot.addresses import InvalidAddress, normalize_address
from sarbot.config import validate
from sarbot.connector import Identity, Record

ALICE = "alice@example.test"
WEB = {"paths": ["access.log"], "format": "combined", "label": "Portal"}
APP = {"paths": ["app.jsonl"], "format": "jsonl", "label": "App"}


def collect(base: Path, sources: list[dict[str, Any]], who: Identity, **extra: Any) -> list[Record]:
    settings = validate({"sources": sources, **extra}, AccessLogSettings, source="t", base_dir=base)
    assert isinstance(settings, AccessLogSettings)
    found = AccessLogConnector("logs", settings)
    try:
        return list(found.collect(who))
    finally:
        found.close()


def person(address: str) -> Identity:
    return Identity.verified(normalize_address(address))


def web_line(user: str = "-", query: str = "") -> str:
    target = f"/x?{query}" if query else "/x"
    return f'192.0.2.1 - {user} [01/Mar/2026:10:00:00 +0000] "GET {target} HTTP/1.1" 200 1 "-" "-"'


def json_line(user: str, **fields: Any) -> str:
    entry = {"time": "2026-03-01T10:00:00Z", "user": user, "ip": "192.0.2.1", "action": "login"}
    return json.dumps(entry | fields, ensure_ascii=False)


def write(base: Path, name: str, lines: list[str]) -> None:
    (base / name).write_bytes("".join(line + "\n" for line in lines).encode())


def lines_of(records: list[Record], name: str) -> list[int]:
    return [int(r.location.rsplit(" ", 1)[1]) for r in records if f"/{name} line" in r.location]


def dumped(records: list[Record]) -> str:
    return json.dumps(
        [[r.fields, r.notes, [y.value for y in r.yields]] for r in records], ensure_ascii=False
    )


# --- where an address ends: decided on the normalised text ----------------------------


def test_a_longer_mailbox_written_with_other_dots_is_not_hers(tmp_path: Path) -> None:
    """alice@example.test.evil is another mailbox, whichever full stop it is typed with, and
    maĺalice@example.test (with its accent decomposed) is another mailbox; alice gets none of
    their lines and keeps every spelling of her own; the other person never gets hers."""
    users = [
        "alice@example.test",  # 1: alice's
        "ALICE@Example.Test.",  # 2: alice's, in capitals with the root's dot
        "Alice <alice@example.test>",  # 3: alice's
        "alice@example.test.evil",  # 4: the other person's
        "alice@example.test\u3002evil",  # 5: theirs, with an ideographic full stop
        "alice@example.test\uff0eevil",  # 6: theirs, with a full-width full stop
        "alice@example.test\uff61evil",  # 7: theirs, with a half-width ideographic stop
        "mal\u0301alice@example.test",  # 8: maĺalice, decomposed: not alice
        "ma\u013aalice@example.test",  # 9: maĺalice, composed: not alice
    ]
    write(tmp_path, "app.jsonl", [json_line(u) for u in users])
    write(tmp_path, "access.log", [web_line(u.replace(" ", "")) for u in users])
    alice = collect(tmp_path, [APP, WEB], person(ALICE))
    assert lines_of(alice, "app.jsonl") == [1, 2, 3]
    assert lines_of(alice, "access.log") == [1, 2, 3]
    other = collect(tmp_path, [APP, WEB], person("alice@example.test.evil"))
    # The stops other than "." are not handed on by the byte search: see the report.
    assert 4 in lines_of(other, "app.jsonl") and 4 in lines_of(other, "access.log")
    assert not {1, 2, 3} & set(lines_of(other, "app.jsonl") + lines_of(other, "access.log"))


@pytest.mark.parametrize("use_grep", [True, False])
def test_a_decomposed_domain_is_hers_and_a_lookalike_is_not(tmp_path: Path, use_grep: bool) -> None:
    """alice@bücher.test is found written composed or decomposed (u and a combining
    diaeresis), as user and in a query; alice@bucher.test, another domain, never is hers."""
    nfd, nfc, plain = "alice@bu\u0308cher.test", "alice@b\u00fccher.test", "alice@bucher.test"
    write(tmp_path, "app.jsonl", [json_line(nfd), json_line(nfc), json_line(plain)])
    queries = ["alice%40bu%CC%88cher.test", "alice%40b%C3%BCcher.test", "alice%40bucher.test"]
    write(tmp_path, "access.log", [web_line(nfd), web_line(nfc), web_line(plain)])
    (tmp_path / "access.log").open("a").write(
        "".join(web_line(query=f"email={q}") + "\n" for q in queries)
    )
    umlaut = collect(tmp_path, [APP, WEB], person(nfc), use_grep=use_grep)
    assert lines_of(umlaut, "app.jsonl") == [1, 2]
    assert lines_of(umlaut, "access.log") == [1, 2, 4, 5]
    lookalike = collect(tmp_path, [APP, WEB], person(plain), use_grep=use_grep)
    assert lines_of(lookalike, "app.jsonl") == [3]
    assert lines_of(lookalike, "access.log") == [3, 6]


# Characters that end an address on either side, and what may stand around one.
DELIMITERS = ' \t<>(),;:"[]\\'  # never in an address: ASCII atext ({ | } ...) is
AFTER_ONLY = "!?/&'\u00bb\u3000"
EXTENDING = string.ascii_letters + string.digits + "-._" + "\u3002\uff0e\u00fc\u0301\u00ad\u2121"
LOCAL_EXTENDING = string.ascii_letters + string.digits + "._+=/%-" + "\u0301\u00e9\u013a\uff41"


@settings(max_examples=300, deadline=None)
@example("", "\u3002\u00ad", "", "")  # a root's dot, then a soft hyphen: still hers
@given(
    st.text(alphabet=LOCAL_EXTENDING, max_size=4),
    st.text(alphabet=EXTENDING, max_size=4),
    st.text(alphabet=DELIMITERS, max_size=2),
    st.text(alphabet=DELIMITERS + AFTER_ONLY, max_size=2),
)
def test_no_neighbour_makes_another_mailbox_hers(
    before: str, after: str, left: str, right: str
) -> None:
    """Whatever stands before or after alice's address, a different mailbox it makes (once
    normalised) never matches her, and a text that is another mailbox is withheld whole."""
    written = before + ALICE + after
    try:  # full stops of any kind ending it are the root's, as "." is to normalize_address
        other = normalize_address(written.rstrip(".\u3002\uff0e\uff61"))
    except InvalidAddress:
        other = ""
    assume(before or after)
    matcher = Matcher(person(ALICE))
    text = left + written + right
    if other == ALICE:  # only ignorable characters (a soft hyphen, a final dot) were added
        assert matcher.query((("q", text),))[0] is not None
        return
    assert matcher.user(written, "access_log:logs/App") is None
    assert matcher.query((("q", text),)) == (None, "")
    if other:
        bobs = Matcher(person(other))
        assert bobs.user(written, "access_log:logs/App") is not None
    if other and before[-1:] not in ("/", "?", "&", "="):  # after those, a URL's parameter
        assert ALICE not in (shown := matcher.without_other_addresses(text)), shown


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=DELIMITERS, max_size=3),
    st.text(alphabet=DELIMITERS + AFTER_ONLY, max_size=3),
    st.sampled_from(["", ".", "\u3002", "\uff0e"]),
    st.sampled_from([ALICE, "Alice@EXAMPLE.test", "alice@ex\u00adample.test"]),
)
def test_her_address_between_delimiters_is_found(
    left: str, right: str, stop: str, spelled: str
) -> None:
    """Her address, in any case, ended by a full stop of any kind, between delimiters, is
    hers in a query value, and is never withheld."""
    matcher = Matcher(person(ALICE))
    text = left + spelled + stop + right
    assert matcher.query((("q", text),))[0] is not None
    assert matcher.without_other_addresses(text) == text


# --- a user field is the person's identifier, not a mention of it ------------------------


def test_a_user_field_that_only_holds_her_address_is_not_hers(tmp_path: Path) -> None:
    """'carol on behalf of alice' is Carol's action from Carol's address: neither alice nor
    Carol gets it (the field is neither's identifier), and each gets every line of their own."""
    users = [
        "carol@other.test on behalf of alice@example.test",
        "alice@example.test (via carol@other.test)",
        '"carol@other.test" <alice@example.test>',
        "alice@example.test",
        "carol@other.test",
        "Carol <carol@other.test>",
    ]
    write(tmp_path, "app.jsonl", [json_line(u, ip=f"192.0.2.{n}") for n, u in enumerate(users)])
    alice = collect(tmp_path, [APP], person(ALICE))
    carol = collect(tmp_path, [APP], person("carol@other.test"))
    assert lines_of(alice, "app.jsonl") == [4]
    assert lines_of(carol, "app.jsonl") == [5, 6]
    assert "carol" not in dumped(alice) and "alice" not in dumped(carol)
    assert [y.value for r in alice for y in r.yields] == ["192.0.2.3"]


# --- other people's addresses in every field shown ------------------------------------


def test_other_addresses_are_withheld_in_every_field(tmp_path: Path) -> None:
    """A mail gateway's log: each person's lines name the other in the status, the time,
    the source address and a structured status; neither sees the other's address or name."""
    lines = [
        json_line(ALICE, action="send", status="rejected: mailbox bob@other.test is full"),
        json_line("bob@other.test", action="send", status=f"rejected: mailbox {ALICE} is full"),
        json_line(ALICE, time="queued for bob@other.test", ip="relay for bob@other.test"),
        json_line("bob@other.test", time=f"queued for {ALICE}", ip=f"relay for {ALICE}"),
        json_line(ALICE, status={"code": 403, "owner": "bob@other.test", "name": "Bob Jones"}),
        json_line("bob@other.test", status={"code": 403, "owner": ALICE, "name": "Alice Smith"}),
    ]
    write(tmp_path, "app.jsonl", lines)
    alice = collect(tmp_path, [APP], person(ALICE))
    bob = collect(tmp_path, [APP], person("bob@other.test"))
    assert lines_of(alice, "app.jsonl") == [1, 3, 5]
    assert lines_of(bob, "app.jsonl") == [2, 4, 6]
    for mine, theirs in ((alice, ("bob", "Bob Jones")), (bob, ("alice", "Alice Smith"))):
        text = dumped(mine)
        assert not any(value in text for value in theirs), text
        assert all(OTHER_ADDRESSES_WITHHELD in r.notes for r in mine[:2])
        assert json.loads(str(mine[2].fields["Status"]))["code"] == 403
        assert not mine[2].yields  # no outcome can be read in a structure: the IP is not offered


def test_encoded_quoted_and_routed_addresses_are_withheld_whole(tmp_path: Path) -> None:
    """Addresses written URL-encoded, quoted, with an address literal, or as VERP and SRS
    return paths are withheld whole, in each person's lines; their own stay shown."""
    forms = [
        "GET /api/users?email={}%40other.test",
        "forwarded to {}%2Bwork%40other.test",
        "forwarded to {}%252Bwork%2540other.test",
        "bounce for bounce-{}.jones=other.test@lists.example.test",
        "SRS0=HHHH=TT=other.test={}@forwarder.example.test",
        "mail to {}.jones/sales@other.test",
        'mail to "{} jones"@other.test',
        "share with {}@[198.51.100.7]",
        "mail to {}@other.test\u3002evil",
    ]
    own = ["GET /admin/users/{}@other.test", "mail to {}@other.test.", "mail to {}%40other.test"]
    pairs = (("amy", "bob"), ("bob", "amy"))
    lines = [json_line(f"{who}@other.test", action=f.format(them)) for f in forms
             for who, them in pairs]  # fmt: skip
    lines += [json_line(f"{who}@other.test", action=f.format(who)) for f in own
              for who, _ in pairs]  # fmt: skip
    write(tmp_path, "app.jsonl", lines)
    for who, them in pairs:
        records = collect(tmp_path, [APP], person(f"{who}@other.test"))
        assert len(records) == len(forms) + len(own)
        actions = [str(r.fields["Action"]) for r in records]
        assert not any(them in action for action in actions), actions
        assert all("(address withheld)" in action for action in actions[: len(forms)])
        assert actions[len(forms) :] == [f.format(who) for f in own]


# --- punctuation outside ASCII, and lines built to cost ---------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "\u201calice@example.test\u201d",
        "\u00abalice@example.test\u00bb",
        "\u300calice@example.test\u300d",
        "\u2014alice@example.test",
        "\u200balice@example.test",
        "alice@example.test\u00b7",
    ],
)
def test_her_address_in_quotation_marks_outside_ascii_is_found(written: str) -> None:
    """No local part holds punctuation outside ASCII: around her address it is a quotation
    mark, a dash or a space of width nought, and the address is hers; a look-alike in the
    same marks is still nobody's."""
    matcher = Matcher(person(ALICE))
    assert matcher.query((("q", written),))[0] is not None
    malice = written.replace("alice@", "malice@")
    assert matcher.query((("q", malice),))[0] is None
    assert Matcher(person("bob@other.test")).query((("q", written),))[0] is None


def test_a_long_path_before_an_address_keeps_the_lookup_small() -> None:
    """An address after thousands of ``/``: only the pieces a local part could start in are
    looked up (one of 64 characters at most), and few are kept for the lookup."""
    matcher = Matcher(person(ALICE))
    path = "/a" * 8000 + "/bob@other.test"
    assert matcher.without_other_addresses(path) == "/a" * 8000 + "/(address withheld)"
    assert len(matcher._addresses) < 40
    assert matcher.without_other_addresses("/a" * 8000 + "/alice@example.test").endswith(ALICE)


def test_spaces_before_the_address_are_part_of_the_name_form() -> None:
    """``Name <address>`` with any spaces before ``<`` is hers (the form's pattern takes them
    in one alternative only, so that a field of spaces is refused in linear time); a field
    of spaces alone names nobody."""
    matcher = Matcher(person(ALICE))
    assert matcher.user("x" + " " * 20000 + "y", "access_log:logs/App") is None
    assert matcher.user("Alice " + " " * 200 + f"<{ALICE}>", "access_log:logs/App") is not None
