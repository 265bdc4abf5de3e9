"""The test suite of ext-authz (unit, integration, e2e) and its test stack (tests.stack)."""
