"""JSON Schemas of the event contracts, for downstream tools: `python -m deskstream.schemas DIR`.

One file per value model named in the topic registry (`<Name>.v<schema_version>.json`);
`schemas/examples/<Name>/*.json` hold example messages that the test suite validates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from deskstream.events import (
    SCHEMA_VERSION,
    TICKET_COMMAND,
    TICKET_EVENT,
    AgentState,
    DeadLetter,
    InboundMessage,
    OutboundReply,
    ServiceEntry,
)
from deskstream.topics import TOPICS

ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "InboundMessage": TypeAdapter(InboundMessage),
    "TicketCommand": TICKET_COMMAND,
    "TicketEvent": TICKET_EVENT,
    "AgentState": TypeAdapter(AgentState),
    "ServiceEntry": TypeAdapter(ServiceEntry),
    "OutboundReply": TypeAdapter(OutboundReply),
    "DeadLetter": TypeAdapter(DeadLetter),
}


def schema_for(name: str) -> dict[str, Any]:
    schema = ADAPTERS[name].json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://deskstream.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
    schema.setdefault("title", name)
    schema["x-topics"] = sorted(t.name for t in TOPICS if t.value_name == name)
    return schema


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ADAPTERS:
        path = directory / f"{name}.v{SCHEMA_VERSION}.json"
        path.write_text(json.dumps(schema_for(name), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in export(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(p)
