"""Visits: booking rules, the visit state machine, the meters' async shell, TURN credentials,
relay mode (forwarding, recording, remuxing) and the reference visit client. The gateway
(server/gateway/) passes SDP/ICE between the parties in direct mode. Imports billing and the
store, never server/ (tests/unit/test_import_rules.py)."""
