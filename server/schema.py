"""The whole schema: the server's own tables, defined here, with billing's and signalling's,
all on the store's one MetaData (store/columns.py). The SQL database is the source of truth;
this is what Alembic's migrations (store/migrations) create: they are written by hand from these
definitions and checked against them by tests/integration/test_migrations.py."""

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
    Text,
    UniqueConstraint,
)

import billing.tables  # noqa: F401  (registers the money tables on the one MetaData)
from store.columns import BigSeq, UTCDateTime, metadata, utcnow  # noqa: F401

facilities = Table(
    "facilities", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

accounts = Table(
    "accounts", metadata,
    Column("id", String(32), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("facility_id", String(32), ForeignKey("facilities.id"), nullable=True),
    Column("name", String(200), nullable=False),
    Column("email", String(254), nullable=True, unique=True),
    Column("password_hash", String(200), nullable=True),
    Column("inmate_number", String(32), nullable=True),
    Column("pin_hash", String(200), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    CheckConstraint("role IN ('family', 'person', 'staff', 'admin')", name="ck_accounts_role"),
    UniqueConstraint("facility_id", "inmate_number", name="uq_accounts_inmate"),
)

devices = Table(
    "devices", metadata,
    Column("id", String(32), primary_key=True),
    Column("facility_id", String(32), ForeignKey("facilities.id"), nullable=False),
    Column("label", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

sessions = Table(
    "sessions", metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("device_id", String(32), ForeignKey("devices.id"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Index("ix_sessions_account", "account_id"),
)

# One attempt counter a key (server/attempts.py): reserved by a conditional UPDATE
# before a password or PIN is verified; `busy_until` is the one verification in flight,
# `next_at` the back-off.
attempts = Table(
    "attempts", metadata,
    Column("key", String(300), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("window_start", UTCDateTime, nullable=False),
    Column("busy_until", UTCDateTime, nullable=True),
    Column("next_at", UTCDateTime, nullable=True),
)

connections = Table(
    "connections", metadata,
    Column("id", String(32), primary_key=True),
    Column("facility_id", String(32), ForeignKey("facilities.id"), nullable=False),
    Column("family_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("person_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("blocked_by", String(32), nullable=True),
    Column("privileged", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # What the family says they are to the person (a code of connections.RELATIONSHIPS, never
    # free text: a free field would be an unpaid, unreviewed message), and when they last asked.
    Column("relationship", String(16), nullable=True),
    Column("requested_at", UTCDateTime, nullable=True),
    CheckConstraint("status IN ('requested', 'approved', 'denied')", name="ck_connections_status"),
    UniqueConstraint("family_id", "person_id", name="uq_connections_pair"),
    Index("ix_connections_person", "person_id"),
)

# One row per blocker of a connection: its family member, its person, and the facility's staff
# each hold their own block, and only its owner lifts it (a party can never clear a staff
# block). `connections.blocked_by` is kept as the summary the read paths test (NULL: no block).
connection_blocks = Table(
    "connection_blocks", metadata,
    Column("connection_id", String(32), ForeignKey("connections.id"), primary_key=True),
    Column("side", String(8), primary_key=True),
    Column("blocked_by", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    CheckConstraint("side IN ('family', 'person', 'staff')", name="ck_connection_blocks_side"),
)

audit_log = Table(
    "audit_log", metadata,
    Column("seq", BigSeq, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor_id", String(32), nullable=False),
    Column("actor_role", String(16), nullable=False),
    Column("facility_id", String(32), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", String(64), nullable=True),
    Column("details", JSON, nullable=False),
    Index("ix_audit_facility_seq", "facility_id", "seq"),
)

# The HTTP idempotency record: the first successful response to (account, key), returned again
# for a repeat with the same body. Written in the same transaction as the effect it describes.
idempotency = Table(
    "idempotency", metadata,
    Column("account_id", String(32), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", JSON, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

# Rows of these tables are never updated or deleted; triggers enforce it in both databases.
APPEND_ONLY = ("ledger_transfers", "audit_log")

# --- the per-user event stream (API.md: pushes with `seq`) ---------------------------------

# One row per user: the last sequence number handed out, and how far old events were pruned
# (a sync from before that point is told to reset).
event_heads = Table(
    "event_heads", metadata,
    Column("account_id", String(32), primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("pruned_through", BigInteger, nullable=False),
)

events = Table(
    "events", metadata,
    Column("account_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("type", String(32), nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_events_at", "at"),
)

# --- messages and photos -------------------------------------------------------------------

messages = Table(
    "messages", metadata,
    Column("id", String(32), primary_key=True),
    Column("facility_id", String(32), ForeignKey("facilities.id"), nullable=False),
    Column("sender_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("recipient_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("body", Text, nullable=False),
    Column("photo_count", Integer, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("cod", Boolean, nullable=False),
    # held -> delivered | rejected; `opened_at` marks the read receipt, `paid_by` who paid.
    Column("status", String(16), nullable=False),
    Column("held_for", String(64), nullable=True),
    Column("paid_by", String(32), nullable=True),
    Column("client_key", String(128), nullable=False),
    Column("reject_reason", String(500), nullable=True),
    Column("reviewed_by", String(32), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("opened_at", UTCDateTime, nullable=True),
    Column("sender_removed", Boolean, nullable=False),
    Column("recipient_removed", Boolean, nullable=False),
    CheckConstraint("status IN ('held', 'delivered', 'rejected')", name="ck_messages_status"),
    UniqueConstraint("sender_id", "client_key", name="uq_messages_client_key"),
    Index("ix_messages_recipient", "recipient_id", "created_at"),
    Index("ix_messages_sender", "sender_id", "created_at"),
    Index("ix_messages_review", "facility_id", "status"),
)

photos = Table(
    "photos", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("message_id", String(32), ForeignKey("messages.id"), nullable=True),
    Column("position", Integer, nullable=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_photos_message", "message_id"),
    Index("ix_photos_owner_created", "owner_id", "created_at"),
)

# --- video visits: defined by signalling/ (which may not import server/), on the same MetaData
from signalling.tables import visits  # noqa: E402,F401

# One row per recorded relay-mode visit (server/recordings.py), written when its first file is
# complete; its files are its segments (below; more than one when the relay moved to another
# process mid-visit). `segment` is how many it has; `location`, `sha256` and `content_type` are
# the first segment's, `bytes` and `duration_ms` the sum, `started_at` the first start and
# `ended_at` the last end. Deleted (with every segment's blob, and an audit entry) when
# `retain_until` has passed.
recordings = Table(
    "recordings", metadata,
    Column("id", String(32), primary_key=True),
    Column("visit_id", String(32), ForeignKey("visits.id"), nullable=False),
    # 1 for the visit's first file; a relay that restarts on another process writes the next.
    Column("segment", Integer, nullable=False),
    Column("facility_id", String(32), ForeignKey("facilities.id"), nullable=False),
    Column("family_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("person_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(32), nullable=False),
    Column("location", String(200), nullable=False),  # the blob key
    Column("retain_until", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("visit_id", "segment", name="uq_recordings_visit_segment"),
    Index("ix_recordings_facility_started", "facility_id", "started_at"),
    Index("ix_recordings_retain_until", "retain_until"),
)

# Each file of a recording, in the order they were kept; the file is in the blob store under
# `location`, with its own SHA-256.
recording_segments = Table(
    "recording_segments", metadata,
    Column("recording_id", String(32), ForeignKey("recordings.id"), primary_key=True),
    Column("segment", Integer, primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(32), nullable=False),
    Column("location", String(200), nullable=False),  # the blob key
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_recording_segments_location", "location"),
)

# --- email: the outbox, password resets, notification choices (server/mail.py) -------------

# One email to send, written in the same transaction as what it reports; the sender
# (server/mail.py MailSender) claims due rows, sends them and marks them sent. A row stays until
# it is sent or has used its attempts, so nothing is lost if the process dies. `batch_key`
# groups the emails that must not repeat (one per thread per quiet period, one per visit
# status); `body` is the email's own text, which never holds a message's body or a token's hash.
mail_outbox = Table(
    "mail_outbox", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=True),
    Column("to_addr", String(254), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("batch_key", String(120), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("failed_at", UTCDateTime, nullable=True),
    Column("last_error", String(200), nullable=True),
    Index("ix_mail_outbox_due", "due_at"),
    Index("ix_mail_outbox_batch", "batch_key", "created_at"),
)

# A password reset link's token, stored only as its SHA-256; used once (`used_at`), expiring.
password_resets = Table(
    "password_resets", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Index("ix_password_resets_account", "account_id"),
)

# A family's email choices: the kinds it turned off (none: all on), and the key its
# unsubscribe links carry (server/mail.py). `low_sent` remembers that the low-balance email
# went, until the balance is above the threshold again. `language`: what the emails are
# written in (server/mail_words.py; none: English).
notification_prefs = Table(
    "notification_prefs", metadata,
    Column("account_id", String(32), ForeignKey("accounts.id"), primary_key=True),
    Column("off", JSON, nullable=False),
    Column("unsubscribe_key", String(64), nullable=False, unique=True),
    Column("low_sent", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("language", String(8), nullable=True),
)

# A browser's Web Push subscription (server/push.py): where its push service takes messages
# for it, and the keys the payload is encrypted to (RFC 8291). A family may have several.
push_subscriptions = Table(
    "push_subscriptions", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("endpoint", String(1000), nullable=False, unique=True),
    Column("p256dh", String(100), nullable=False),
    Column("auth", String(40), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_push_subscriptions_account", "account_id"),
)

# One browser notification to deliver, written with the email it accompanies; sent by
# server/push.py PushSender as mail_outbox rows are by MailSender.
push_outbox = Table(
    "push_outbox", metadata,
    Column("id", String(32), primary_key=True),
    Column("subscription_id", String(32), nullable=False),
    Column("title", String(200), nullable=False),
    Column("body", String(500), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("failed_at", UTCDateTime, nullable=True),
    Column("last_error", String(200), nullable=True),
    Index("ix_push_outbox_due", "due_at"),
)
