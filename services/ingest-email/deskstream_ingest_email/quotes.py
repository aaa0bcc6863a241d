"""The new text of a reply: quoted earlier mail stripped, with Outlook's habits handled.

quotequail (maintained, used by Close.com) finds "On ... wrote:" attributions, "> " blocks
and the usual separators. Outlook and Exchange often quote without any of those: a
"From: ... Sent: ..." header block straight after the reply, or a separator with trailing
blanks; those are cut here where quotequail kept them.
"""

from __future__ import annotations

import re

import quotequail

# "-----Original Message-----" in the languages Outlook ships most; blanks tolerated.
_ORIGINAL = re.compile(
    r"^\s*-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|"
    r"mensaje original|messaggio originale|oorspronkelijk bericht|mensagem original|"
    r"oryginalna wiadomość|původní zpráva|alkuperäinen viesti)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^\s*_{20,}\s*$")
# The first and a later line of an Outlook header block ("From:" then "Sent:"/"Date:" with
# a date in it, so a sentence that happens to start with "From:" is not taken for one).
_FROM = re.compile(r"^\s*\*?(from|von|de|van|da|från|fra|od|от)\s*:\*?\s*\S", re.IGNORECASE)
_SENT = re.compile(
    r"^\s*\*?(sent|date|gesendet|datum|envoyé|enviado|inviato|verzonden|skickat|sendt|"
    r"wysłano|отправлено)\s*:\*?\s*\D*\d",
    re.IGNORECASE,
)
_HEADER_BLOCK_LINES = 4
MAX_SCAN_LINES = 2000


def split_reply(text: str) -> tuple[str, bool]:
    """(new text, whether a quote was found) of a plain-text body (newlines are "\\n")."""
    lines = text.split("\n")
    # A reply's own text comes first and is short; looking for the quote in a long log
    # dump costs seconds (quotequail tries every pattern on every line), so only the head
    # is searched. A head without a quote means the whole text is new.
    head = "\n".join(lines[:MAX_SCAN_LINES])
    # quotequail quotes everything after `limit` lines; a long report is not a quote.
    parts = quotequail.quote(head, limit=MAX_SCAN_LINES + 1, quote_intro_line=True)
    found = len(parts) > 1
    new = "".join(part for expanded, part in parts if expanded) if found else text
    new_lines = new.split("\n")
    cut = _outlook_quote_start(new_lines[:MAX_SCAN_LINES])
    if cut is not None:
        new = "\n".join(new_lines[:cut])
        found = True
    return new.strip("\n").rstrip(), found


def _outlook_quote_start(lines: list[str]) -> int | None:
    """The index of the first line of an Outlook-style quote block, if there is one."""
    for i, line in enumerate(lines):
        if _ORIGINAL.match(line):
            return i
        if _SEPARATOR.match(line) and _from_line_at(lines, i + 1):
            return i
        if i > 0 and _FROM.match(line) and _header_block_at(lines, i):
            return i
    return None


def _first_filled(lines: list[str], start: int) -> int:
    while start < len(lines) and not lines[start].strip():
        start += 1
    return start


def _from_line_at(lines: list[str], start: int) -> bool:
    """A "From:" line at `start`, blank lines skipped (enough after a separator line)."""
    start = _first_filled(lines, start)
    return start < len(lines) and _FROM.match(lines[start]) is not None


def _header_block_at(lines: list[str], start: int) -> bool:
    """A "From:" line at `start` with a "Sent:"/"Date:" line after it (no separator)."""
    start = _first_filled(lines, start)
    if not _from_line_at(lines, start):
        return False
    window = lines[start + 1 : start + 1 + _HEADER_BLOCK_LINES]
    return any(_SENT.match(line) for line in window)
