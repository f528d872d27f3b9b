"""Money: the ledger (immutable transfers), purchase quotes, card purchases and their gateway,
and the visit meter (billing/meter.py, a pure state machine; signalling/meters.py runs it).
Imports the store, never signalling nor the web (tests/unit/test_import_rules.py)."""
