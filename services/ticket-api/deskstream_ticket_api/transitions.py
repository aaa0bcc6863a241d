"""The ticket status lifecycle: new -> open -> pending -> resolved -> closed, with reopen.

One table decides every status change, whether an agent asks through REST or a command
implies it (assignment opens a new ticket; a requester's reply reopens a pending or
resolved one), so the two paths can never disagree.
"""

from __future__ import annotations

from deskstream.events import TicketStatus

S = TicketStatus

ALLOWED: dict[TicketStatus, frozenset[TicketStatus]] = {
    # pending from new: deflected to self-service or peers before an agent took it.
    S.NEW: frozenset({S.OPEN, S.PENDING}),
    S.OPEN: frozenset({S.PENDING, S.RESOLVED}),
    S.PENDING: frozenset({S.OPEN, S.RESOLVED}),
    S.RESOLVED: frozenset({S.CLOSED, S.OPEN}),  # open again: reopen
    S.CLOSED: frozenset({S.OPEN}),  # reopen
}

# Statuses in which a ticket holds a slot of its assignee's capacity.
ACTIVE = frozenset({S.NEW, S.OPEN, S.PENDING})


class TransitionError(ValueError):
    pass


def check(old: TicketStatus, new: TicketStatus) -> None:
    """Raise `TransitionError` with the allowed targets unless `old -> new` is a valid change."""
    if old == new:
        raise TransitionError(f"ticket is already {old.value}")
    allowed = ALLOWED[old]
    if new not in allowed:
        targets = ", ".join(sorted(s.value for s in allowed))
        raise TransitionError(
            f"cannot change status from {old.value} to {new.value}; allowed: {targets}"
        )


def allowed(old: TicketStatus, new: TicketStatus) -> bool:
    return new != old and new in ALLOWED[old]
