"""ticket-api's own Prometheus families, on the shared naming scheme (deskstream.metrics).

Records in and out, dead letters, batch times, the commands consumer's lag, the relay's
lease and the MongoDB and Kafka connections are the shared families with
`service="ticket-api"`. Here: what only the ticket-api knows — the commands it applied,
the routing decisions among them, the outbox, and the desk's queues and SLA risk, which it
reads from MongoDB (see ops.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

COMMANDS = Counter(
    "deskstream_ticket_api_commands_total",
    "tickets.commands by type and outcome (applied, duplicate, rejected, undecodable)",
    ["type", "outcome"],
)
ROUTING_DECISIONS = Counter(
    "deskstream_routing_decisions_total",
    "The router's decisions as the ticket-api applied them, by outcome (assigned, queued, "
    "queue_moved, deflected), channel and team",
    ["outcome", "channel", "team"],
)

# The outbox relay.
RECOVERED = Counter(
    "deskstream_ticket_api_outbox_recovered_total",
    "Pending outbox records found already on Kafka by the read-back, marked without publishing",
)
PENDING = Gauge(
    "deskstream_ticket_api_outbox_pending", "Outbox documents waiting to be published (sampled)"
)
FAILURES = Counter(
    "deskstream_ticket_api_outbox_relay_failures_total",
    "Relay rounds that failed for a reason other than an unavailable dependency",
)

# The desk's queues, from MongoDB on a timer (ops.py). Every ticket-api replica reports
# the same desk-wide values: aggregate them with max(), not sum().
TICKETS_WAITING = Gauge(
    "deskstream_tickets_waiting",
    "Open tickets no agent has (new or open, unassigned), by team (none: not routed yet)",
    ["team"],
)
QUEUE_DEPTH = Gauge(
    "deskstream_queue_depth",
    "Tickets waiting in a team's queue (the router queued them: no agent had capacity)",
    ["team"],
)
OLDEST_WAITING_SECONDS = Gauge(
    "deskstream_oldest_waiting_ticket_age_seconds",
    "Age of the team's oldest ticket no agent has",
    ["team"],
)
SLA_AT_RISK = Gauge(
    "deskstream_tickets_sla_at_risk",
    "Open tickets past the warning share of their service's target but not past it, by "
    "the service's team, service and target (response: nobody took it; resolution)",
    ["team", "service", "target"],
)
SLA_BREACHED = Gauge(
    "deskstream_tickets_sla_breached",
    "Open tickets past their service's target, by the service's team, service and target",
    ["team", "service", "target"],
)
OPS_REFRESHED = Gauge(
    "deskstream_ticket_api_ops_refreshed_timestamp_seconds",
    "When the queue and SLA gauges were last read from MongoDB (Unix time)",
)
