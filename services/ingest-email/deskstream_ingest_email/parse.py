"""MIME parsing: the bytes of one mail -> `ParsedMail` (headers, bodies, attachment metadata).

Pure (no I/O), so every captured mail can be checked in a unit test. Built on the standard
library's `email` with `policy.default`; real mail is often broken, so every step has a
fallback: an unknown charset decodes with replacement characters, a broken MIME boundary
falls back to the raw payload, an unparseable Date is left to the caller. Only mail without
any usable header (no sender) is refused, with `UnparseableMail`.
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

from deskstream.events import Attachment

from deskstream_ingest_email.html_text import html_to_text
from deskstream_ingest_email.quotes import split_reply

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
_ANGLE_LESS = re.compile(r"[^\s<>]+@[^\s<>]+")
_WS = re.compile(r"\s+")
MAX_ID = 200


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
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)  # policy.default makes EmailMessage objects
    if not msg.keys():
        raise UnparseableMail("no RFC 5322 header fields")
    sender = _sender(msg)
    if sender is None:
        raise UnparseableMail("no sender: no usable From or Sender header")
    address, name = sender
    # The structure comes from the repaired message; the defects stay on record.
    structure = repair_boundary(msg) or msg
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
                value = raw
                break
    return str(value) if value is not None else ""


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
                display = _WS.sub(" ", addr.display_name).strip() or None
                return addr.addr_spec.lower(), display
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
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"  # an unknown label: keep going with U+FFFD for what does not fit
    return payload.decode(name, errors="replace")


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
        plain = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
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


def _raw_text(msg: Message) -> str:
    payload = msg.get_payload()
    text = payload if isinstance(payload, str) else ""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_DELIMITER = re.compile(r"^--([^\s]{1,70}?)(--)?[ \t]*\r?$", re.MULTILINE)


def repair_boundary(msg: EmailMessage) -> EmailMessage | None:
    """A multipart whose declared boundary never occurs, re-read with the one its body uses.

    Disclaimer gateways rewrite boundaries in the body but not in the header; the parts
    are all still there, under the delimiter the body actually has.
    """
    if msg.is_multipart() or msg.get_content_maintype() != "multipart":
        return None
    body = msg.get_payload()
    match = _DELIMITER.search(body) if isinstance(body, str) else None
    if match is None or not isinstance(body, str):
        return None
    head = "".join(f"{k}: {v}\n" for k, v in msg.raw_items() if k.lower() != "content-type")
    ctype = f'Content-Type: {msg.get_content_type()}; boundary="{match.group(1)}"\n'
    rebuilt = (head + ctype + "\n" + body).encode("utf-8", "surrogateescape")
    repaired = email.message_from_bytes(rebuilt, policy=email.policy.default)
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
        content_id = (part.get("Content-ID") or "").strip().strip("<>") or None
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
                content_type=part.get_content_type()[:200],
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
    return _WS.sub(" ", name).strip() or None


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
