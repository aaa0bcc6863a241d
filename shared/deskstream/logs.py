"""Structured JSON logs on stdout: one object per line, with correlation ids.

The correlation ids are `event_id` (the source event's deterministic id: the same in
every service an inbound message passes through), `ticket_id` and `conversation_key`, plus
`command_id` / `reply_id` where a line is about one. A log line gets them in either of two
ways, and the record's own `extra` wins over the context:

- `extra={"ticket_id": ...}` on the call, as before;
- `with event_context(**correlation(model)):` around the code handling one event: every
  line logged inside carries its ids, including lines of shared code (the runner's
  dead-letter line) that cannot know them. A contextvar, so concurrent tasks each keep
  their own; a worker thread sets its own context.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
CORRELATION_FIELDS = ("event_id", "ticket_id", "conversation_key", "command_id", "reply_id")
_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("deskstream_log_context", default=None)


def correlation(model: Any) -> dict[str, str]:
    """The correlation ids a record's model names, for `event_context`.

    An inbound message names its event and conversation; a create or append command
    names the inbound message it carries (so the event id is the one the ingest service
    logged) and its ticket; ticket events, replies and delivery results name their ticket.
    """
    ids: dict[str, str] = {}
    message = getattr(model, "message", None)
    for source in (message, model):
        if source is None:
            continue
        for name in CORRELATION_FIELDS:
            value = getattr(source, name, None)
            if isinstance(value, str) and value and name not in ids:
                ids[name] = value
    return ids


@contextlib.contextmanager
def event_context(**ids: str | None) -> Iterator[None]:
    """Log lines inside carry these ids (None values are left out), over any outer ones."""
    merged = {**(_CONTEXT.get() or {}), **{k: v for k, v in ids.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, str]:
    return dict(_CONTEXT.get() or {})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        context = _CONTEXT.get()
        if context:
            entry.update(context)
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries are chatty at INFO about every (re)connection; DEBUG shows them too.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for noisy in ("aiokafka", "kafka", "pymongo", "faust", "mode", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(quiet, root.level))
