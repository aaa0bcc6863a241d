"""MIME parsing: the bytes of one mail -> `ParsedMail` (headers, bodies, attachment metadata).

Pure (no I/O), so every captured mail can be checked in a unit test. Built on the standard
library's `email` with `policy.default` (fields cut to a limit); real mail is often broken,
so every step has a fallback: an unknown charset decodes with replacement characters, a
broken MIME boundary falls back to the raw payload, an unparseable Date is left to the
caller. Mail without any usable header (no sender) is refused, with `UnparseableMail`; so
is mail nested deeper or in more parts than the limits below.
"""

from __future__ import annotations

import codecs
import contextlib
import email
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage, Message
from typing import Any

from deskstream.events import Attachment

from deskstream_ingest_email.html_text import html_to_text
from deskstream_ingest_email.quotes import split_reply

# Python codecs that turn escapes in the bytes into other characters: no mail charset, and
# a sender could use them to make a body read differently than it was written.
_NOT_MAIL_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "punycode"})

# Labels that mail clients write but whose registered codec is narrower than what they
# mean (the WHATWG Encoding Standard maps them the same way browsers do).
_CHARSET_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "tis-620": "cp874",
}
_MSGID = re.compile(r"<([^<>]+)>")
# The look-behind starts a match only where a word starts: without it a long run with no
# `@` is rescanned from each of its characters (quadratic: a 200 kB header took 90 s).
_ANGLE_LESS = re.compile(r"(?<![^\s<>])[^\s<>]+@[^\s<>]+")
_WS = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Limits on what the standard library is asked to parse. Its structured header parsers take
# time and memory quadratic in a field's length (4 kB of unbalanced quotes in a From: 14 MB
# and 0.4 s; 16 kB in a Content-Type: 3-12 s; 200 kB: minutes), and it walks nested parts
# by recursion. Longer fields are cut to these lengths before they are parsed
# (`_BoundedPolicy`); more nesting, parts or fields refuse the mail. Real mail stays below
# them: a From or Content-* value is short even with an RFC 2231 file name, and the
# Message-ID lists of a long thread keep their root, which comes first.
MAX_FIELD_CHARS = 1_024  # From, Sender, To, ... and every field not named below
MAX_MIME_FIELD_CHARS = 2_048  # Content-Type, Content-Disposition, ... of any part
MAX_LONG_FIELD_CHARS = 8_192  # the fields below (~100 Message-IDs)
_LONG_FIELDS = frozenset({"references", "in-reply-to", "message-id", "subject"})
MAX_DEPTH = 50  # multiparts and attached mails inside each other
MAX_PARTS = 500
MAX_FIELDS = 1_000  # header fields of one part (each lookup reads them all)
MAX_COMMENT_DEPTH = 32  # (comments (inside comments)) of a header field


def field_limit(name: str) -> int:
    key = name.lower()
    if key.startswith("content-"):
        return MAX_MIME_FIELD_CHARS
    return MAX_LONG_FIELD_CHARS if key in _LONG_FIELDS else MAX_FIELD_CHARS


class _BoundedPolicy(email.policy.EmailPolicy):
    """`policy.default`, but a field is cut to its limit before it is parsed.

    Every parse goes through here, the parser's own (it reads Content-Type while it splits
    the parts) included, so no field of any length reaches the quadratic parsers.
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        limit = field_limit(name)
        value = value[:limit] if len(value) > limit else value
        if value.count("(") > MAX_COMMENT_DEPTH and _comment_depth(value) > MAX_COMMENT_DEPTH:
            # The parsers recurse once per nested comment: 300 levels exhaust the stack.
            # Comments carry nothing the desk reads, so such a field is read without them.
            value = value.replace("(", " ").replace(")", " ")
        return super().header_fetch_parse(name, value)


def _comment_depth(value: str) -> int:
    depth = deepest = 0
    for char in value:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth = max(depth - 1, 0)
    return deepest


POLICY = _BoundedPolicy()


class UnparseableMail(ValueError):
    """The bytes are not a mail the desk can act on (no headers, no sender)."""


@dataclass(frozen=True)
class ParsedMail:
    message: EmailMessage
    message_id: str | None
    subject: str
    sender_address: str
    sender_name: str | None
    date: datetime | None
    in_reply_to: list[str]
    references: list[str]
    text: str
    full_text: str
    html: str | None
    attachments: list[Attachment]
    charset: str | None
    locale: str | None
    defects: list[str] = field(default_factory=list)


def parse(raw: bytes, *, attachment_limit: int) -> ParsedMail:
    """Parse one mail; raises `UnparseableMail` when it has no headers or no sender."""
    if not raw.strip():
        raise UnparseableMail("empty message")
    # The parser's own cost grows with the square of the nesting depth (1500 levels: whole
    # seconds), so what could open more parts than allowed is refused before it parses.
    lowered = raw.lower()
    if lowered.count(b"boundary") + lowered.count(b"message/") > MAX_PARTS:
        raise UnparseableMail(f"more than {MAX_PARTS} MIME boundaries or attached mails")
    msg = email.message_from_bytes(raw, policy=POLICY)
    assert isinstance(msg, EmailMessage)  # policy.default makes EmailMessage objects
    if not msg.keys():
        raise UnparseableMail("no RFC 5322 header fields")
    check_limits(msg)
    sender = _sender(msg)
    if sender is None:
        raise UnparseableMail("no sender: no usable From or Sender header")
    address, name = sender
    # The structure comes from the repaired message; the defects stay on record.
    structure = repair_boundary(msg) or msg
    if structure is not msg:
        check_limits(structure)  # the repair may have found parts the first read did not
    body = _Bodies.of(structure)
    text, full_text = body.texts()
    return ParsedMail(
        message=msg,
        message_id=first_message_id(_header(msg, "Message-ID")),
        subject=_WS.sub(" ", _header(msg, "Subject")).strip(),
        sender_address=address,
        sender_name=name,
        date=_date(msg),
        in_reply_to=message_ids(_header(msg, "In-Reply-To")),
        references=message_ids(_header(msg, "References")),
        text=text,
        full_text=full_text,
        html=body.html,
        attachments=_attachments(structure, body.parts, attachment_limit),
        charset=body.charset,
        locale=_locale(msg),
        defects=_defects(msg),
    )


def check_limits(msg: Message) -> None:
    """Refuse a mail nested too deep, in too many parts or fields (walked without recursion)."""
    stack: list[tuple[Message, int]] = [(msg, 1)]
    parts = 0
    while stack:
        part, depth = stack.pop()
        parts += 1
        if depth > MAX_DEPTH:
            raise UnparseableMail(f"MIME parts nested deeper than {MAX_DEPTH}")
        if parts > MAX_PARTS:
            raise UnparseableMail(f"more than {MAX_PARTS} MIME parts")
        if len(part) > MAX_FIELDS:
            raise UnparseableMail(f"more than {MAX_FIELDS} header fields in one part")
        if part.is_multipart():  # a list of parts; only then no charset is involved
            payload = part.get_payload()
            stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))


# --- Message-IDs ----------------------------------------------------------------------


def normalise_message_id(value: str) -> str | None:
    """`<local@domain>` with the domain lowercased and blanks removed; None if empty.

    The local part is kept as it is (it is case-sensitive by RFC 5322); the domain is
    not, and some relays rewrite its case.
    """
    inner = value.strip().strip("<>").strip()
    inner = _WS.sub("", inner)
    if not inner:
        return None
    local, at, domain = inner.rpartition("@")
    return f"<{local}@{domain.lower()}>" if at else f"<{inner}>"


def message_ids(value: str) -> list[str]:
    """Every Message-ID in a header value (In-Reply-To, References), normalised, in order."""
    found = _MSGID.findall(value) or _ANGLE_LESS.findall(value)
    ids: list[str] = []
    for raw in found:
        norm = normalise_message_id(raw)
        if norm and norm not in ids:
            ids.append(norm)
    return ids


def first_message_id(value: str) -> str | None:
    ids = message_ids(value)
    if ids:
        return ids[0]
    return normalise_message_id(value) if value.strip() else None


# --- headers --------------------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    """A header as text; a header the policy cannot parse is read raw instead of failing."""
    try:
        value = msg.get(name)
    except Exception:  # a malformed header must not lose the whole mail
        value = None
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                value = raw[: field_limit(name)]  # the same bound as a parsed field's
                break
    return clean(str(value)) if value is not None else ""


def clean(text: str) -> str:
    """Header text without lone surrogates, which no JSON encoder or pydantic model takes.

    The stdlib keeps the raw 8-bit bytes of a header (a name in Latin-1 or UTF-8 without
    RFC 2047 words) as surrogate escapes; they are read as UTF-8, else as Windows-1252.
    Other lone surrogates (from an encoded word in UTF-16, say) become U+FFFD.
    """
    if not _SURROGATE.search(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _defects(msg: EmailMessage) -> list[str]:
    """What the parser had to repair: in the structure and in the top-level header fields."""
    found = [type(d).__name__ for part in msg.walk() for d in part.defects]
    for name in dict.fromkeys(msg.keys()):
        with contextlib.suppress(Exception):  # a header that does not parse at all
            found += [type(d).__name__ for d in getattr(msg.get(name), "defects", ())]
    return list(dict.fromkeys(found))


def _sender(msg: EmailMessage) -> tuple[str, str | None] | None:
    for name in ("From", "Sender"):
        try:
            header = msg.get(name)
            addresses: tuple[Address, ...] = getattr(header, "addresses", ())
        except Exception:
            addresses = ()
        for addr in addresses:
            if addr.addr_spec and "@" in addr.addr_spec:
                display = _WS.sub(" ", clean(addr.display_name)).strip() or None
                return clean(addr.addr_spec).lower(), display
        raw = _header(msg, name)
        match = _ANGLE_LESS.search(raw)
        if match:
            return match.group(0).strip("<>\"'").lower(), None
    return None


def _date(msg: Message) -> datetime | None:
    try:
        header = msg.get("Date")
        value = getattr(header, "datetime", None)
    except Exception:  # InvalidDateDefect and friends: the caller falls back
        return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _locale(msg: Message) -> str | None:
    value = _header(msg, "Content-Language").split(",")[0].strip()
    return value[:35] if value else None


# --- bodies ---------------------------------------------------------------------------


def decode_bytes(payload: bytes, charset: str | None) -> str:
    """Text of a body part in its declared charset; unknown charsets use replacement chars."""
    name = (charset or "us-ascii").strip().strip("\"'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        if codecs.lookup(name).name in _NOT_MAIL_CHARSETS:
            name = "utf-8"
    except (LookupError, ValueError):  # ValueError: a label with a NUL in it
        name = "utf-8"  # an unknown label: keep going with U+FFFD for what does not fit
    try:
        return payload.decode(name, errors="replace")
    except (LookupError, UnicodeError):
        # A label that names a codec but no text encoding (base64, rot13, hex: LookupError)
        # or one that refuses errors="replace" (idna: UnicodeError) is as good as unknown.
        return payload.decode("utf-8", errors="replace")


def _part_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def part_text(part: Message) -> str:
    text = decode_bytes(_part_bytes(part), part.get_content_charset())
    return text.replace("\r\n", "\n").replace("\r", "\n")


@dataclass
class _Bodies:
    """The parts that make up the body, and the texts made from them."""

    plain: list[Message]
    html_part: Message | None
    raw_fallback: str | None = None

    @property
    def parts(self) -> list[Message]:
        return [*self.plain, *([self.html_part] if self.html_part is not None else [])]

    @property
    def charset(self) -> str | None:
        first = self.plain[0] if self.plain else self.html_part
        return first.get_content_charset() if first is not None else None

    @property
    def html(self) -> str | None:
        return part_text(self.html_part) if self.html_part is not None else None

    @classmethod
    def of(cls, msg: EmailMessage) -> _Bodies:
        plain = _body_part(msg, "plain")
        html = _body_part(msg, "html")
        if plain is None and html is None:
            if msg.is_multipart() or msg.get_content_maintype() != "text":
                # A multipart whose boundary is missing (StartBoundaryNotFoundDefect): the
                # payload is the whole text; better a raw body than no ticket at all.
                if not msg.is_multipart() and msg.get_content_maintype() == "multipart":
                    return cls([], None, raw_fallback=_raw_text(msg))
                return cls([], None)
            plain = msg  # a single text part the policy does not call a body
        parts: list[Message] = [plain] if plain is not None else []
        # Apple Mail puts text after the attachments as sibling inline parts: one body.
        if plain is not None and msg.get_content_type() == "multipart/mixed":
            for sibling in msg.iter_parts():
                if (
                    sibling is not plain
                    and sibling.get_content_type() == "text/plain"
                    and not sibling.is_attachment()
                    and sibling.get_filename() is None
                ):
                    parts.append(sibling)
        return cls(parts, html)

    def texts(self) -> tuple[str, str]:
        """(new text without quotes, full text) of the body."""
        if self.plain:
            full = "\n\n".join(part_text(p).strip("\n") for p in self.plain)
        elif self.html_part is not None:
            full = html_to_text(part_text(self.html_part))
        else:
            full = self.raw_fallback or ""
        full = full.strip("\n").rstrip()
        new, _quoted = split_reply(full)
        # A bare forward is all quote; the agent still needs its text.
        return (new if new.strip() else full), full


def _body_part(msg: EmailMessage, subtype: str) -> Message | None:
    try:
        return msg.get_body(preferencelist=(subtype,))
    except AttributeError:
        # CPython's `_find_body` asks `self.is_multipart()` where it means the part, so a
        # nested multipart/related without its parts (a boundary that never occurs: the
        # payload is text) makes it walk the characters of that text. Search ourselves.
        for part in _leaves(msg):
            if part.get_content_type() == f"text/{subtype}" and not _is_attachment(part):
                return part
        return None


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment"


def _raw_text(msg: Message) -> str:
    return _payload_text(msg).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _payload_text(part: Message) -> str:
    """The payload of a part that is no multipart, as text, undecoded.

    The stdlib reads 8-bit text in the part's declared charset and fails on labels such as
    `undefined` (UnicodeError), one with a NUL (ValueError) or an RFC 2231 tuple (TypeError);
    then the bytes come as they are (surrogate-escaped).
    """
    try:
        payload = part.get_payload()
    except (UnicodeError, ValueError, TypeError):
        raw = part.get_payload(decode=True)
        payload = raw.decode("ascii", "surrogateescape") if isinstance(raw, bytes) else ""
    return payload if isinstance(payload, str) else ""


_DELIMITER = re.compile(r"^--([^\s]{1,70}?)(--)?[ \t]*\r?$", re.MULTILINE)


def repair_boundary(msg: EmailMessage) -> EmailMessage | None:
    """A multipart whose declared boundary never occurs, re-read with the one its body uses.

    Disclaimer gateways rewrite boundaries in the body but not in the header; the parts
    are all still there, under the delimiter the body actually has.
    """
    if msg.is_multipart() or msg.get_content_maintype() != "multipart":
        return None
    body = _payload_text(msg)
    match = _DELIMITER.search(body)
    if match is None:
        return None
    head = "".join(f"{k}: {v}\n" for k, v in msg.raw_items() if k.lower() != "content-type")
    ctype = f'Content-Type: {msg.get_content_type()}; boundary="{match.group(1)}"\n'
    rebuilt = (head + ctype + "\n" + body).encode("utf-8", "surrogateescape")
    repaired = email.message_from_bytes(rebuilt, policy=POLICY)
    return repaired if isinstance(repaired, EmailMessage) and repaired.is_multipart() else None


# --- attachments ----------------------------------------------------------------------


def _leaves(msg: Message) -> list[Message]:
    """Every leaf part; a message/rfc822 is one leaf (a forwarded mail is one attachment)."""
    if msg.get_content_type() == "message/rfc822" or not msg.is_multipart():
        return [msg]
    payload = msg.get_payload()
    parts = payload if isinstance(payload, list) else []
    return [leaf for part in parts if isinstance(part, Message) for leaf in _leaves(part)]


def _attachments(msg: EmailMessage, body_parts: list[Message], limit: int) -> list[Attachment]:
    found: list[Attachment] = []
    for part in _leaves(msg):
        if any(part is b for b in body_parts):
            continue
        filename = _filename(part)
        content_id = clean(str(part.get("Content-ID") or "")).strip().strip("<>") or None
        disposition = part.get_content_disposition()
        maintype = part.get_content_maintype()
        # Alternative bodies and report parts without a name are structure, not files.
        structural = maintype in {"text", "multipart"} or (
            maintype == "message" and part.get_content_type() != "message/rfc822"
        )
        if filename is None and content_id is None and disposition != "attachment" and structural:
            continue
        data = _attachment_bytes(part)
        omitted = len(data) > limit
        found.append(
            Attachment(
                filename=filename[:500] if filename else _default_name(part),
                content_type=clean(part.get_content_type())[:200],
                size=len(data),
                content_id=content_id[:200] if content_id else None,
                inline=disposition == "inline" or (content_id is not None and not disposition),
                omitted=omitted,
                sha256=None if omitted else hashlib.sha256(data).hexdigest(),
            )
        )
    return found


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename() or part.get_param("name", header="content-type")
    except Exception:
        name = None
    if isinstance(name, tuple):  # an RFC 2231 value the policy left undecoded
        name = email.utils.collapse_rfc2231_value(name)
    if not name:
        return None
    name = str(name)
    if "=?" in name:  # RFC 2047 words inside a quoted parameter (Exchange does this)
        with contextlib.suppress(Exception):  # undecodable: keep the name as written
            name = str(make_header(decode_header(name)))
    return _WS.sub(" ", clean(name)).strip() or None


def _default_name(part: Message) -> str | None:
    """A forwarded mail is named after its subject, as mail clients show it."""
    if part.get_content_type() != "message/rfc822":
        return None
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], Message):
        subject = _header(inner[0], "Subject").strip()
        return f"{subject[:490]}.eml" if subject else None
    return None


def _attachment_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            try:
                return inner[0].as_bytes()
            except Exception:  # a defective inner mail still has a size
                return str(inner[0]).encode("utf-8", "surrogateescape")
    return _part_bytes(part)
