"""Mail that must never open a ticket or trigger a reply: bounces, loops, auto-replies, bulk.

Runs before threading: an out-of-office answering a desk reply carries the ticket token and
In-Reply-To, so threading would otherwise append it to the ticket (and the desk's
acknowledgement would answer it, and so on). The rules are a table, checked in order; the
first that matches names the reason. Bounces come first because real bounces also carry
`Auto-Submitted: auto-replied`; loops before auto-replies because the desk's own
notifications may be auto-submitted too, and "loop" is the more useful reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from email.message import Message
from enum import StrEnum


class IgnoreReason(StrEnum):
    BOUNCE = "bounce"
    LOOP = "loop"
    AUTO_REPLY = "auto-reply"
    BULK = "bulk"


@dataclass(frozen=True)
class ClassifyContext:
    own_addresses: Collection[str]  # lowercased
    allowed_list_ids: Collection[str] = ()


Rule = Callable[[Message, str, ClassifyContext], bool]

_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}
# Matches start only where a word starts, so a long run without `@` is scanned once (see
# parse._ANGLE_LESS).
_ADDR = re.compile(r"(?<![^\s<>\"',;()])[^\s<>\"',;()]+@[^\s<>\"',;()]+")
# Values of X-Auto-Response-Suppress that Exchange writes on its own automatic mail.
_SUPPRESS_MARKERS = {"all", "oof", "autoreply"}
_LIST_ID = re.compile(r"<([^<>]+)>")


def _get(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the policy cannot parse is as good as absent
        return ""
    return str(value).strip().lower() if value is not None else ""


def _addresses(msg: Message, name: str) -> list[str]:
    return [a.lower() for a in _ADDR.findall(_get(msg, name))]


def is_bounce(msg: Message, sender: str, ctx: ClassifyContext) -> bool:
    report_type = str(msg.get_param("report-type") or "").lower()
    if msg.get_content_type() == "multipart/report" and report_type == "delivery-status":
        return True
    if _get(msg, "X-Failed-Recipients"):
        return True
    return sender.partition("@")[0].lower() in _DAEMONS


def is_loop(msg: Message, sender: str, ctx: ClassifyContext) -> bool:
    candidates = {sender.lower(), *_addresses(msg, "Sender")}
    return any(a in ctx.own_addresses for a in candidates)


def is_auto_reply(msg: Message, sender: str, ctx: ClassifyContext) -> bool:
    auto_submitted = _get(msg, "Auto-Submitted").split(";")[0].strip()
    if auto_submitted and auto_submitted != "no":
        return True
    for name in ("X-Autoreply", "X-Autorespond", "X-Autorespond-Info"):
        value = _get(msg, name)
        if value and value != "no":
            return True
    if _get(msg, "Precedence") == "auto_reply" or _get(msg, "X-Precedence") == "auto_reply":
        return True
    suppress = {v.strip() for v in _get(msg, "X-Auto-Response-Suppress").split(",")}
    if suppress & _SUPPRESS_MARKERS:
        return True
    # A read receipt (MDN) is machine-made too.
    return msg.get_content_type() == "multipart/report"


def is_bulk(msg: Message, sender: str, ctx: ClassifyContext) -> bool:
    list_id = _get(msg, "List-Id")
    if list_id and _list_id(list_id) in {a.lower() for a in ctx.allowed_list_ids}:
        return False
    precedence = _get(msg, "Precedence") or _get(msg, "X-Precedence")
    return precedence in {"bulk", "junk", "list"} or bool(list_id)


def _list_id(value: str) -> str:
    """The identifier of a List-Id header: the part in angle brackets, else the value."""
    match = _LIST_ID.search(value)
    return (match.group(1) if match else value).strip().lower()


RULES: tuple[tuple[IgnoreReason, Rule], ...] = (
    (IgnoreReason.BOUNCE, is_bounce),
    (IgnoreReason.LOOP, is_loop),
    (IgnoreReason.AUTO_REPLY, is_auto_reply),
    (IgnoreReason.BULK, is_bulk),
)


def classify(msg: Message, sender: str, ctx: ClassifyContext) -> IgnoreReason | None:
    """Why this mail is ignored, or None when it is a person's mail for the desk."""
    for reason, rule in RULES:
        if rule(msg, sender, ctx):
            return reason
    return None
