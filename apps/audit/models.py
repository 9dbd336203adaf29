"""Compliance records; the ledger and review workflow build on these."""
