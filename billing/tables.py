"""The money's tables: ledger accounts, immutable transfers and card purchases.

They register on the store's one MetaData (store/columns.py); server/schema.py assembles them
with the other layers' tables. Billing imports the store, never the web or signalling.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    String,
    Table,
)

from store.columns import BigSeq, UTCDateTime, metadata

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


# A hosted checkout (billing/checkout.py): the quote a family is about to pay on the processor's
# page, and whether a confirmation has credited it.
checkouts = Table(
    "checkouts", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("price_cents", BigInteger, nullable=False),
    Column("fee_cents", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=False),
    Column("status", String(12), nullable=False),  # open | paid
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("purchase_id", String(32), nullable=True),
    Column("paid_at", UTCDateTime, nullable=True),
    Index("ix_checkouts_account", "account_id", "created_at"),
)
