"""What the tests share: engines started privately (Redis, PgBouncer, SeaweedFS, coturn), the
browser harness, the injected clock, the impaired link, the billing simulator, and helpers."""
