"""Alembic environment: always run through store.migrate, on the caller's connection
(on PostgreSQL one transaction per migration, so that an index may be built outside one)."""

from alembic import context

# The one MetaData the layers' tables register on (server/schema.py assembles them). The
# migrations are written by hand, so `upgrade` never reads it; the store imports no table.
from store.columns import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True,
    transaction_per_migration=context.config.attributes.get("transaction_per_migration", False),
)
with context.begin_transaction():
    context.run_migrations()
