"""What every layer shares and nothing else: the error every refusal is (common/errors.py), and
the ports the composition root hands the layers: the broker (common/broker.py) and the
counters (common/metrics.py). Imports no other Kinwire package (tests/unit/test_import_rules.py)."""
