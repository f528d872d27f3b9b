"""The counters port: what a layer below the web counts (server/http/metrics.py `Metrics` is the
one implementation, exposed at /metrics). Here so that signalling/ and server/'s workers are given
one without importing the HTTP edge."""

from __future__ import annotations

from typing import Protocol


class Counters(Protocol):
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None: ...

    def observe(self, name: str, seconds: float) -> None: ...
