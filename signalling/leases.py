"""A lease in the broker, held by one holder: a visit's meter (`meter:<visit>`,
signalling/meters.py), a visit's relay (`relay:<visit>`) and the relay's slot on its process
(`relay-slot:<node>:<i>`, signalling/placement.py).

The rules every holder follows, written here once:
- `acquire` gives the grant's epoch (0: another holds it), and `renew` confirms a lease before
  its work begins; the broker's errors reach the caller, which retries on its own round (the
  scan, the next signal).
- `keep` renews a lease in use: False only when the broker says it is no longer this
  holder's, and the holder then stops. A renewal that fails (the broker away or erring) keeps
  the lease: no broker, no rival, since nobody else can take it while the broker is away; a
  failover that hands it to another anyway is caught by the holder's own fence (the meter's
  row epoch) or by its next renewal. The failure goes to the caller's `on_error` to be logged.
- `release` is best effort: a lease not released (the broker away) lapses with its ttl.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class LeaseBroker(Protocol):
    """The broker's lease operations (server/broker's Broker; signalling may not import it)."""

    async def acquire(self, name: str, holder: str, ttl_s: float) -> int: ...

    async def renew(self, name: str, holder: str, ttl_s: float) -> bool: ...

    async def release(self, name: str, holder: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Lease:
    broker: LeaseBroker
    name: str
    holder: str
    ttl_s: float

    async def acquire(self) -> int:
        """The grant's epoch (the fencing token), 0 if another holds the lease."""
        return await self.broker.acquire(self.name, self.holder, self.ttl_s)

    async def renew(self) -> bool:
        """Renew; False when it is lost. The broker's errors reach the caller (a claim that
        cannot confirm its lease does not begin)."""
        return await self.broker.renew(self.name, self.holder, self.ttl_s)

    async def keep(self, on_error: Callable[[Exception], None]) -> bool:
        """Renew a lease already in use: False when it is lost, True when kept or when the
        broker failed (given to `on_error`)."""
        try:
            return await self.renew()
        except Exception as error:
            on_error(error)
            return True

    async def release(self) -> bool:
        """Give it up if this holder still holds it; False if not, or if the broker failed."""
        try:
            return await self.broker.release(self.name, self.holder)
        except Exception:
            return False
