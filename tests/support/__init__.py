"""Helpers shared by tests that need real servers (import as ``tests.support.<module>``)."""
