"""Classification of a new request against the service catalogue, by versioned rules.

Pure: a message, the catalogue and the rules in; the service, its team and the rule that
matched out. The rules live in `rules/classification.toml` (see its header).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from deskstream.events import Channel, InboundMessage, ServiceEntry

DEFAULT_RULES = Path(__file__).resolve().parent / "rules" / "classification.toml"


@dataclass(frozen=True)
class Rule:
    name: str
    service: str | None = None
    keywords: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    portal_service: bool = False
    _pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(cls, raw: dict[str, object]) -> Rule:
        keywords = tuple(str(k).lower() for k in raw.get("keywords", []))  # type: ignore[attr-defined]
        pattern = (
            re.compile(r"\b(" + "|".join(re.escape(k) for k in keywords) + r")\b")
            if keywords
            else None
        )
        return cls(
            name=str(raw["name"]),
            service=str(raw["service"]) if raw.get("service") else None,
            keywords=keywords,
            sender_domains=tuple(str(d).lower() for d in raw.get("sender_domains", [])),  # type: ignore[attr-defined]
            portal_service=bool(raw.get("portal_service", False)),
            _pattern=pattern,
        )

    def matches(self, message: InboundMessage) -> str | None:
        """The service this rule gives `message`, or None when it does not apply."""
        if self.portal_service:
            ok = message.channel is Channel.PORTAL and message.service_hint
            return message.service_hint if ok else None
        if self.sender_domains and message.sender.kind == "email":
            domain = message.sender.id.rsplit("@", 1)[-1].lower()
            if domain in self.sender_domains:
                return self.service
        if self._pattern is not None and self._pattern.search(
            f"{message.subject}\n{message.text}".lower()
        ):
            return self.service
        return None


@dataclass(frozen=True)
class Rules:
    version: int
    default_service: str
    default_team: str
    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, path: Path = DEFAULT_RULES) -> Rules:
        raw = tomllib.loads(path.read_text())
        return cls(
            version=int(raw["version"]),
            default_service=str(raw["default_service"]),
            default_team=str(raw["default_team"]),
            rules=tuple(Rule.build(r) for r in raw.get("rule", [])),
        )


@dataclass(frozen=True)
class Classification:
    service_id: str
    team: str
    rule: str
    required_skills: dict[str, int]
    criticality: str


def classify(
    message: InboundMessage, catalogue: dict[str, ServiceEntry], rules: Rules
) -> Classification:
    service_id, rule_name = rules.default_service, "default"
    for rule in rules.rules:
        found = rule.matches(message)
        if found:
            service_id, rule_name = found, rule.name
            break
    entry = catalogue.get(service_id)
    return Classification(
        service_id=service_id,
        team=entry.team if entry else rules.default_team,
        rule=f"{rule_name}@v{rules.version}",
        required_skills=dict(entry.required_skills) if entry else {},
        criticality=entry.criticality if entry else "medium",
    )
