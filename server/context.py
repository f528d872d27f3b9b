"""Everything a handler may need, built once by create_app and passed down (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing.gateway import PaymentGateway
from server.auth import LoginLimiter, Passwords
from server.broker import Broker
from server.http.metrics import Metrics
from server.settings import Settings
from store import Store


@dataclass
class Context:
    settings: Settings
    store: Store
    broker: Broker
    gateway: PaymentGateway
    passwords: Passwords
    login_limiter: LoginLimiter
    clock: Callable[[], datetime]
    meters: Any = None  # signalling.meters.Meters, on a serving process
    relay: Any = None  # signalling.relay.Relay (relay-mode media), on a serving process
    photo_work: Any = None  # server.photos.PhotoWork (the photo pool), on a serving process
    recordings: Any = None  # server.recordings.Recordings
    blobs: Any = None  # server.blobs.configured.Blobs: the photo and recording stores
    metrics: Metrics = field(default_factory=Metrics)  # create_app's; a private one elsewhere
