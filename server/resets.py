"""Password reset by an emailed one-time link (docs/security.md, "Password reset").

The link carries 256 random bits; only their SHA-256 is stored (as session tokens are). A token
is used at most once: the one conditional UPDATE that marks it used decides, so two uses at
once cannot both set a password. Using it sets the new password and revokes every session of
the account and every other reset token it had. Asking for a link answers the same whether or
not the address has an account.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server import accounts, mail
from server.auth import revoke_sessions, token_hash
from server.mail_words import words
from server.schema import accounts as accounts_table
from server.schema import notification_prefs, password_resets

# The roles that sign in by email and password (a person uses a kiosk PIN set by staff).
RESETTABLE = ("family", "staff", "admin")


async def request(conn: AsyncConnection, email: str, *, now: datetime, ttl_s: int,
                  link_base: str) -> bool:
    """Write a reset token and its email if `email` has an account that may reset; the caller
    answers the same either way. True when an email was queued (for tests and logs' counts)."""
    row = await accounts.by_email(conn, email)
    if row is None or row.disabled or row.role not in RESETTABLE or not row.password_hash:
        return False
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=ttl_s)
    await conn.execute(password_resets.insert().values(
        token_hash=token_hash(token), account_id=row.id, created_at=now, expires_at=expires))
    minutes = ttl_s // 60
    # The token rides in the fragment: browsers never send it to a server or in a Referer.
    link = f"{link_base.rstrip('/')}/reset#token={token}"
    # In the language the family's app last ran in (server/mail_words.py); staff: English.
    w = words((await conn.execute(select(notification_prefs.c.language).where(
        notification_prefs.c.account_id == row.id))).scalar())
    await mail.enqueue(conn, to=row.email, kind="password_reset", account_id=row.id, at=now,
                       subject=w["reset.subject"],
                       body="\n".join([
                           w["hello"].format(name=mail.plain(row.name)), "",
                           w["reset.asked"], w["reset.within"].format(minutes=minutes),
                           "", link, "", w["reset.not_you"]]))
    return True


async def use(conn: AsyncConnection, token: str, password_hash: str,
              now: datetime) -> tuple[str, list[str]]:
    """Spend the token: set the password, revoke the account's sessions and other tokens.
    Returns (account id, the revoked session ids). `invalid_token` for a token unknown, used
    or expired, all alike."""
    r = password_resets
    spent = (await conn.execute(
        r.update().where(r.c.token_hash == token_hash(token), r.c.used_at.is_(None),
                         r.c.expires_at > now)
        .values(used_at=now).returning(r.c.account_id))).first()
    if spent is None:
        raise Refused("invalid_token", "This reset link is not valid any more; ask for a new one.")
    account_id = spent.account_id
    await conn.execute(r.update().where(r.c.account_id == account_id, r.c.used_at.is_(None))
                       .values(used_at=now))
    await conn.execute(accounts_table.update().where(accounts_table.c.id == account_id)
                       .values(password_hash=password_hash))
    return account_id, await revoke_sessions(conn, account_id, now)


async def prune(conn: AsyncConnection, now: datetime) -> int:
    gone = await conn.execute(password_resets.delete().where(
        password_resets.c.expires_at < now - timedelta(days=1)))
    return gone.rowcount
