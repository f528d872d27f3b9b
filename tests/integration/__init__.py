"""Tests against real services started for them: the app on SQLite or PostgreSQL, Redis,
PgBouncer, SeaweedFS, coturn, nginx, several kinwire processes."""
