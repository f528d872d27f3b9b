"""Email: the outbox, the background sender, and the notifications a family chooses.

An email is a row of `mail_outbox` written in the same transaction as the change it reports
(a purchase, an approved connection, a visit's status, a message delivered, a low balance, a
password reset), so it exists exactly when the change does and costs the request no network
wait. `MailSender` (one per serving process) claims due rows, sends them through the SMTP relay
with aiosmtplib and settles them as server/outbox.py says (retried with a doubling wait up to
`mail_attempts_max` tries, then given up and logged). A process that dies mid-send leaves
its claim to lapse and the row is sent later (at least once: the Message-ID stays the same,
so a relay may drop the repeat). Nothing here logs a body, an address or a token.

Notifications are read from the event stream as it is written (the store's `event_watchers`,
called by server/events.py in the events' transaction): every change a family must hear of
already emits an event in its transaction, so no call site has to remember email. Message
bodies never go into email: a new-message email says who wrote and how many, and links to the
app.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import aiosmtplib
from sqlalchemy import exists, func, literal, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.tables import ledger_transfers
from server import accounts as accounts_rules
from server import outbox, push
from server.mail_words import LANGUAGES, count_line, one_more, reason, words
from server.schema import accounts, facilities, mail_outbox, notification_prefs
from server.settings import Settings
from signalling.tables import visits as visits_table
from store import Record, Store
from store.ids import new_id

log = logging.getLogger("kinwire.mail")

# What a family may turn off, in the order the settings screen shows them. A password-reset
# email is not a notification: it is sent whatever these say.
KINDS = {
    "message": "A new message (who wrote, never what)",
    "connection": "A connection approved",
    "visit": "A visit booked, coming up, cancelled or ended (minutes and cost)",
    "low_balance": "Your balance is low",
    "receipt": "A receipt for each purchase",
}

# Longer than any visit's window, so that the reminder scan can bound its range of the partial
# index on scheduled visits' ends.
MAX_VISIT = timedelta(days=1)



@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int
    tls: str  # "starttls" (required), "tls" (from the start) or "none"
    user: str
    password: str
    timeout_s: float

    def __repr__(self) -> str:  # the password stays out of logs
        return f"Relay({self.host}:{self.port}, tls={self.tls})"


def relay_of(settings: Settings) -> Relay | None:
    """The SMTP relay the settings name, or None: email is off."""
    if settings.smtp_url:
        parts = urlsplit(settings.smtp_url)
        tls = {"smtp": "starttls", "smtps": "tls", "smtp+plain": "none"}[parts.scheme]
        port = parts.port or {"starttls": 587, "tls": 465, "none": 25}[tls]
        return Relay(parts.hostname or "", port, tls, unquote(parts.username or ""),
                     unquote(parts.password or ""), settings.smtp_timeout_s)
    if settings.smtp_host:
        return Relay(settings.smtp_host, settings.smtp_port, settings.smtp_tls,
                     settings.smtp_user, settings.smtp_password, settings.smtp_timeout_s)
    return None


async def enqueue(conn: AsyncConnection, *, to: str, kind: str, subject: str, body: str,
                  at: datetime, account_id: str | None = None, batch_key: str | None = None,
                  due_at: datetime | None = None) -> str:
    """One email, sent after the caller's transaction commits (never if it rolls back)."""
    mail_id = new_id("mail")
    await conn.execute(mail_outbox.insert().values(
        id=mail_id, account_id=account_id, to_addr=to, kind=kind, subject=subject, body=body,
        batch_key=batch_key, created_at=at, due_at=due_at or at, attempts=0))
    return mail_id


def plain(text: str) -> str:
    """A name as one line of plain text: no line breaks or control characters (they would
    break a header or the email's lines), whitespace runs collapsed."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())[:100]


def unsubscribe_link(base: str, key: str) -> str:
    """The one-click link in every notification (and its List-Unsubscribe header)."""
    return f"{base}/api/v1/notifications/unsubscribe?key={key}"


def _money(cents: int) -> str:
    return f"${cents // 100}.{cents % 100:02d}"


class Notifier:
    """Turns a transaction's events (and purchases) into the family's chosen emails, in that
    transaction. One per app, built only when email is on."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.public_url.rstrip("/")
        self.quiet = timedelta(seconds=settings.mail_quiet_s)
        self.low = settings.mail_low_balance
        self.reminder = timedelta(seconds=settings.mail_visit_reminder_s)
        self.push = bool(settings.vapid_private_key)

    def link(self, path: str) -> str:
        return f"{self.base}{path}"

    async def _family(self, conn: AsyncConnection, account_id: str, at: datetime) -> Record:
        """The family's address and choices (a prefs row made on first use), or None for
        any other role or an account without email."""
        a, p = accounts, notification_prefs
        row = (await conn.execute(
            select(a.c.role, a.c.email, a.c.name, a.c.disabled, p.c.off, p.c.unsubscribe_key,
                   p.c.low_sent, p.c.language)
            .outerjoin(p, p.c.account_id == a.c.id).where(a.c.id == account_id))).first()
        if row is None or row.role != "family" or not row.email or row.disabled:
            return None
        if row.unsubscribe_key is None:
            await ensure_prefs(conn, account_id, at)
            return await self._family(conn, account_id, at)
        return row

    async def _send(self, conn: AsyncConnection, fam: Record, account_id: str, kind: str,
                    subject: str, lines: list[str], at: datetime, *,
                    batch_key: str | None = None, due_at: datetime | None = None) -> None:
        if kind in (fam.off or []):
            return
        w = words(fam.language)
        body = "\n".join([w["hello"].format(name=plain(fam.name)), "", *lines, "",
                          w["open"].format(link=self.link("/")), "",
                          w["choose"].format(link=self.link("/settings")),
                          w["unsubscribe"].format(link=self.unsubscribe_link(fam.unsubscribe_key))])
        await enqueue(conn, to=fam.email, kind=kind, subject=subject, body=body, at=at,
                      account_id=account_id, batch_key=batch_key, due_at=due_at)
        if self.push:  # and to the browsers the family allowed (server/push.py), at once
            await push.enqueue(conn, account_id, subject, lines[0], at)

    def unsubscribe_link(self, key: str) -> str:
        return unsubscribe_link(self.base, key)

    async def _seen(self, conn: AsyncConnection, batch_key: str,
                    since: datetime | None = None) -> Record:
        q = select(mail_outbox.c.id, mail_outbox.c.body, mail_outbox.c.sent_at).where(
            mail_outbox.c.batch_key == batch_key)
        if since is not None:
            q = q.where(mail_outbox.c.created_at > since)
        return (await conn.execute(q.order_by(mail_outbox.c.created_at.desc()).limit(1))).first()

    async def on_events(self, conn: AsyncConnection, items: list[tuple[str, str, dict]],
                        at: datetime) -> None:
        for account_id, kind, data in items:
            # Only families are emailed, and a family's id says so (server/accounts.py
            # create): the people's and staff's events, on every send and billed minute,
            # cost no query here.
            if not accounts_rules.is_family(account_id):
                continue
            if kind == "message.new" and data.get("to") == account_id:
                await self._message(conn, account_id, data, at)
            elif kind == "connection.updated" and data.get("family_id") == account_id \
                    and data.get("status") == "approved":
                await self._connection(conn, account_id, data, at)
            elif kind == "visit.updated" and data.get("family_id") == account_id \
                    and data.get("status") in ("scheduled", "cancelled", "ended"):
                await self._visit(conn, account_id, data, at)
            elif kind == "balance":
                await self._balance(conn, account_id, int(data["balance"]), at)

    async def _message(self, conn: AsyncConnection, account_id: str, data: dict,
                       at: datetime) -> None:
        # One email per thread per quiet period, sent at its end: the messages that arrive
        # meanwhile are counted in it (the row is still unsent), never quoted.
        key = f"msg:{account_id}:{data['from']}"
        fam = await self._family(conn, account_id, at)
        if fam is None or "message" in (fam.off or []):
            return
        last = await self._seen(conn, key, at - self.quiet)
        if last is not None:
            if last.sent_at is None:
                await conn.execute(mail_outbox.update().where(mail_outbox.c.id == last.id)
                                   .values(body=_count_line(last.body)))
            return
        w = words(fam.language)
        sender = plain((await conn.execute(select(accounts.c.name).where(
            accounts.c.id == data["from"]))).scalar() or "") or w["a_contact"]
        await self._send(conn, fam, account_id, "message", w["message.subject"].format(who=sender),
                         [count_line(1, sender, fam.language)], at,
                         batch_key=key, due_at=at + self.quiet)

    async def _connection(self, conn: AsyncConnection, account_id: str, data: dict,
                          at: datetime) -> None:
        key = f"con:{data['id']}:approved:{data['updated_at']}"
        fam = await self._family(conn, account_id, at)
        if fam is None or await self._seen(conn, key) is not None:
            return
        w = words(fam.language)
        who = plain(data.get("person_name") or "") or w["your_contact"]
        await self._send(conn, fam, account_id, "connection",
                         w["connection.subject"].format(who=who),
                         [w["connection.line"].format(who=who)], at, batch_key=key)

    async def _visit(self, conn: AsyncConnection, account_id: str, data: dict,
                     at: datetime) -> None:
        status = data["status"]
        key = f"visit:{data['id']}:{status}"
        fam = await self._family(conn, account_id, at)
        if fam is None or await self._seen(conn, key) is not None:
            return
        when = f"{data['local_start'][:16].replace('T', ' ')} ({data['timezone']})"
        w = words(fam.language)
        if status == "scheduled":
            subject, lines = w["booked.subject"], [w["booked.line"].format(when=when)]
        elif status == "cancelled":
            subject, lines = w["cancelled.subject"], [w["cancelled.line"].format(when=when)]
        else:
            t = ledger_transfers
            minutes, cost = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(t.c.amount), 0))
                .where(t.c.ref == data["id"], t.c.kind == "visit_minute",
                       t.c.debit_account == account_id))).one()
            why = reason(data.get("end_reason") or "ended", fam.language)
            subject = w["ended.subject"]
            lines = [w["ended.line"].format(when=when, reason=why),
                     w["ended.cost"].format(minutes=minutes, cost=cost)]
        await self._send(conn, fam, account_id, "visit", subject, lines, at, batch_key=key)

    async def _balance(self, conn: AsyncConnection, account_id: str, balance: int,
                       at: datetime) -> None:
        # Above the threshold (nearly every debit) costs no query; the flag that keeps the
        # email to once is cleared by the next purchase (receipt()).
        if balance >= self.low:
            return
        fam = await self._family(conn, account_id, at)
        if fam is None or fam.low_sent:
            return
        p = notification_prefs
        await conn.execute(p.update().where(p.c.account_id == account_id).values(low_sent=True))
        w = words(fam.language)
        await self._send(conn, fam, account_id, "low_balance", w["low.subject"],
                         [w["low.line"].format(balance=balance)], at)

    async def remind(self, store: Store, now: datetime, limit: int) -> int:
        """Emails a reminder for each visit starting within `reminder` that has none yet (at
        most `limit` a call: server/housekeeping.py calls it until it finds fewer)."""
        v, f, o = visits_table, facilities, mail_outbox
        key = literal("visit:") + v.c.id + literal(":reminder")
        scan = (select(v.c.id, v.c.family_id, v.c.start_at, f.c.timezone)
                .join(f, f.c.id == v.c.facility_id)
                # status written into the SQL: the partial index ix_visits_scheduled_end
                .where(v.c.status == literal_column("'scheduled'"), v.c.end_at > now,
                       v.c.end_at <= now + self.reminder + MAX_VISIT,
                       v.c.start_at > now, v.c.start_at <= now + self.reminder,
                       ~exists().where(o.c.batch_key == key))
                .order_by(v.c.start_at).limit(limit))
        async with store.write() as conn:
            due = (await conn.execute(scan)).all()
            for row in due:
                fam = await self._family(conn, row.family_id, now)
                when = row.start_at.astimezone(ZoneInfo(row.timezone))
                if fam is None or "visit" in (fam.off or []):
                    # A row marked not sent, so that the scan does not find the visit again.
                    await conn.execute(o.insert().values(
                        id=new_id("mail"), account_id=row.family_id, to_addr="", kind="visit",
                        subject="", body="", batch_key=f"visit:{row.id}:reminder",
                        created_at=now, due_at=now, attempts=0, failed_at=now,
                        last_error="not sent: turned off"))
                    continue
                w = words(fam.language)
                lines = [w["reminder.line"].format(when=f"{when:%Y-%m-%d %H:%M}",
                                                   zone=row.timezone)]
                await self._send(conn, fam, row.family_id, "visit", w["reminder.subject"],
                                 lines, now, batch_key=f"visit:{row.id}:reminder")
        return len(due)

    async def receipt(self, conn: AsyncConnection, account_id: str, purchase: Record,
                      at: datetime) -> None:
        """A purchase's receipt: amount, fee, card's last 4, date (billing/purchases.py)."""
        fam = await self._family(conn, account_id, at)
        if fam is None:
            return
        if fam.low_sent:  # a low balance is emailed again after the next purchase
            await conn.execute(notification_prefs.update()
                               .where(notification_prefs.c.account_id == account_id)
                               .values(low_sent=False))
        w = words(fam.language)
        await self._send(conn, fam, account_id, "receipt", w["receipt.subject"], [
            w["receipt.purchase"].format(id=purchase.id,
                                         at=purchase.at.strftime("%Y-%m-%d %H:%M UTC")),
            w["receipt.credits"].format(credits=purchase.credits),
            w["receipt.amount"].format(amount=_money(purchase.price_cents)),
            w["receipt.fee"].format(fee=_money(purchase.fee_cents)),
            w["receipt.total"].format(total=_money(purchase.total_cents),
                                      brand=purchase.card_brand, last4=purchase.card_last4)],
            at, batch_key=f"receipt:{purchase.id}")


def _count_line(body: str) -> str:
    """The new-message email's count line says one message more (mail_words.one_more)."""
    return one_more(body)


async def ensure_prefs(conn: AsyncConnection, account_id: str, at: datetime) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(notification_prefs).values(
        account_id=account_id, off=[], unsubscribe_key=secrets.token_urlsafe(32),
        low_sent=False, updated_at=at).on_conflict_do_nothing(index_elements=["account_id"]))


async def language_of(conn: AsyncConnection, account_id: str, at: datetime) -> str:
    """The language the family's emails are written in (mail_words: English by default)."""
    await ensure_prefs(conn, account_id, at)
    chosen = (await conn.execute(select(notification_prefs.c.language).where(
        notification_prefs.c.account_id == account_id))).scalar_one()
    return chosen if chosen in LANGUAGES else "en"


async def set_language(conn: AsyncConnection, account_id: str, language: str,
                       at: datetime) -> None:
    if language not in LANGUAGES:
        raise ValueError(language)  # the route checks first (server/http/routes_mail.py)
    await ensure_prefs(conn, account_id, at)
    await conn.execute(notification_prefs.update()
                       .where(notification_prefs.c.account_id == account_id)
                       .values(language=language, updated_at=at))


async def prefs(conn: AsyncConnection, account_id: str, at: datetime) -> dict[str, bool]:
    await ensure_prefs(conn, account_id, at)
    off = (await conn.execute(select(notification_prefs.c.off).where(
        notification_prefs.c.account_id == account_id))).scalar_one()
    return {kind: kind not in off for kind in KINDS}


async def set_prefs(conn: AsyncConnection, account_id: str, chosen: dict[str, bool],
                    at: datetime) -> dict[str, bool]:
    current = await prefs(conn, account_id, at)
    current.update({k: v for k, v in chosen.items() if k in KINDS})
    await conn.execute(notification_prefs.update()
                       .where(notification_prefs.c.account_id == account_id)
                       .values(off=[k for k, on in current.items() if not on], updated_at=at))
    return current


async def unsubscribe(conn: AsyncConnection, key: str, at: datetime) -> bool:
    """Every notification off for the family whose link carries `key`; False for no such key."""
    p = notification_prefs
    done = await conn.execute(p.update().where(p.c.unsubscribe_key == key)
                              .values(off=list(KINDS), updated_at=at))
    return done.rowcount == 1


def message_of(row: Record, mail_from: str, unsubscribe: str | None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = row.to_addr
    msg["Subject"] = row.subject
    msg["Date"] = format_datetime(row.created_at)
    # The same Message-ID on every try: a relay or inbox may drop a repeat after a crash.
    msg["Message-ID"] = make_msgid(idstring=row.id, domain="kinwire")
    msg["Auto-Submitted"] = "auto-generated"
    if unsubscribe:
        msg["List-Unsubscribe"] = f"<{unsubscribe}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(row.body)
    return msg


class MailSender:
    """Sends the outbox's due rows through the relay, a batch a pass, on every serving process
    (claims keep them apart)."""

    def __init__(self, store: Store, relay: Relay, mail_from: str,
                 clock: Callable[[], datetime], *, attempts_max: int, public_url: str,
                 poll_s: float = 1.0, batch: int = 20, backoff_s: float = 30.0) -> None:
        self.store, self.relay, self.mail_from, self.clock = store, relay, mail_from, clock
        self.attempts_max, self.poll_s, self.batch, self.backoff_s = \
            attempts_max, poll_s, batch, backoff_s
        self.base = public_url.rstrip("/")
        self.wake = asyncio.Event()
        self._passing = asyncio.Lock()  # one pass at a time in a process

    async def run(self, stop: asyncio.Event) -> None:
        await outbox.run(self.pass_once, stop, batch=self.batch, poll_s=self.poll_s,
                         what="mail", wake=self.wake)

    async def _claim(self, now: datetime) -> list[Any]:
        o = mail_outbox
        async with self.store.read() as conn:
            due = (await conn.execute(select(o).where(outbox.due(o, now))
                                      .order_by(o.c.due_at).limit(self.batch))).all()
        return await outbox.claim(self.store, o, due, now)

    async def pass_once(self) -> int:
        """Claim and send what is due (after any pass under way here has finished); returns
        how many were claimed."""
        async with self._passing:
            return await self._pass()

    async def _pass(self) -> int:
        now = self.clock()
        rows = await self._claim(now)
        if not rows:
            return 0
        keys = await self._unsubscribe_keys({r.account_id for r in rows if r.account_id})
        outcome: dict[str, str | None] = {}
        r = self.relay
        try:
            client = aiosmtplib.SMTP(hostname=r.host, port=r.port, timeout=r.timeout_s,
                                     use_tls=r.tls == "tls",
                                     start_tls={"starttls": True, "tls": False,
                                                "none": False}[r.tls])
            async with client:
                if r.user:
                    await client.login(r.user, r.password)
                for row in rows:
                    key = keys.get(row.account_id) if row.kind != "password_reset" else None
                    link = unsubscribe_link(self.base, key) if key else None
                    try:
                        await client.send_message(message_of(row, self.mail_from, link))
                        outcome[row.id] = None
                    except aiosmtplib.SMTPRecipientsRefused as exc:
                        outcome[row.id] = f"refused {_codes(exc)}"
                    except aiosmtplib.SMTPResponseException as exc:
                        outcome[row.id] = f"smtp {exc.code}"
                    except (ValueError, TypeError) as exc:  # an address or header it refuses
                        outcome[row.id] = f"unsendable {type(exc).__name__}"
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            for row in rows:
                outcome.setdefault(row.id, type(exc).__name__)
        await self._settle(rows, outcome)
        return len(rows)

    async def _unsubscribe_keys(self, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        p = notification_prefs
        async with self.store.read() as conn:
            rows = await conn.execute(select(p.c.account_id, p.c.unsubscribe_key)
                                      .where(p.c.account_id.in_(ids)))
            return dict(rows.all())

    async def _settle(self, rows: list[Any], outcome: dict[str, str | None]) -> None:
        now = self.clock()
        o = mail_outbox
        async with self.store.write() as conn:
            for row in rows:
                error = outcome.get(row.id, "not sent")
                values, became = outbox.settled(row, error, now, attempts_max=self.attempts_max,
                                                backoff_s=self.backoff_s)
                if became == "given up":
                    log.warning("mail %s (%s) given up after %d tries: %s", row.id, row.kind,
                                row.attempts + 1, error)
                elif became == "retry":
                    log.info("mail %s (%s) try %d failed (%s); next in %.0f s", row.id,
                             row.kind, row.attempts + 1, error,
                             (values["due_at"] - now).total_seconds())
                await conn.execute(o.update().where(o.c.id == row.id).values(**values))


def _codes(exc: aiosmtplib.SMTPRecipientsRefused) -> str:
    return ",".join(str(e.code) for e in exc.recipients)


# Sent or given-up emails are kept this long (their batch keys must outlive any quiet
# period, at most a day) and then pruned by housekeeping.
KEEP_SENT = timedelta(days=7)


async def prune(conn: AsyncConnection, now: datetime, limit: int) -> int:
    """At most `limit` sent or given-up emails older than KEEP_SENT."""
    return await outbox.prune(conn, mail_outbox, now, KEEP_SENT, limit)
