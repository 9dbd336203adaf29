"""Compliance records: policies, the hash-chained ledger, review cases and the session archive.

The ledger is append-only in the database itself (triggers, migration 0002); everything an
officer opens or exports leaves an `AccessLog` row, everything an operator changes an
`OperatorAuditEntry`. Services in `apps.audit.services` are the only writers.

One module per topic; everything is re-exported here, so `from apps.audit.models import X`
stays the way to import them.
"""

from apps.audit.models.access import AccessLog, OperatorAuditEntry
from apps.audit.models.archive import ArchivedMessage, ArchiveKey, ArchiveQuarantine, ArchiveSource
from apps.audit.models.ledger import LedgerCheckpoint, LedgerEntry
from apps.audit.models.policy import (
    ACTION_STRENGTH,
    MAX_PATTERN_LENGTH,
    PII_CHOICES,
    PII_OFF,
    Action,
    AuditPolicy,
    PolicyWordList,
    RegexRule,
    SensitiveWordList,
    regex_problem,
)
from apps.audit.models.review import ReviewCase

__all__ = [
    "ACTION_STRENGTH",
    "MAX_PATTERN_LENGTH",
    "PII_CHOICES",
    "PII_OFF",
    "AccessLog",
    "Action",
    "ArchiveKey",
    "ArchiveQuarantine",
    "ArchiveSource",
    "ArchivedMessage",
    "AuditPolicy",
    "LedgerCheckpoint",
    "LedgerEntry",
    "OperatorAuditEntry",
    "PolicyWordList",
    "RegexRule",
    "ReviewCase",
    "SensitiveWordList",
    "regex_problem",
]
