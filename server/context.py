"""Everything a handler may need, built once by create_app and passed down (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from billing.gateway import PaymentGateway
from billing.hosted import HostedPayments
from server.auth import LoginLimiter, Passwords
from server.broker import Broker
from server.http.metrics import Metrics
from server.settings import Settings
from store import Store

if TYPE_CHECKING:  # built by create_app; a one-shot CLI context has none of them
    from server.blobs.configured import Blobs
    from server.janus_recordings import JanusRecordings
    from server.mail import MailSender, Notifier
    from server.photos import PhotoWork
    from server.push import PushSender, Vapid
    from server.recordings import Recordings
    from signalling.janus_fleet import JanusFleet
    from signalling.media_engine import RelayMedia
    from signalling.meters import Meters
    from signalling.relay import Relay


@dataclass
class Context:
    settings: Settings
    store: Store
    broker: Broker
    gateway: PaymentGateway  # the direct card API (POST /purchases: tests and programs)
    hosted: HostedPayments  # the hosted checkout the apps use (billing/hosted.py)
    passwords: Passwords
    login_limiter: LoginLimiter
    clock: Callable[[], datetime]
    # A serving process's collaborators, built before the context (server/app.py); None in
    # a one-shot CLI command's context (server/cli.py), which serves no visit or photo.
    meters: Meters | None = None
    relay: Relay | None = None  # relay-mode media
    janus: JanusFleet | None = None  # relay-mode media on Janus (KINWIRE_MEDIA_ENGINE=janus)
    # What carries relay-mode visits, asked by the gateway: the embedded relay, or Janus once
    # the fleet has started (signalling/relay_media.py).
    media: RelayMedia | None = None
    photo_work: PhotoWork | None = None  # the photo pool
    recordings: Recordings | None = None
    janus_recordings: JanusRecordings | None = None  # Janus's .mjr files made records
    blobs: Blobs | None = None  # the photo and recording stores
    metrics: Metrics = field(default_factory=Metrics)  # create_app's; a private one elsewhere
    # Email (server/mail.py): None when no SMTP relay is configured.
    notifier: Notifier | None = None
    mail_sender: MailSender | None = None
    # Web Push (server/push.py): None without KINWIRE_VAPID_PRIVATE_KEY.
    vapid: Vapid | None = None
    push_sender: PushSender | None = None
