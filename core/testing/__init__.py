"""Test helpers for tuneforge and its plugins (the pytest plugin lives in ``pytest_plugin``)."""
