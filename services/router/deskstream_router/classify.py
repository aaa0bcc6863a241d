"""Classification of a new request against the service catalogue, by versioned rules.

Pure: a message, the catalogue and the rules in; the service, its team and the rule that
matched out. The rules live in `rules/classification.toml` (see its header).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from deskstream.events import Channel, InboundMessage, ServiceEntry, Visibility

DEFAULT_RULES = Path(__file__).resolve().parent / "rules" / "classification.toml"


@dataclass(frozen=True)
class Rule:
    name: str
    service: str | None = None
    keywords: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    portal_service: bool = False
    channels: tuple[Channel, ...] = ()
    visibility: Visibility | None = None
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
            channels=tuple(Channel(c) for c in raw.get("channels", [])),  # type: ignore[attr-defined]
            visibility=Visibility(str(raw["visibility"])) if raw.get("visibility") else None,
            _pattern=pattern,
        )

    def matches(self, message: InboundMessage) -> str | None:
        """The service this rule gives `message`, or None when it does not apply."""
        if self.portal_service:
            ok = message.channel is Channel.PORTAL and message.service_hint
            return message.service_hint if ok else None
        if self.channels and message.channel not in self.channels:
            return None
        if self.visibility is not None and message.visibility is not self.visibility:
            return None
        if not (self.sender_domains or self._pattern):
            return self.service  # a rule on channel and visibility alone
        if self.sender_domains and message.sender.kind == "email":
            domain = message.sender.id.rsplit("@", 1)[-1].lower()
            if domain in self.sender_domains:
                return self.service
        if self._pattern is not None and self._pattern.search(
            f"{message.subject}\n{message.text}".lower()
        ):
            return self.service
        return None


RANKS = ("least-load", "best-skill")


@dataclass(frozen=True)
class ChannelPolicy:
    """How a channel's tickets are ranked, queued and told about their wait."""

    rule: str  # "channel:<name>@v<version>", named in every routing explanation
    rank: str = "least-load"
    queue_priority: int = 2
    announce_position: bool = False
    seconds_per_position: int = 0

    def estimate_s(self, position: int) -> int | None:
        return position * self.seconds_per_position if self.seconds_per_position else None


@dataclass(frozen=True)
class Rules:
    version: int
    default_service: str
    default_team: str
    rules: tuple[Rule, ...]
    channels: dict[Channel, ChannelPolicy] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = DEFAULT_RULES) -> Rules:
        raw = tomllib.loads(path.read_text())
        version = int(raw["version"])
        channels = {}
        for name, policy in raw.get("channel", {}).items():
            channel = Channel(name)  # an unknown channel name fails at start-up
            if policy.get("rank", "least-load") not in RANKS:
                raise ValueError(f"channel.{name}.rank must be one of {RANKS}")
            channels[channel] = ChannelPolicy(rule=f"channel:{name}@v{version}", **policy)
        return cls(
            version=version,
            default_service=str(raw["default_service"]),
            default_team=str(raw["default_team"]),
            rules=tuple(Rule.build(r) for r in raw.get("rule", [])),
            channels=channels,
        )

    def policy(self, channel: Channel) -> ChannelPolicy:
        return self.channels.get(channel) or ChannelPolicy(rule=f"channel:default@v{self.version}")


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
