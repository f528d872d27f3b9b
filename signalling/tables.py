"""The visits table. It registers on the store's one MetaData (store/columns.py), and lives
here because signalling/ may import the store and billing/ but never server/."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    false,
    text,
    true,
)

from store.columns import UTCDateTime, metadata

visits = Table(
    "visits", metadata,
    Column("id", String(32), primary_key=True),
    Column("facility_id", String(32), ForeignKey("facilities.id"), nullable=False),
    Column("connection_id", String(32), ForeignKey("connections.id"), nullable=False),
    Column("family_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("person_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("booked_by", String(32), nullable=False),
    # The window [start_at, end_at) on the facility's block grid, in UTC.
    Column("start_at", UTCDateTime, nullable=False),
    Column("end_at", UTCDateTime, nullable=False),
    Column("blocks", Integer, nullable=False),
    # Prices and media mode are fixed at booking, so a settings change never reprices a visit.
    Column("minute_price", Integer, nullable=False),
    Column("media", String(8), nullable=False),
    Column("record", Boolean, nullable=False),
    # scheduled -> open -> live <-> paused -> ended; or cancelled, missed.
    Column("status", String(12), nullable=False),
    Column("end_reason", String(24), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Who is in the call: each party's media state ("absent", "joined", "connected"), the
    # process (node id) holding its socket, the kiosk's outbound media advancing, the relay's
    # own observation, and when any of these last changed: the meter reads them and decides
    # (billing/meter.py, "Presence"), so any process may record them.
    Column("family_media", String(12), nullable=False, default="absent"),
    Column("person_media", String(12), nullable=False, default="absent"),
    Column("family_node", String(32), nullable=True),
    Column("person_node", String(32), nullable=True),
    Column("person_sending", Boolean, nullable=False, default=True, server_default=true()),
    Column("server_media", Boolean, nullable=False, default=False, server_default=false()),
    Column("server_node", String(32), nullable=True),
    Column("media_changed_at", UTCDateTime, nullable=True),
    # The first moment the call stopped being live since the meter's last pass read the row
    # (the pass clears it): a stop and a return between two passes leave media_changed_at at
    # the return, and this at the stop (migration 0019).
    Column("first_stop_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    # The meter's persisted state (billing/meter.py), so another process can take it over.
    Column("meter", JSON, nullable=True),
    # The fencing epoch of the meter holder allowed to write (signalling/meters.py, "Fencing"):
    # each holder raises it when it takes the meter, and every pass writes only while the row
    # still carries its epoch, so a holder that lost its lease unnoticed writes nothing.
    Column("meter_epoch", Integer, nullable=False, default=0, server_default=text("0")),
    # The kiosk's view of the call's link (good, fair, poor) and why, in words, as it last
    # reported it with visit.media (docs/visits.md, "Link quality"): shown to staff, never billed.
    Column("link_quality", String(8), nullable=True),
    Column("link_reason", String(80), nullable=True),
    # Janus engine (KINWIRE_MEDIA_ENGINE=janus): the server (its API URL) holding the visit's
    # room and the room's id, set by the first join (signalling/janus_fleet.py, migration 0018).
    Column("media_server", String(300), nullable=True),
    Column("media_room", String(64), nullable=True),
    CheckConstraint("status IN ('scheduled', 'open', 'live', 'paused', 'ended', 'cancelled', "
                    "'missed')", name="ck_visits_status"),
    CheckConstraint("blocks >= 1", name="ck_visits_blocks"),
    Index("ix_visits_facility_start", "facility_id", "start_at"),
    Index("ix_visits_family_start", "family_id", "start_at"),
    Index("ix_visits_person_start", "person_id", "start_at"),
    # The meters' scans (signalling/meters.py): only the visits in a call, or scheduled, are
    # indexed, so these stay small however many visits are history (migration 0008).
    Index("ix_visits_in_call_end", "end_at",
          postgresql_where=text("status IN ('open', 'live', 'paused')"),
          sqlite_where=text("status IN ('open', 'live', 'paused')")),
    Index("ix_visits_scheduled_end", "end_at", postgresql_where=text("status = 'scheduled'"),
          sqlite_where=text("status = 'scheduled'")),
)


# The Janus servers' handles of Kinwire's parties (signalling/janus_events.py's `_Handle`, as
# JSON in `state`), keyed by the server's name (the events' emitter) and Janus's handle id: any
# process receiving a server's events reads and writes them here (migration 0018).
janus_handles = Table(
    "janus_handles", metadata,
    Column("server", String(256), primary_key=True),
    Column("handle_id", BigInteger, primary_key=True, autoincrement=False),
    Column("visit_id", String(32), nullable=False),
    Column("session_id", BigInteger, nullable=True),
    Column("state", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_janus_handles_visit", "server", "visit_id"),
    Index("ix_janus_handles_session", "server", "session_id"),
)
