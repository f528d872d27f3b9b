"""Alembic environment: always run through server.store.migrate, on the caller's connection
(on PostgreSQL one transaction per migration, so that an index may be built outside one)."""

from alembic import context

from server.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True,
    transaction_per_migration=context.config.attributes.get("transaction_per_migration", False),
)
with context.begin_transaction():
    context.run_migrations()
