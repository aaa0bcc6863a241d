"""A small demo organisation: teams, agents with skills, a service catalogue.

`load(base_url, admin_key)` creates it through the ticket API (idempotent: what exists is
left as it is), so `make run`, the benchmark and the end-to-end tests share one picture of
the desk. The services match the router's classification rules.
"""

from __future__ import annotations

from typing import Any

import httpx

TEAMS: list[dict[str, Any]] = [
    {"team_id": "service-desk", "name": "Service Desk"},
    {"team_id": "network", "name": "Network & Remote Access"},
    {"team_id": "field", "name": "Field Services"},
    {"team_id": "finance-apps", "name": "Finance Applications"},
    {"team_id": "social", "name": "Social Media"},
]

SERVICES: list[dict[str, Any]] = [
    {
        "service_id": "general",
        "name": "General IT question",
        "team": "service-desk",
        "criticality": "low",
    },
    {
        "service_id": "password-reset",
        "name": "Password and account",
        "team": "service-desk",
        "required_skills": {"accounts": 1},
        "criticality": "low",
        "self_service_allowed": True,
    },
    {
        "service_id": "vpn",
        "name": "Remote access (VPN)",
        "team": "network",
        "required_skills": {"vpn": 3},
        "criticality": "high",
        "response_minutes": 60,
    },
    {
        "service_id": "printing",
        "name": "Printing and scanning",
        "team": "field",
        "required_skills": {"hardware": 1},
        "criticality": "low",
        "peers_allowed": True,
    },
    {
        "service_id": "hardware-request",
        "name": "Hardware request",
        "team": "field",
        "required_skills": {"hardware": 2},
    },
    {
        "service_id": "finance-apps",
        "name": "Finance applications (SAP)",
        "team": "finance-apps",
        "required_skills": {"sap": 3},
        "criticality": "critical",
        "response_minutes": 30,
    },
    {
        # Public posts on X go here whatever they are about (rules/channels.toml): the
        # social team answers in public within its own, shorter response target.
        "service_id": "social-public",
        "name": "Public post on social media",
        "team": "social",
        "required_skills": {"social": 1},
        "criticality": "medium",
        "response_minutes": 15,
    },
]

AGENTS: list[dict[str, Any]] = [
    {
        "agent_id": "ana",
        "name": "Ana Costa",
        "teams": ["network"],
        "skills": {"vpn": 4, "networking": 3},
        "presence": "online",
    },
    {
        "agent_id": "ben",
        "name": "Ben Okafor",
        "teams": ["network", "service-desk"],
        "skills": {"vpn": 2, "accounts": 2},
        "presence": "online",
    },
    {
        "agent_id": "carla",
        "name": "Carla Jensen",
        "teams": ["service-desk"],
        "skills": {"accounts": 3},
        "presence": "online",
    },
    {
        "agent_id": "dev",
        "name": "Dev Patel",
        "teams": ["field"],
        "skills": {"hardware": 3},
        "presence": "online",
    },
    {
        "agent_id": "eva",
        "name": "Eva Lindqvist",
        "teams": ["finance-apps"],
        "skills": {"sap": 4},
        "presence": "online",
    },
    {
        "agent_id": "sol",
        "name": "Sol Rivera",
        "teams": ["social"],
        "skills": {"social": 3},
        "presence": "online",
    },
    {
        "agent_id": "frank",
        "name": "Frank Moreau",
        "teams": ["service-desk"],
        "skills": {"accounts": 2},
        "presence": "offline",
    },
]


def _create(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    resp = client.post(path, json=body)
    if resp.status_code not in (201, 409):  # 409: it exists already
        raise RuntimeError(f"POST {path} failed: {resp.status_code} {resp.text[:300]}")


def load(base_url: str, admin_key: str) -> None:
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    ) as client:
        for team in TEAMS:
            _create(client, "/v1/teams", team)
        for service in SERVICES:
            _create(client, "/v1/catalogue/services", service)
        for agent in AGENTS:
            _create(client, "/v1/agents", agent)
