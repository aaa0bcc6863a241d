"""The Grafana dashboard uses only metrics and labels the services export.

Every `deskstream_*` name in a panel's PromQL must be a sample name of a family defined in
the shared metrics module or a service's own (so a rename breaks this test, not the
dashboard in production), every label it groups or filters by must be one of those
families' labels, and every shared family must be on the dashboard.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "deskstream.json"
# Every module that defines Prometheus families (a new one belongs here too).
MODULES = (
    "deskstream.metrics",
    "deskstream_ticket_api.metrics",
    "deskstream_ingest_social.metrics",
    "deskstream_ingest_chat.ingest",
    "deskstream_ingest_chat.hub",
    "deskstream_router.metrics",
)
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
# Labels PromQL or Prometheus itself adds.
IMPLICIT = {"le", "job", "instance"}


def families() -> dict[str, MetricWrapperBase]:
    """Sample name -> its family, for every family the services define."""
    out: dict[str, MetricWrapperBase] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                for sample in SUFFIXES[str(value._type)]:
                    out[value._name + sample] = value
    return out


def expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return exprs


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    known = families()
    exprs = expressions()
    assert exprs
    for expr in exprs:
        names = set(re.findall(r"\bdeskstream_[a-z0-9_]+", expr))
        assert names, expr
        unknown = names - known.keys()
        assert not unknown, f"{expr}: no service exports {sorted(unknown)}"
        labels = {label for n in names for label in known[n]._labelnames} | IMPLICIT
        grouped = {
            label.strip()
            for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in clause.split(",")
            if label.strip()
        }
        matched = set(re.findall(r"[{,]\s*([a-zA-Z_]\w*)\s*(?:=~|!=|!~|=)", expr))
        matched |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
        assert grouped | matched <= labels, f"{expr}: labels {sorted((grouped | matched) - labels)}"


def test_every_shared_family_is_on_the_dashboard() -> None:
    from deskstream.metrics import FAMILIES

    used = " ".join(expressions())
    missing = [f._name for f in FAMILIES if f._name not in used]
    assert not missing, f"not on the dashboard: {missing}"
    for name in (
        "deskstream_routing_decisions",
        "deskstream_queue_depth",
        "deskstream_oldest_waiting_ticket_age_seconds",
        "deskstream_tickets_sla_at_risk",
    ):
        assert name in used, name
