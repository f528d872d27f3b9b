"""Settings: one frozen dataclass, read from the environment once at start.

Every field is documented in its metadata (the README's settings table is generated from it by
`kinwire settings`), has a default that runs the embedded configuration, and is checked by
`validate()` so that a bad deployment fails at start with a message naming the variable.
Units come last in names (`session_ttl_s`, `request_body_bytes_max`).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting is missing or out of range; the message names the environment variable."""


def _setting(default: Any, doc: str, env: str | None = None, lo: int | None = None,
             hi: int | None = None, secret: bool = False) -> Any:
    meta = {"doc": doc, "env": env, "lo": lo, "hi": hi}
    if isinstance(default, tuple | list):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta, repr=not secret)  # a secret stays out of logs


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "Address `kinwire serve` listens on.")
    port: int = _setting(8080, "TCP port `kinwire serve` listens on.", lo=0, hi=65535)
    data_dir: str = _setting("./data",
                             "Where the SQLite file, photos and recordings live by default.")
    database_url: str = _setting(
        "", "`sqlite:///path/file.db` or `postgresql://user@host/db`; empty means "
        "`sqlite:///<data_dir>/kinwire.db`. Through PgBouncer in transaction mode add "
        "`?pool_mode=transaction` (no prepared statement cache; docs/deploy.md).",
        env="DATABASE_URL")
    redis_url: str = _setting("", "Redis for fan-out, presence and leases: redis://host:port/db "
                              "(TLS rediss://), redis+sentinel://s1:26379,s2:26379/service[/db] "
                              "or redis+cluster://n1:6379,n2:6379 (docs/deploy.md, \"Redis\"); "
                              "empty means the in-memory broker (one process only).",
                              env="REDIS_URL")
    allowed_origins: tuple[str, ...] = _setting(
        (), "Comma-separated Origin allowlist for /ws; empty allows only the server's own origin.")
    public_url: str = _setting("", "The URL people reach the service at (printed at start); "
                               "email's links (password reset, unsubscribe) start with it.")
    trusted_proxies: tuple[str, ...] = _setting(
        (), "Comma-separated addresses or networks of reverse proxies (nginx) whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; empty believes nobody "
        "(docs/deploy.md).")
    demo: bool = _setting(False, "Seed the demo facility, people, staff and family at start.")
    log_level: str = _setting("INFO", "Python logging level.")
    log_format: str = _setting("auto", "`json` (one object a line, with request ids), `text`, "
                               "or `auto`: text when the logs go to a terminal, JSON otherwise.")
    payment_gateway: str = _setting("sandbox", "Payment gateway; only `sandbox` is built in.")
    sandbox_pay_secret: str = _setting("", "The sandbox processor's signing key for its "
                                       "checkout pages and payment confirmations; empty: a "
                                       "random one per process (set one shared value when "
                                       "several processes serve one address).", secret=True)
    drain_timeout_s: float = _setting(20.0, "On SIGTERM, how long `kinwire serve` waits for "
                                      "HTTP requests in flight before it exits (docs/deploy.md).")

    visit_minute_s: float = _setting(60.0, "Length of one billed visit minute in seconds "
                                     "(shortened only by tests and demos).")
    credit_block: int = _setting(500, "Credits are bought in multiples of this.", lo=1, hi=100_000)
    purchase_fee_cents: int = _setting(150, "Processing fee per purchase, in cents.",
                                       lo=0, hi=10_000)
    purchase_credits_max: int = _setting(50_000, "Most credits one purchase may buy.",
                                         lo=1, hi=10_000_000)
    gift_credits_max: int = _setting(50_000, "Most credits one gift may move.", lo=1, hi=10_000_000)

    session_ttl_s: int = _setting(14 * 86_400, "Lifetime of a family, staff or admin session.",
                                  lo=60, hi=366 * 86_400)
    kiosk_idle_sign_out_s: float = _setting(120.0, "The kiosk page signs its person out after "
                                            "this long without input (not during a visit), "
                                            "counting down the last 30 s on screen.",
                                            lo=1, hi=86_400)
    kiosk_session_ttl_s: int = _setting(2 * 3600, "Lifetime of a kiosk or tablet session.",
                                        lo=60, hi=86_400)
    login_failures_max: int = _setting(5, "Failed logins allowed per account and client address "
                                       "(x10 per address) in one window before 429; PINs: per "
                                       "person on one kiosk, then back-off (docs/security.md).",
                                       lo=1, hi=1000)
    login_window_s: int = _setting(900, "The failed-login window.", lo=1, hi=86_400)
    login_backoff_base_s: float = _setting(30.0, "First PIN back-off past the limit; doubles with "
                                           "each further failure, up to the window.",
                                           lo=0.001, hi=86_400)
    argon2_time_cost: int = _setting(3, "argon2id passes (OWASP: >= 2).", lo=1, hi=20)
    argon2_memory_kib: int = _setting(65_536, "argon2id memory per hash in KiB (OWASP: >= 19456).",
                                      lo=8, hi=4_194_304)
    argon2_workers: int = _setting(2, "Threads hashing passwords and PINs (a pool of their own, "
                                   "apart from photo work).", lo=1, hi=64)

    http_header_timeout_s: float = _setting(15.0, "Time a connection has to send a whole request's "
                                            "headers, from connecting or from its last answer "
                                            "(also the idle keep-alive).", lo=0.1, hi=3600)
    http_body_timeout_s: float = _setting(60.0, "Time a request has to send its whole body "
                                          "(JSON or a photo) before 408.", lo=0.1, hi=3600)
    request_body_bytes_max: int = _setting(256 * 1024, "Largest JSON request body.",
                                           lo=1024, hi=64 * 1024 * 1024)
    page_size_max: int = _setting(100, "Most rows one listing page returns.", lo=1, hi=1000)
    export_rows_max: int = _setting(10_000, "Most rows one CSV export (audit log, statement) "
                                    "holds; a wider range is refused with a request to narrow it.",
                                    lo=1, hi=1_000_000)
    blob_dir: str = _setting("", "Where photos are stored when KINWIRE_BLOB_URL is empty; "
                             "empty means <data_dir>/blobs.")
    blob_url: str = _setting("", "`s3://bucket/prefix`: photos (under `photos/`) and recordings "
                             "(under `recordings/`) go to that S3 or S3-compatible store, so "
                             "any process serves any of them; empty keeps them in the folders "
                             "KINWIRE_BLOB_DIR and KINWIRE_RECORDINGS_DIR (docs/deploy.md, "
                             "\"Object storage\").")
    s3_endpoint_url: str = _setting("", "S3-compatible server's URL (SeaweedFS, MinIO, Ceph; "
                                    "path-style addresses); empty means AWS S3.")
    s3_region: str = _setting("", "S3 region; empty means botocore's default (AWS_REGION).")
    s3_access_key_id: str = _setting("", "S3 access key id; empty (with the secret) means "
                                     "botocore's own credentials chain (AWS_* variables, an "
                                     "instance or pod role).")
    s3_secret_access_key: str = _setting("", "S3 secret access key (never logged or shown).",
                                         secret=True)
    s3_timeout_s: float = _setting(10.0, "S3: longest wait to connect, or for the next bytes of "
                                   "an answer; a request is tried up to 3 times, then the "
                                   "client gets 503 `unavailable`.")
    s3_part_bytes: int = _setting(8 * 1024 * 1024, "Files larger than this go to S3 as a "
                                  "multipart upload of parts this size.",
                                  lo=5 * 1024 * 1024, hi=1024 * 1024 * 1024)
    message_chars_max: int = _setting(30_000, "Longest message text, in characters.",
                                      lo=1, hi=1_000_000)
    photos_per_message_max: int = _setting(5, "Most photos one message carries.", lo=0, hi=50)
    photo_bytes_max: int = _setting(10 * 1024 * 1024, "Largest photo upload (413 beyond).",
                                    lo=1024, hi=200 * 1024 * 1024)
    photo_pixels_max: int = _setting(12_600_000, "Most pixels a photo may declare; checked "
                                     "before it is decoded (12.6 MP: a 4096x3072 PNG decodes "
                                     "in about 0.8 s here, docs/security.md).",
                                     lo=1, hi=500_000_000)
    photo_workers: int = _setting(1, "Threads decoding and re-encoding photos (a pool of their "
                                  "own, apart from password hashing).", lo=1, hi=64)
    photo_queue_max: int = _setting(4, "Photos waiting for a photo thread before more are "
                                    "refused 503 busy.", lo=0, hi=1000)
    photo_side_px_max: int = _setting(2048, "Photos are scaled to fit this on their long side.",
                                      lo=64, hi=16_384)
    photo_uploads_per_hour_max: int = _setting(60, "Photo uploads per user per hour, counted "
                                               "before the work, one at a time.",
                                               lo=1, hi=100_000)
    ws_frame_bytes_max: int = _setting(64 * 1024, "Largest WebSocket frame accepted (else 1009).",
                                       lo=1024, hi=16 * 1024 * 1024)
    ws_send_queue_max: int = _setting(256, "Frames queued for one socket before it is closed "
                                      "as too slow (4008).", lo=8, hi=100_000)
    ws_heartbeat_s: float = _setting(20.0, "WebSocket ping interval; a missed pong closes it.")
    ws_auth_timeout_s: float = _setting(10.0, "Time a socket has to authenticate.")
    ws_commands_per_s: int = _setting(20, "Commands per second one user may send, across all "
                                      "their sockets (burst twice that): on all processes "
                                      "when REDIS_URL is set, else on this one; more are "
                                      "refused `rate_limited`.",
                                      lo=1, hi=100_000)
    ws_connections_per_user_max: int = _setting(10, "Open sockets per user: on all processes "
                                                "when REDIS_URL is set, else on this one.",
                                                lo=1, hi=10_000)
    ws_connections_lease_s: float = _setting(30.0, "With REDIS_URL: a socket counts towards "
                                             "its user's limit until this long after its "
                                             "process last renewed it (every third of it), so "
                                             "the sockets of a process that died stop "
                                             "counting within this.")
    sync_page_max: int = _setting(500, "Most events one sync reply carries (`more` says "
                                  "there are more).", lo=1, hi=100_000)
    event_retention_s: int = _setting(30 * 86_400, "How long events are kept for sync; an "
                                      "older `since` gets `reset`.", lo=60, hi=3650 * 86_400)
    turn_secret: str = _setting("", "Shared secret with coturn (`static-auth-secret`) for TURN "
                                "REST credentials; empty means no TURN servers are offered.")
    turn_urls: tuple[str, ...] = _setting((), "Comma-separated TURN URLs, e.g. "
                                          "`turn:turn.example:3478?transport=udp`.")
    stun_urls: tuple[str, ...] = _setting((), "Comma-separated STUN URLs.")
    meter_lease_s: float = _setting(6.0, "A visit meter's lease in the broker; another process "
                                    "takes a meter over within this after its holder dies.")
    node_lease_s: float = _setting(3.0, "A process's liveness lease in the broker, renewed "
                                   "every third of it: a visit party counts as present only "
                                   "while the process holding its socket holds it, so a crash "
                                   "pauses the meter within this. Capped at half of "
                                   "KINWIRE_METER_LEASE_S, so that a process taking a dead "
                                   "one's meter over finds its parties gone (docs/visits.md, "
                                   "\"Trust\").")
    media_stall_s: float = _setting(10.0, "A visit's media stalled longer than this pauses "
                                    "the meter: the kiosk's outbound audio or video not "
                                    "advancing (direct mode, the kiosk reports it), or no "
                                    "frames from a party reaching the server (relay mode).")
    media_gap_s: float = _setting(2.0, "The other party's media (video frames, or audio "
                                  "packets when it sends no video) stopped this long is an "
                                  "outage: the trusted side (the kiosk, or the server in relay "
                                  "mode) reports it and the meter pauses from the last frame "
                                  "(docs/visits.md, \"Outages\"); capped at "
                                  "KINWIRE_MEDIA_STALL_S.")
    relay_lease_s: float = _setting(6.0, "A relay-mode visit's lease in the broker: the process "
                                    "holding it terminates both parties' peer connections; a "
                                    "dead holder's visits are free again after this.")
    relay_capacity: int = _setting(20, "The most relay-mode visits this process relays at once; "
                                   "a visit is placed on a process with room (the one with "
                                   "the fewest sockets), and a join when every process is full "
                                   "is refused with `relay_full` (docs/visits.md, \"Relay "
                                   "capacity\"). 0: this process relays none.", lo=0, hi=10_000)
    relay_loopback_only: bool = _setting(False, "Relay mode's server-side peers use relay-only "
                                         "ICE through TURN servers on loopback (tests on one "
                                         "machine; docs/turn.md).")
    ice_relay_only: bool = _setting(False, "Tell visit clients to use relay-only ICE "
                                    "(`ice_transport_policy: relay` in GET /visits/{id}/ice): "
                                    "only TURN candidates, so neither party learns the other's "
                                    "address; the tests' loopback coturn needs it.")
    relay_transcode: bool = _setting(False, "Relay mode decodes each party's media and encodes "
                                     "it again for every consumer (and x264 for the recording) "
                                     "instead of forwarding the encoded frames; kept as the "
                                     "benchmarks' baseline (docs/BENCHMARKS.md).")
    recordings_dir: str = _setting("", "The recordings' blob store (a folder) when "
                                   "KINWIRE_BLOB_URL is empty: kept recordings under "
                                   "<facility_id>/; files being written under .partial/ (on S3 "
                                   "too); empty means <data_dir>/recordings.")
    media_engine: str = _setting("aiortc", "What carries relay-mode visits' media: `aiortc` "
                                 "(the embedded forwarding relay, this process) or `janus` "
                                 "(a fleet of Janus servers, KINWIRE_JANUS_*: relay-mode visits "
                                 "placed on it and billed from its events; the apps and the "
                                 "reference client publish there: docs/deploy.md, \"Janus "
                                 "fleet\").")
    janus_urls: tuple[str, ...] = _setting((), "Comma-separated Janus HTTP API URLs, one per "
                                           "server, e.g. `http://10.0.0.5:8088/janus`.")
    janus_public_urls: tuple[str, ...] = _setting((), "Comma-separated URLs at which clients "
                                                  "reach each Janus server's API, in the order "
                                                  "of KINWIRE_JANUS_URLS (its TLS proxy, e.g. "
                                                  "`https://janus1.kinwire.example/janus`). "
                                                  "Empty: clients are given "
                                                  "KINWIRE_JANUS_URLS.")
    janus_admin_urls: tuple[str, ...] = _setting((), "Comma-separated Janus admin API URLs, "
                                                 "in the order of KINWIRE_JANUS_URLS "
                                                 "(`http://10.0.0.5:7088/admin`): Kinwire's "
                                                 "health check (ping).")
    janus_api_secret: str = _setting("", "Janus's `api_secret`: Kinwire's own requests carry "
                                     "it (never sent to a client).", secret=True)
    janus_admin_secret: str = _setting("", "Janus's `admin_secret`, for the admin API's ping "
                                       "(never sent to a client).", secret=True)
    janus_token_secret: str = _setting("", "Janus's `token_auth_secret`: Kinwire signs each "
                                       "party's token with it (HMAC-SHA1, expiring with the "
                                       "visit).", secret=True)
    janus_room_admin_key: str = _setting("", "The VideoRoom plugin's `admin_key`: only a "
                                         "request with it creates a room.", secret=True)
    janus_events_password: str = _setting("", "The password Janus's event handler sends "
                                          "(HTTP basic auth, user `janus`) with its posts to "
                                          "/internal/janus/events; any other is refused 401.",
                                          secret=True)
    janus_events_bytes_max: int = _setting(1024 * 1024, "Largest event-handler post "
                                           "(a batch of events) accepted (413 beyond).",
                                           lo=1024, hi=64 * 1024 * 1024)
    janus_recordings_dir: str = _setting("", "Where Kinwire reads a recorded visit's .mjr "
                                         "files and makes them a recording when the visit "
                                         "ends: the folder the Janus servers write (each "
                                         "room's `rec_dir`), shared with Kinwire's processes "
                                         "at the same path, or, with "
                                         "KINWIRE_JANUS_RECORDINGS_URLS, the folder they are "
                                         "pulled into from the Janus hosts. Empty: no Janus "
                                         "visit's recording is kept.")
    janus_rec_dir: str = _setting("", "The rooms' `rec_dir`: the folder each Janus host writes "
                                  "a recorded visit's .mjr files to, as that host names it, "
                                  "when it is not KINWIRE_JANUS_RECORDINGS_DIR (hosts that "
                                  "share no folder with Kinwire: KINWIRE_JANUS_RECORDINGS_URLS)."
                                  " Empty: KINWIRE_JANUS_RECORDINGS_DIR.")
    janus_recordings_urls: tuple[str, ...] = _setting(
        (), "Comma-separated URLs of the Janus hosts' recording folders, served by nginx "
        "(deploy/nginx/janus-recordings.conf), for hosts that share no folder with Kinwire: "
        "an ended visit's .mjr files are pulled from each into KINWIRE_JANUS_RECORDINGS_DIR "
        "and deleted on the host once its recording is kept. Empty: the folder is shared.")
    janus_recordings_ca: str = _setting("", "A CA certificate file (PEM) that signs the "
                                        "certificates of KINWIRE_JANUS_RECORDINGS_URLS (a "
                                        "private network's CA). Empty: the system's CAs.")
    janus_recordings_password: str = _setting("", "The password (user `kinwire`, HTTP basic "
                                              "auth) of KINWIRE_JANUS_RECORDINGS_URLS.",
                                              secret=True)
    orphan_grace_s: float = _setting(86_400.0, "Housekeeping deletes (and audits) a blob that "
                                     "no recording or photo references once it is this old, "
                                     "and a file under a .partial/ folder unchanged this long "
                                     "(a recording or upload a crash left behind); "
                                     "docs/operations.md, \"Orphans\".")
    housekeeping_lease_s: float = _setting(
        10.0, "Housekeeping (pruning events, marking visits nobody joined missed) runs on the "
        "one process holding this lease in the broker, a pass every third of it; another "
        "process takes it over within this after its holder dies (server/housekeeping.py).")
    housekeeping_batch_rows: int = _setting(
        1000, "Most rows one housekeeping transaction deletes or updates; a pass runs batches "
        "until one comes back short.", lo=1, hi=100_000)
    smtp_url: str = _setting("", "The SMTP relay for email (notifications and password "
                             "reset): `smtp://user:pass@host:587` (STARTTLS, required), "
                             "`smtps://...:465` (TLS from the start) or "
                             "`smtp+plain://host:25` (never TLS: a relay on this host or a "
                             "private network only); "
                             "empty with KINWIRE_SMTP_HOST empty means no email, said once at "
                             "start (docs/operations.md, \"Email\").", secret=True)
    smtp_host: str = _setting("", "The SMTP relay's host, when KINWIRE_SMTP_URL is empty.")
    smtp_port: int = _setting(587, "The SMTP relay's port.", lo=1, hi=65535)
    smtp_tls: str = _setting("starttls", "`starttls` (required: the relay must offer it), "
                             "`tls` (TLS from the start) or `none` (a relay on this host or a "
                             "private network only).")
    smtp_user: str = _setting("", "SMTP AUTH user; empty sends without AUTH.")
    smtp_password: str = _setting("", "SMTP AUTH password (never logged or shown).",
                                  secret=True)
    smtp_timeout_s: float = _setting(15.0, "Longest wait for the SMTP relay (connect, each "
                                     "reply); a send past it is retried later.")
    mail_from: str = _setting("", "The sender of Kinwire's email, e.g. "
                              "`Kinwire <no-reply@kinwire.example>`; required with SMTP.")
    mail_attempts_max: int = _setting(8, "Tries an email gets (the wait doubling from 30 s "
                                      "between them) before it is given up and logged.",
                                      lo=1, hi=100)
    mail_quiet_s: int = _setting(600, "New-message email: at most one per thread in this "
                                 "long, sent this long after the first message (the later "
                                 "ones in it are counted in the same email).",
                                 lo=0, hi=86_400)
    mail_low_balance: int = _setting(200, "A family is emailed when its balance falls below "
                                     "this many credits (once, until its next purchase).",
                                     lo=0, hi=10_000_000)
    mail_visit_reminder_s: int = _setting(3600, "A family is emailed this long before each "
                                          "visit it booked (a reminder).", lo=60, hi=7 * 86_400)
    vapid_private_key: str = _setting("", "Web Push: the server's VAPID private key, the 32-byte "
                                      "P-256 scalar in base64url (docs/operations.md, \"Web "
                                      "Push\", makes one); empty means no browser "
                                      "notifications.", secret=True)
    push_services: tuple[str, ...] = _setting(
        ("fcm.googleapis.com", "updates.push.services.mozilla.com", "notify.windows.com",
         "push.apple.com"),
        "Web Push: the push services a browser's subscription may point at (host suffixes, "
        "https only; or exact origins such as `http://127.0.0.1:8765` for tests), so that a "
        "subscription cannot make the server POST to any other address.")
    vapid_subject: str = _setting("", "Web Push: who push services may contact about this "
                                  "server, `mailto:...` or `https://...`; required with "
                                  "KINWIRE_VAPID_PRIVATE_KEY.")
    password_reset_ttl_s: int = _setting(1800, "Lifetime of an emailed password-reset link "
                                         "(single use).", lo=60, hi=86_400)
    password_resets_per_hour: int = _setting(3, "Password-reset emails one address may be "
                                             "sent an hour (x10 requests per client address); "
                                             "past it the request is answered the same, with no "
                                             "email.", lo=1, hi=1000)
    db_pool_size: int = _setting(10, "PostgreSQL connections per process.", lo=1, hi=200)
    db_timeout_s: float = _setting(10.0, "PostgreSQL: longest wait for a pooled or new "
                                   "connection, or for one statement; past it the request "
                                   "fails with 503 `unavailable` (retry it with the same "
                                   "idempotency key). Migrations are not bounded by it.")
    db_migrate_lock_timeout_ms: int = _setting(
        5000, "PostgreSQL: `kinwire migrate` waits at most this for a table lock, then fails "
        "(safe to run again) rather than queue behind a long transaction and stall every query "
        "queued behind it; 0 waits forever. Index builds (CONCURRENTLY) are not bounded by it.",
        lo=0, hi=3_600_000)
    db_busy_timeout_ms: int = _setting(5000, "SQLite busy timeout for writers of other processes.",
                                       lo=0, hi=600_000)
    db_group_commit_max: int = _setting(64, "SQLite: most concurrent message sends committed in "
                                        "one transaction, each in its own savepoint (group "
                                        "commit; 1 = a transaction each). PostgreSQL commits "
                                        "each send alone.", lo=1, hi=1000)
    db_durable_commits: bool = _setting(True, "Every commit is on disk before its reply or "
                                        "push leaves: SQLite `synchronous=FULL` (one fsync of "
                                        "the WAL a commit, shared by a group-committed batch); "
                                        "PostgreSQL: `kinwire serve` refuses to start when "
                                        "`synchronous_commit` or `fsync` is off. `false` "
                                        "(SQLite `synchronous=NORMAL`) may lose acknowledged "
                                        "payments and messages on a power cut, and says so at "
                                        "start. docs/operations.md.")
    db_sqlite_inline_writes: bool = _setting(True, "SQLite: run the writer's statements on the "
                                             "event loop instead of aiosqlite's thread (less "
                                             "CPU a send; waits for another process's write "
                                             "lock and COMMITs stay off the loop). "
                                             "docs/messaging.md.")

    def env_name(self, name: str) -> str:
        meta = next(f.metadata for f in fields(self) if f.name == name)
        return meta["env"] or f"KINWIRE_{name.upper()}"

    @property
    def resolved_node_lease_s(self) -> float:
        """node_lease_s, at most half the meter's lease: a meter lease outlives its dead
        holder's last renewal by at least two thirds of it, the liveness lease by at most its
        own length, so a survivor never claims a meter while the dead process looks alive."""
        return min(self.node_lease_s, self.meter_lease_s / 2)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'kinwire.db'}"

    @property
    def resolved_blob_dir(self) -> Path:
        return Path(self.blob_dir) if self.blob_dir else Path(self.data_dir) / "blobs"

    @property
    def resolved_recordings_dir(self) -> Path:
        return Path(self.recordings_dir) if self.recordings_dir else \
            Path(self.data_dir) / "recordings"

    @property
    def mail_enabled(self) -> bool:
        return bool(self.smtp_url or self.smtp_host)

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def validate(self) -> Settings:
        for f in fields(self):
            value, lo, hi = getattr(self, f.name), f.metadata["lo"], f.metadata["hi"]
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise SettingsError(f"{self.env_name(f.name)}={value} is outside {lo}..{hi}")
        url = self.resolved_database_url
        schemes = ("sqlite:///", "postgresql://", "postgres://", "postgresql+asyncpg://")
        if not url.startswith(schemes):
            raise SettingsError(
                f"DATABASE_URL must be sqlite:///... or postgresql://..., got {url!r}")
        if not self.is_sqlite:
            from store import pool_mode

            try:
                pool_mode(url)
            except ValueError as exc:
                raise SettingsError(f"DATABASE_URL: {exc}") from None
        if self.redis_url:
            from server.broker import redis_url

            try:
                redis_url.parse(self.redis_url)
            except ValueError as exc:
                raise SettingsError(f"REDIS_URL {exc}") from None
        if self.visit_minute_s <= 0 or self.visit_minute_s > 3600:
            raise SettingsError("KINWIRE_VISIT_MINUTE_S must be in (0, 3600]")
        for url in self.turn_urls + self.stun_urls:
            if not url.startswith(("turn:", "turns:", "stun:", "stuns:")):
                raise SettingsError(f"{url!r} is not a turn:/turns:/stun: URL")
        if self.turn_urls and not self.turn_secret:
            raise SettingsError("KINWIRE_TURN_URLS needs KINWIRE_TURN_SECRET")
        if self.relay_loopback_only and not self.turn_urls:
            raise SettingsError("KINWIRE_RELAY_LOOPBACK_ONLY needs KINWIRE_TURN_URLS on loopback")
        if self.ice_relay_only and not self.turn_urls:
            raise SettingsError("KINWIRE_ICE_RELAY_ONLY needs KINWIRE_TURN_URLS")
        if not 60 <= self.orphan_grace_s <= 30 * 86_400:
            raise SettingsError("KINWIRE_ORPHAN_GRACE_S must be in [60, 2592000]")
        for name in ("ws_heartbeat_s", "ws_auth_timeout_s", "meter_lease_s", "relay_lease_s",
                     "drain_timeout_s", "db_timeout_s", "housekeeping_lease_s", "node_lease_s",
                     "ws_connections_lease_s",
                     "media_stall_s", "media_gap_s", "s3_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise SettingsError(f"{self.env_name(name)} must be in (0, 3600]")
        if self.media_engine not in ("aiortc", "janus"):
            raise SettingsError("KINWIRE_MEDIA_ENGINE must be aiortc or janus")
        for url in self.janus_urls + self.janus_admin_urls + self.janus_public_urls + \
                self.janus_recordings_urls:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"KINWIRE_JANUS_URLS, KINWIRE_JANUS_ADMIN_URLS, "
                                    f"KINWIRE_JANUS_PUBLIC_URLS and "
                                    f"KINWIRE_JANUS_RECORDINGS_URLS: {url!r} is not an http(s) "
                                    f"URL")
        if self.janus_recordings_urls and (not self.janus_recordings_dir or
                                           len(self.janus_recordings_password) < 16):
            raise SettingsError("KINWIRE_JANUS_RECORDINGS_URLS needs KINWIRE_JANUS_RECORDINGS_DIR "
                                "(where the files are pulled to) and "
                                "KINWIRE_JANUS_RECORDINGS_PASSWORD (16 characters at least)")
        if self.janus_public_urls and len(self.janus_public_urls) != len(self.janus_urls):
            raise SettingsError("KINWIRE_JANUS_PUBLIC_URLS must be empty or name as many URLs "
                                "as KINWIRE_JANUS_URLS, in the same order")
        if self.media_engine == "janus":
            if not self.janus_urls or len(self.janus_admin_urls) != len(self.janus_urls):
                raise SettingsError("KINWIRE_MEDIA_ENGINE=janus needs KINWIRE_JANUS_URLS and as "
                                    "many KINWIRE_JANUS_ADMIN_URLS, in the same order")
            for name in ("janus_api_secret", "janus_admin_secret", "janus_token_secret",
                         "janus_room_admin_key", "janus_events_password"):
                if len(getattr(self, name)) < 16:
                    raise SettingsError(f"KINWIRE_MEDIA_ENGINE=janus needs "
                                        f"{self.env_name(name)} (16 characters at least)")
        if self.blob_url and not self.blob_url.startswith("s3://"):
            raise SettingsError("KINWIRE_BLOB_URL must be empty or s3://bucket/prefix")
        if self.blob_url.startswith("s3://") and not self.blob_url[5:].split("/")[0]:
            raise SettingsError("KINWIRE_BLOB_URL needs a bucket: s3://bucket/prefix")
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            raise SettingsError("KINWIRE_S3_ACCESS_KEY_ID and KINWIRE_S3_SECRET_ACCESS_KEY "
                                "go together")
        if self.smtp_tls not in {"starttls", "tls", "none"}:
            raise SettingsError("KINWIRE_SMTP_TLS must be starttls, tls or none")
        if self.smtp_url and not self.smtp_url.startswith(("smtp://", "smtps://",
                                                           "smtp+plain://")):
            raise SettingsError("KINWIRE_SMTP_URL must be smtp://, smtps:// or smtp+plain://")
        if self.mail_enabled and not self.mail_from:
            raise SettingsError("KINWIRE_SMTP_URL (or KINWIRE_SMTP_HOST) needs KINWIRE_MAIL_FROM")
        if self.mail_enabled and not self.public_url.startswith(("http://", "https://")):
            raise SettingsError("email needs KINWIRE_PUBLIC_URL (http(s)://...): its links "
                                "start with it")
        if self.vapid_private_key and not self.vapid_subject.startswith(("mailto:",
                                                                         "https://")):
            raise SettingsError("KINWIRE_VAPID_PRIVATE_KEY needs KINWIRE_VAPID_SUBJECT "
                                "(mailto:... or https://...)")
        if self.vapid_private_key and not self.mail_enabled:
            raise SettingsError("KINWIRE_VAPID_PRIVATE_KEY: browser notifications go with "
                                "email's; set KINWIRE_SMTP_URL too")
        if not 0 < self.smtp_timeout_s <= 600:
            raise SettingsError("KINWIRE_SMTP_TIMEOUT_S must be in (0, 600]")
        if self.payment_gateway != "sandbox":
            raise SettingsError("KINWIRE_PAYMENT_GATEWAY: only 'sandbox' is built in")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("KINWIRE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        if self.log_format not in {"auto", "json", "text"}:
            raise SettingsError("KINWIRE_LOG_FORMAT must be auto, json or text")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(f"KINWIRE_TRUSTED_PROXIES: {proxy!r} is not an address "
                                    "or network") from None
        for origin in self.allowed_origins:
            if not origin.startswith(("http://", "https://")):
                raise SettingsError(f"KINWIRE_ALLOWED_ORIGINS: {origin!r} is not an http(s) origin")
        return self

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes).validate()


def _parse(raw: str, kind: Any, env: str) -> Any:
    try:
        if kind in ("bool", bool):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return float(raw)
        if str(kind).startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind}") from None


def from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build validated Settings from `environ` (default: the process environment)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    probe = Settings()
    for f in fields(Settings):
        env = probe.env_name(f.name)
        if env in environ:
            values[f.name] = _parse(environ[env], f.type, env)
    values.update(overrides)
    return Settings(**values).validate()


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README's table."""
    probe = Settings()
    rows = []
    for f in fields(Settings):
        default = getattr(probe, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append((probe.env_name(f.name), shown, f.metadata["doc"]))
    return rows


# KINWIRE_* variables that are not settings but that Kinwire's own tools read: the visit client's
# token, the tests' PostgreSQL, Chromium, crash and meter-shell seeds, and the benchmarks'
# (KINWIRE_BENCH_*). tests/integration/test_cli_operator.py keeps this list true against the
# repository.
OTHER_VARIABLES = frozenset({"KINWIRE_TOKEN", "KINWIRE_TEST_PG", "KINWIRE_CHROMIUM",
                             "KINWIRE_CRASH_SEED", "KINWIRE_SHELL_SEED",
                             "KINWIRE_TEST_LONG_OUTAGE", "KINWIRE_TEST_LONG_RECORDING"})
OTHER_PREFIXES = ("KINWIRE_BENCH_",)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each KINWIRE_* variable in the environment that nothing reads (a misspelt
    setting is otherwise silently ignored), naming the closest setting when one is close."""
    environ = os.environ if environ is None else environ
    probe = Settings()
    known = [probe.env_name(f.name) for f in fields(Settings)]
    warnings = []
    for name in sorted(environ):
        if (not name.startswith("KINWIRE_") or name in known or name in OTHER_VARIABLES
                or name.startswith(OTHER_PREFIXES)):
            continue
        # Compared without the prefix, which every candidate shares and would make any two
        # names look alike; DATABASE_URL and REDIS_URL (no prefix) are candidates too.
        bare = {k.removeprefix("KINWIRE_"): k for k in known}
        close = difflib.get_close_matches(name.removeprefix("KINWIRE_"), bare, n=1, cutoff=0.6)
        hint = (f"did you mean {bare[close[0]]}?" if close
                else "`kinwire settings` lists them all")
        warnings.append(f"kinwire: warning: {name} is not a Kinwire setting and is ignored "
                        f"({hint})")
    return warnings
