"""Hostile mail: the email adapter under property-based fuzzing (hypothesis).

The property, for ANY bytes a mailbox can hand us:
- `parse` returns a `ParsedMail` or raises `UnparseableMail` (the documented refusal),
  never another exception;
- `normalise` (what the worker calls) publishes, ignores, or dead-letters with the reason
  `UnparseableMail`. `normalise` also catches every other exception and dead-letters it,
  so the worker survives a parser bug; that safety net must never be what handled a mail
  here, so a dead letter of any other type fails the test;
- what is published is a valid `InboundMessage` within the documented limits (one Kafka
  record, capped fields, attachments over the limit omitted);
- no input takes more than a few seconds (the hypothesis deadline) or more memory than a
  fixed multiple of its own size (tracemalloc's peak).

Inputs: the real corpus in tests/fixtures/email mutated (byte flips, truncation, duplicated
headers, bogus charsets, huge headers, deep multipart nesting, broken boundaries, RFC 2047
and RFC 2231 garbage), mail generated from scratch, and plain random bytes. Runs are
derandomized (the same cases on every run and in CI) and print how many cases each target
tried.
"""

from __future__ import annotations

import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deskstream.events import InboundMessage
from deskstream_ingest_email.classify import ClassifyContext
from deskstream_ingest_email.normalise import (
    MAX_FIELD_CHARS,
    MAX_RECORD_BYTES,
    DeadLetter,
    Ignore,
    MailSource,
    NormaliseConfig,
    Outcome,
    Publish,
    normalise,
)
from deskstream_ingest_email.settings import Mailbox
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

CORPUS_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "email"
# The big attachment mail (430 kB) is left out: every mutation of it costs a parse of
# 430 kB, and it has nothing structural the others lack. It is parsed once below.
CORPUS = {
    p.name: p.read_bytes()
    for p in sorted(CORPUS_DIR.glob("*.eml"))
    if p.stat().st_size < 100_000 and p.stat().st_size > 0
}
LIMIT = 4096  # small, so that mutated attachments cross it both ways
MAILBOX = Mailbox(
    host="imap.example.com",
    port=993,
    ssl=True,
    user="desk",
    folder="INBOX",
    password=SecretStr("not-used-by-the-adapter"),
    address="servicedesk@example.com",
)
CONFIG = NormaliseConfig(
    attachment_limit=LIMIT,
    classify=ClassifyContext(own_addresses=frozenset({"servicedesk@example.com"})),
)
SOURCE = MailSource(
    MAILBOX, 1709500000, 42, datetime(2024, 3, 6, 12, tzinfo=UTC), datetime.now(UTC)
)
# Memory: the stdlib parser keeps several copies of a mail (raw lines, the message tree,
# decoded parts, texts), so peak use is a multiple of the input; past this multiple plus a
# fixed allowance, something grows with the input faster than it should.
MEMORY_FACTOR = 60
MEMORY_FIXED = 8 * 1024 * 1024

# A loaded two-core CI machine: typical cases take milliseconds; a case that takes
# seconds is a blow-up worth failing on, not noise.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


# --- the property ----------------------------------------------------------------------


def check_mail(raw: bytes) -> Outcome:
    """The whole property for one input; returns the outcome for the caller's tally."""
    tracemalloc.start()
    try:
        outcome = normalise(raw, SOURCE, CONFIG)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * len(raw) + MEMORY_FIXED, (
        f"{peak} bytes at peak for a {len(raw)}-byte mail"
    )
    if isinstance(outcome, DeadLetter):
        # Only parse's documented refusal; any other type is a bug that the worker's
        # safety net (normalise catches everything) happened to catch.
        assert outcome.error_type == "UnparseableMail", outcome
        assert outcome.event_id == SOURCE.fallback_event_id
    if isinstance(outcome, Ignore):
        assert outcome.event_id
    if isinstance(outcome, Publish):
        check_published(outcome.message)
    return outcome


def check_published(msg: InboundMessage) -> None:
    wire = msg.model_dump_json().encode()
    assert len(wire) <= MAX_RECORD_BYTES, len(wire)
    # What the router will read back is the same valid message.
    assert InboundMessage.model_validate_json(wire) == msg
    assert len(msg.text) <= MAX_FIELD_CHARS
    assert msg.full_text is None or len(msg.full_text) <= MAX_FIELD_CHARS
    assert msg.html is None or len(msg.html) <= MAX_FIELD_CHARS
    assert len(msg.attachments) <= 200
    assert "@" in msg.sender.id
    assert msg.raw_ref == SOURCE.raw_ref
    for att in msg.attachments:
        assert att.omitted == (att.size > LIMIT), att
        assert (att.sha256 is None) == att.omitted, att


# --- mutations of real mail ------------------------------------------------------------

BOGUS_CHARSETS = [
    "x-unknown",
    "utf-7",
    "utf-16",
    "utf-32-be",
    "",
    '"',
    "utf-8'en'",
    "\x00",
    "base64",  # codecs that exist but are no text encodings
    "rot13",
    "hex",
    "zlib",
    "uu",
    "bz2",
    "quopri",
    "idna",
    "punycode",
    "unicode_escape",
    "raw_unicode_escape",
    "undefined",
    "mbcs",
    "cp65001",
    "iso-2022-jp-ext",
    "windows-1252" * 50,
]
ENCODED_WORD_GARBAGE = [
    "=?utf-8?B?####?=",
    "=?utf-8?B?YWJj?==?utf-8?B?",
    "=?bogus?Q?hello_world?=",
    "=?base64?B?aGVsbG8=?=",
    "=?rot13?Q?uryyb?=",
    "=?utf-8*en?Q?caf=C3=A9?=",
    "=?utf-8?X?abc?=",
    "=?utf-8?Q?=FF=FE=00?=",
    "=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=",
    "=?utf-16?B?2D3eAA==?=",
    "=?" + "a" * 300 + "?Q?x?=",
    "=?utf-8?Q?" + "=E2=82" * 200 + "?=",
    "=?=?=?=?=?",
]
RFC2231_GARBAGE = [
    "filename*=utf-8''%E2%28%A1.txt",
    "filename*=bogus'en'%FF%FE.txt",
    "filename*=base64''aGVsbG8=",
    "filename*0*=utf-8''a%; filename*1*=%ZZ; filename*5=b",
    "filename*=''",
    "filename*0=a; filename*0=b; filename*99999999=c",
    "filename*=utf-8'" + "x" * 500 + "'y",
    'name="=?utf-8?B?####?="; filename="=?rot13?Q?n?="',
    "filename*=%",
    "filename*=utf-8''" + "%41" * 3000,
]
HEADER_NAMES = [
    "From",
    "Sender",
    "To",
    "Subject",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Date",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "Content-Language",
    "MIME-Version",
    "Auto-Submitted",
    "Precedence",
    "List-Id",
    "X-Failed-Recipients",
    "Return-Path",
]
_HEADER_LINE = re.compile(rb"^[A-Za-z0-9-]+:.*(?:\r?\n[ \t].*)*", re.MULTILINE)
_CHARSET = re.compile(rb"charset\s*=\s*\"?[^\";\s]*\"?", re.IGNORECASE)
_BOUNDARY = re.compile(rb"boundary\s*=\s*\"?([^\";\s]+)\"?", re.IGNORECASE)
_SUBJECT_OR_FROM = re.compile(rb"^(Subject|From|To|Sender):[^\r\n]*", re.MULTILINE | re.I)
_DISPOSITION = re.compile(rb"^(Content-(?:Disposition|Type):[^\r\n]*)", re.MULTILINE | re.I)


def _head_end(raw: bytes) -> int:
    found = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(found) if found else len(raw)


Mutation = Callable[[st.DrawFn, bytes], bytes]


def flip_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    if not raw:
        return raw
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 16))):
        at = draw(st.integers(0, len(out) - 1))
        out[at] ^= draw(st.integers(1, 255))
    return bytes(out)


def truncate(draw: st.DrawFn, raw: bytes) -> bytes:
    return raw[: draw(st.integers(0, len(raw)))]


def duplicate_headers(draw: st.DrawFn, raw: bytes) -> bytes:
    head = raw[: _head_end(raw)]
    lines: list[bytes] = _HEADER_LINE.findall(head)
    if not lines:
        return raw
    line: bytes = draw(st.sampled_from(lines))
    copies = draw(st.sampled_from([1, 2, 10, 500]))
    nl = b"\r\n" if b"\r\n" in head else b"\n"
    return line + nl + (line + nl) * copies + raw


def bogus_charset(draw: st.DrawFn, raw: bytes) -> bytes:
    label = draw(st.sampled_from(BOGUS_CHARSETS)).encode("latin-1")
    if not _CHARSET.search(raw):
        return raw.replace(
            b"Content-Type: text/plain", b"Content-Type: text/plain; charset=" + label
        )
    every = draw(st.booleans())
    return _CHARSET.sub(lambda _: b'charset="' + label + b'"', raw, count=0 if every else 1)


def huge_header(draw: st.DrawFn, raw: bytes) -> bytes:
    name = draw(st.sampled_from(HEADER_NAMES)).encode()
    size = draw(st.sampled_from([1_000, 4_000, 20_000, 200_000]))
    unit = draw(
        st.sampled_from([b"a", b"<x@y> ", b"=?utf-8?Q?=C3=A9?= ", b"\t\r\n ", b"\xff", b"(", b'"'])
    )
    value = (unit * (size // len(unit) + 1))[:size]
    nl = b"\r\n" if b"\r\n" in raw[:2000] else b"\n"
    return name + b": " + value + nl + raw


def many_headers(draw: st.DrawFn, raw: bytes) -> bytes:
    count = draw(st.sampled_from([100, 2_000, 10_000]))
    name = draw(st.sampled_from([*HEADER_NAMES, "X-Spam"])).encode()
    return (name + b": x\n") * count + raw


def deep_nesting(draw: st.DrawFn, raw: bytes) -> bytes:
    depth = draw(st.sampled_from([2, 10, 49, 60, 200, 600]))
    head_end = _head_end(raw)
    head = _BOUNDARY.sub(b"x-gone=1", raw[:head_end])
    head = re.sub(rb"(?im)^content-type:.*(\r?\n[ \t].*)*$", b"X-Was-Content-Type: 1", head)
    if draw(st.booleans()):  # mails attached to mails attached to mails ...
        inner = b"Content-Type: message/rfc822\n\nFrom: x@example.com\n" * depth
        return head + b"\n" + inner + b"Content-Type: text/plain\n\ninnermost\n"
    parts = [b"Content-Type: multipart/mixed; boundary=b0\n\n"]
    for level in range(1, depth):
        parts.append(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (level - 1, level))
    parts.append(b"--b%d\nContent-Type: text/plain\n\ninnermost\n" % (depth - 1))
    if draw(st.booleans()):
        parts += [b"--b%d--\n" % level for level in reversed(range(depth))]
    return head + b"\n" + b"".join(parts)


def broken_boundary(draw: st.DrawFn, raw: bytes) -> bytes:
    match = _BOUNDARY.search(raw)
    if match is None:
        return raw
    boundary = match.group(1)
    how = draw(
        st.sampled_from(["drop-close", "rename-body", "rename-header", "empty", "prefix", "tail"])
    )
    if how == "drop-close":
        return raw.replace(b"--" + boundary + b"--", b"")
    if how == "rename-body":
        body = raw[match.end() :].replace(b"--" + boundary, b"--" + boundary[::-1])
        return raw[: match.end()] + body
    if how == "rename-header":
        return raw[: match.start(1)] + b"other" + raw[match.end(1) :]
    if how == "empty":
        return raw[: match.start()] + b'boundary=""' + raw[match.end() :]
    if how == "prefix":  # a boundary that is a prefix of the real one
        return raw[: match.start(1)] + boundary[:1] + raw[match.end(1) :]
    return raw + b"\n--" + boundary + b"\nContent-Type: text/plain\n\ntrailing junk"


def rfc2047_garbage(draw: st.DrawFn, raw: bytes) -> bytes:
    word = draw(st.sampled_from(ENCODED_WORD_GARBAGE)).encode()
    if not _SUBJECT_OR_FROM.search(raw):
        return b"Subject: " + word + b"\n" + raw
    return _SUBJECT_OR_FROM.sub(lambda m: m.group(1) + b": " + word, raw, count=1)


def rfc2231_garbage(draw: st.DrawFn, raw: bytes) -> bytes:
    param = draw(st.sampled_from(RFC2231_GARBAGE)).encode()
    if not _DISPOSITION.search(raw):
        return b"Content-Disposition: attachment; " + param + b"\n" + raw
    return _DISPOSITION.sub(lambda m: m.group(1) + b"; " + param, raw)


MUTATIONS: dict[str, Mutation] = {
    "flip": flip_bytes,
    "truncate": truncate,
    "duplicate-headers": duplicate_headers,
    "bogus-charset": bogus_charset,
    "huge-header": huge_header,
    "many-headers": many_headers,
    "deep-nesting": deep_nesting,
    "broken-boundary": broken_boundary,
    "rfc2047": rfc2047_garbage,
    "rfc2231": rfc2231_garbage,
}


@st.composite
def mutated_mail(draw: st.DrawFn) -> bytes:
    raw = CORPUS[draw(st.sampled_from(sorted(CORPUS)))]
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3)):
        raw = MUTATIONS[name](draw, raw)
    return raw


# --- mail made from scratch ------------------------------------------------------------

_ATOMS = [
    "alice@example.com",
    "Bob <bob@example.org>",
    '"Q, R" <q@r.example>, <>',
    "<a@b> <c@d>",
    "text/plain; charset=utf-8",
    "text/html; charset=rot13",
    "multipart/mixed; boundary=zz",
    "multipart/alternative",
    "message/rfc822",
    "message/delivery-status",
    "multipart/report; report-type=delivery-status; boundary=zz",
    "application/octet-stream; name*=utf-8''%FF",
    "base64",
    "quoted-printable",
    "x-uuencode",
    "8bit",
    "attachment; filename=a.txt",
    "inline",
    "auto-replied",
    "bulk",
    "Tue, 5 Mar 2024 09:41:12 +0000",
    "Tue, 31 Feb 10000 99:99:99 +9999",
    "[#DS-ABCDEFGH]",
    *ENCODED_WORD_GARBAGE,
    *RFC2231_GARBAGE,
]


def _value() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(_ATOMS),
        st.text(max_size=80),
        st.lists(st.sampled_from(_ATOMS), min_size=1, max_size=4).map("; ".join),
    )


@st.composite
def generated_part(draw: st.DrawFn, depth: int = 0) -> str:
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), _value()), max_size=6))
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    if depth < 3 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["zz", "z", "", "--", "a b", "x" * 80]))
        kind = draw(st.sampled_from(["mixed", "alternative", "related", "report", "digest"]))
        children = draw(st.lists(generated_part(depth + 1), max_size=4))
        body = "".join(f"--{boundary}\n{child}\n" for child in children)
        if draw(st.booleans()):
            body += f"--{boundary}--\n"
        head += f'Content-Type: multipart/{kind}; boundary="{boundary}"\n'
    else:
        body = draw(st.one_of(st.text(max_size=300), st.sampled_from(["=E2=82", "QUJD=\n=", ""])))
    return f"{head}\n{body}"


@st.composite
def generated_mail(draw: st.DrawFn) -> bytes:
    sender = draw(st.sampled_from(["From: maria@example.com\n", "Sender: x@y.z\n", "", "From:\n"]))
    text = sender + draw(generated_part())
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return text.replace("\n", newline).encode(encoding, "replace")


# --- the tests -------------------------------------------------------------------------


def fuzz(strategy: st.SearchStrategy[bytes], target: str, cases: int) -> Counter[str]:
    """Run the property over `cases` inputs of `strategy`; print and return the outcomes."""
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=cases)
    @given(strategy)
    def run(raw: bytes) -> None:
        outcomes[type(check_mail(raw)).__name__] += 1

    run()
    print(f"\nemail fuzz, {target}: {sum(outcomes.values())} cases, {dict(outcomes)}")
    return outcomes


@pytest.mark.timeout(900)
def test_mutated_corpus_mail_is_parsed_ignored_or_refused() -> None:
    outcomes = fuzz(mutated_mail(), "mutated corpus", 2000)
    assert sum(outcomes.values()) >= 2000
    # Mutations that only ever made dead letters (or only tickets) would test little.
    assert {"Publish", "Ignore", "DeadLetter"} <= set(outcomes), outcomes


@pytest.mark.timeout(600)
def test_generated_mime_is_parsed_ignored_or_refused() -> None:
    outcomes = fuzz(generated_mail(), "generated MIME", 1000)
    assert sum(outcomes.values()) >= 1000
    assert {"Publish", "DeadLetter"} <= set(outcomes), outcomes


@pytest.mark.timeout(300)
def test_random_bytes_are_parsed_ignored_or_refused() -> None:
    # Bare bytes, and bytes after a sender (which get past the first refusal).
    sender = st.sampled_from([b"", b"From: a@example.com\n", b"From: a@example.com\n\n"])
    raw = st.tuples(sender, st.binary(max_size=4096)).map(b"".join)
    outcomes = fuzz(raw, "random bytes", 500)
    assert sum(outcomes.values()) >= 500


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_corpus_mail_meets_the_property_unmutated(name: str) -> None:
    check_mail(CORPUS[name])


def test_the_big_attachment_mail_meets_the_property() -> None:
    raw = (CORPUS_DIR / "07-attachment-over-size-limit-outlook-zip.eml").read_bytes()
    outcome = check_mail(raw)
    assert isinstance(outcome, Publish)
    assert any(a.omitted for a in outcome.message.attachments)


# --- what the fuzzing found, kept as plain examples --------------------------------------

_PLAIN = b"From: Maria <maria@example.com>\nSubject: VPN\nMessage-ID: <f1@example.com>\n"
FOUND: dict[str, tuple[bytes, str]] = {
    # A charset naming a codec that is no text encoding, refusing errors=replace, or a NUL.
    **{
        f"charset {label!r}": (
            _PLAIN + b"Content-Type: text/plain; charset=" + label + b"\n\nthe VPN drops\n",
            "Publish",
        )
        for label in (b"rot13", b"base64", b"idna", b'"\x00"')
    },
    # CPython's get_body() walked the characters of a multipart/related without parts.
    "related without its parts": (
        _PLAIN + b'Content-Type: multipart/mixed; boundary="zz"\n\n--zz\n'
        b'Content-Type: multipart/related; boundary="zz"\n\n\n',
        "Publish",
    ),
    # A raw Latin-1 display name was a lone surrogate, which no InboundMessage takes.
    "8-bit display name": (
        b"From: M\xfcller <mueller@example.com>\nSubject: Dr\xfccker\n\nkaputt\n",
        "Publish",
    ),
    # get_payload() decodes 8-bit text in the declared charset and failed on 'undefined'.
    "undefined charset of a broken multipart": (
        _PLAIN + b"Content-Type: multipart/mixed; boundary=zz; charset=undefined\n\n\xff\xfe\n",
        "Publish",
    ),
    # Minutes of CPU or a blown stack for one mail, before the limits.
    "200 kB From without @ (quadratic regex)": (
        b"From: " + b"a" * 200_000 + b"\nSender: s@example.com\n\nhi\n",
        "Publish",
    ),
    "16 kB of quotes in a Content-Type": (
        _PLAIN + b'Content-Type: text/plain; name="' + b'"' * 16_000 + b"\n\nhi\n",
        "Publish",
    ),
    "600 nested comments in a Content-Type": (
        _PLAIN
        + b"Content-Type: text/plain; charset=utf-8 "
        + b"(" * 600
        + b")" * 600
        + b"\n\nhi\n",
        "Publish",
    ),
    "1500 nested multiparts": (
        _PLAIN
        + b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(1500)
        ),
        "UnparseableMail",
    ),
    "20000 header fields": (_PLAIN + b"X-Spam: x\n" * 20_000 + b"\nhi\n", "UnparseableMail"),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_what_the_fuzzing_found_is_handled_quickly(name: str) -> None:
    raw, expected = FOUND[name]
    started = time.monotonic()
    outcome = check_mail(raw)
    # Here 0.01-1 s each (before the fixes: minutes, or a crash); loaded CI gets slack.
    assert time.monotonic() - started < 10, "one mail must not take many seconds"
    if expected == "Publish":
        assert isinstance(outcome, Publish), outcome
    else:
        assert isinstance(outcome, DeadLetter), outcome
        assert outcome.error_type == expected


def test_raw_8bit_names_are_read_as_utf8_or_windows_1252() -> None:
    outcome = check_mail(FOUND["8-bit display name"][0])
    assert isinstance(outcome, Publish)
    assert outcome.message.sender.display_name == "Müller"
    utf8 = b"From: M\xc3\xbcller <mueller@example.com>\n\nkaputt\n"
    outcome = check_mail(utf8)
    assert isinstance(outcome, Publish)
    assert outcome.message.sender.display_name == "Müller"
