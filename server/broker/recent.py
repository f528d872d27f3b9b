"""What this process published lately, per user, for its own feeds (server/gateway/hub.py).

Events this process committed are signalled through the broker; a feed here that is signalled
for them pushes them from this memory instead of reading them back from the store. Only
committed events get here (events.Outbox.signal runs after the commit); a feed uses them only
when they continue its sockets' sequence without a gap, otherwise it reads the store. A feed
consumes them within milliseconds, so a small budget of events in all (oldest users dropped
first) is plenty, and bounds the memory (a message body may be 30,000 characters). Each broker
holds one: it is per process, as the broker is.
"""

from __future__ import annotations

from collections import deque
from typing import Any

RECENT_PER_USER = 8
RECENT_EVENTS = 512


class RecentEvents:
    """Per user, the last RECENT_PER_USER events (anything with a `seq`) in order; at most
    RECENT_EVENTS in all."""

    def __init__(self) -> None:
        self.users: dict[str, deque[Any]] = {}  # least recently written first
        self.count = 0

    def add(self, account_id: str, event: Any) -> None:
        kept = self.users.pop(account_id, None)
        if kept is None:
            kept = deque(maxlen=RECENT_PER_USER)
        elif kept[-1].seq >= event.seq:
            self.count -= len(kept)  # out of order (another writer interleaved): start again
            kept.clear()
        self.users[account_id] = kept  # now the most recently written
        self.count -= len(kept)
        kept.append(event)
        self.count += len(kept)
        while self.count > RECENT_EVENTS:
            oldest = next(iter(self.users))
            self.count -= len(self.users.pop(oldest))

    def get(self, account_id: str) -> deque[Any] | None:
        return self.users.get(account_id)
