"""Test stand-in for the vendor archive SDK; used by tests only, never in production."""
