"""Readable text from an HTML mail body (for mail that has no text/plain part).

The standard library's `html.parser` is enough: mail HTML is shown to agents as text, not
rendered. Block elements become line breaks, `<li>` a dash, and `<blockquote>` content is
prefixed with "> " so the quote stripper sees it as quoted, just as in a plain-text reply.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK = {
    "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
    "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
    "tbody", "tfoot", "thead", "tr", "ul",
}  # fmt: skip
_SKIP = {"head", "script", "style", "template", "title", "noscript", "xml"}
_CELL = {"td", "th"}
_SPACES = re.compile(r"[ \t\r\n\f\u00a0\u200b]+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._skip = 0
        self._quote = 0
        self._pre = 0

    # Where a line ends depends on the element, so text is collected per line.
    def _break(self) -> None:
        text = "".join(self._line)
        text = text if self._pre else _SPACES.sub(" ", text).strip()
        prefix = "> " * self._quote
        self.lines.append(prefix + text if text or not prefix else prefix.rstrip())
        self._line = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "br":
            self._break()
        elif tag in _BLOCK:
            if self._line:
                self._break()
            if tag == "blockquote":
                self._quote += 1
            elif tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._line.append("- ")
        elif tag in _CELL and self._line:
            self._line.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._line.append(f"[{alt}]")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            if self._line:
                self._break()
            if tag == "blockquote":
                self._quote = max(0, self._quote - 1)
            elif tag == "pre":
                self._pre = max(0, self._pre - 1)
            elif tag in {"p", "table", "blockquote"}:
                self.lines.append("> " * self._quote)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._line.append(data)

    def text(self) -> str:
        if self._line:
            self._break()
        lines = [line.rstrip() for line in self.lines]
        # Collapse runs of blank lines that nested blocks leave behind.
        out: list[str] = []
        for line in lines:
            if line.strip(" >") or (out and out[-1].strip(" >")):
                out.append(line)
        return "\n".join(out).strip("\n")


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.text()
