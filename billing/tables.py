"""The money's tables: ledger accounts, immutable transfers and card purchases.

They share one SQLAlchemy MetaData with the rest of the store (server/store/schema.py imports
it from here, never the other way round: billing knows nothing of the web).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigSeq = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, on both databases (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- money -------------------------------------------------------------------------------

ledger_accounts = Table(
    "ledger_accounts", metadata,
    Column("id", String(40), primary_key=True),
    Column("owner_id", String(32), nullable=True),
    Column("kind", String(24), nullable=False),
    # Kept only for user accounts, whose floor of zero is enforced by one conditional UPDATE.
    # A system account's balance is derived from its transfers (see Ledger.balances), so that
    # no single hot row serialises every sale and every message in the whole service.
    Column("balance", BigInteger, nullable=False, default=0),
    CheckConstraint("balance >= 0", name="ck_ledger_balance_floor"),
)

ledger_transfers = Table(
    "ledger_transfers", metadata,
    Column("seq", BigSeq, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("debit_account", String(40), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("credit_account", String(40), ForeignKey("ledger_accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("kind", String(24), nullable=False),
    Column("ref", String(64), nullable=True),
    Column("at", UTCDateTime, nullable=False),
    CheckConstraint("amount > 0", name="ck_transfer_amount_positive"),
    CheckConstraint("debit_account <> credit_account", name="ck_transfer_distinct_accounts"),
    Index("ix_transfers_debit_seq", "debit_account", "seq"),
    Index("ix_transfers_credit_seq", "credit_account", "seq"),
)

purchases = Table(
    "purchases", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("price_cents", BigInteger, nullable=False),
    Column("fee_cents", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=False),
    Column("card_brand", String(16), nullable=False),
    Column("card_last4", String(4), nullable=False),
    Column("gateway_ref", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

