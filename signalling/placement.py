"""Where a relayed visit is relayed: each process's relay capacity, its advertised load, and the
slots that make the capacity hold across processes (docs/visits.md, "Relay capacity").

Load: every process touches its load in the broker's presence key LOADS every third of the
relay lease (ttl: the lease), and again whenever its count changes. The member is the load
itself, `node|seq|relayed|capacity|sockets` (presence holds names only): a process leaves its
previous member when it touches a new one, and a reader keeps the highest `seq` per node, so a
leave that failed only leaves an older member to be ignored until its ttl. A process whose
member has lapsed is gone: nothing is placed on it, and its visits are placed again.

Slots: the advertised load is late by up to a third of a lease, so two processes placing at
once could both see room on the same process. Room is therefore taken, not read: a process
with capacity C has C slot leases `relay-slot:<node>:<i>`, and placing visit V there takes one
(held by V; SET NX in Redis, so at most C visits hold one). The relaying process renews its
visit's slot with the visit's lease and releases it when the relay ends; a dead process's
slots lapse with it. The lease `relay:<visit>` names the process relaying the visit, as
`<node>/<token>/<slot>` (a token per relay run, so that a relay that is winding down cannot
release the next one's lease on the same process; the slot, so that the process can begin a
run placed on it before the placing process's message arrives).
"""

from __future__ import annotations

from dataclasses import dataclass

from signalling.leases import Lease, LeaseBroker

LOADS = "relays"  # broker presence key of the processes' relay loads


class RelayFull(Exception):
    """Every process that relays is at its capacity (the join is refused: `relay_full`)."""


@dataclass(frozen=True)
class Load:
    node: str
    seq: int
    relayed: int
    capacity: int
    sockets: int

    def member(self) -> str:
        return f"{self.node}|{self.seq}|{self.relayed}|{self.capacity}|{self.sockets}"

    @property
    def room(self) -> bool:
        return self.relayed < self.capacity


def parse(member: str) -> Load | None:
    try:
        node, seq, relayed, capacity, sockets = member.split("|")
        return Load(node, int(seq), int(relayed), int(capacity), int(sockets))
    except ValueError:
        return None  # not a load (a newer version's format): ignored


def latest(members: set[str]) -> dict[str, Load]:
    """Each node's latest advertised load."""
    found: dict[str, Load] = {}
    for member in members:
        load = parse(member)
        if load is not None and (load.node not in found or load.seq > found[load.node].seq):
            found[load.node] = load
    return found


def candidates(loads: dict[str, Load], avoid: str | None = None) -> list[Load]:
    """The processes with room, best first: fewest sockets (a process busy with sockets is
    the worse place for media), then fewest relayed visits, then by node id (stable)."""
    return sorted((load for load in loads.values() if load.room and load.node != avoid),
                  key=lambda load: (load.sockets, load.relayed, load.node))


def lease_name(visit_id: str) -> str:
    return f"relay:{visit_id}"


def slot_name(node: str, slot: int) -> str:
    return f"relay-slot:{node}:{slot}"


def leases(broker: LeaseBroker, node: str, visit_id: str, holder: str, slot: int,
           ttl_s: float) -> tuple[Lease, Lease]:
    """A relayed visit's two leases: the visit's (held by `holder`) and its slot on `node`
    (held by the visit)."""
    return (Lease(broker, lease_name(visit_id), holder, ttl_s),
            Lease(broker, slot_name(node, slot), visit_id, ttl_s))


def node_of(holder: str) -> str:
    """The node id in a relay lease's holder (`<node>/<token>/<slot>`)."""
    return holder.split("/", 1)[0]


def slot_of(holder: str) -> int:
    return int(holder.rsplit("/", 1)[1])
