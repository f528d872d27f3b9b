"""What every layer shares and nothing else: the error every refusal is (common/errors.py).
Imports no other Kinwire package (tests/unit/test_import_rules.py)."""
