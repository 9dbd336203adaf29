"""Session archive: pulling records from WeCom, storing them once, their media and schedule.

By topic: `pull` (the pull and the quarantine retry, with the source's health), `store` (one
page: decrypt, store, quarantine, cases, ledger, cursor), `media` (files), `sdk` (opening a
source: library, secret, keys, the per-source lock) and `schedule` (due and late sources).
"""

from apps.audit.services.archive.pull import archive_pull, archive_quarantine_retry
from apps.audit.services.archive.schedule import (
    ARCHIVE_WINDOW,
    archive_gap_check,
    archive_sources_due,
    gap_warning_after,
)
from apps.audit.services.archive.sdk import (
    ArchivePullResult,
    archive_key_fingerprint,
    sdk_library_config,
)

__all__ = [
    "ARCHIVE_WINDOW",
    "ArchivePullResult",
    "archive_gap_check",
    "archive_key_fingerprint",
    "archive_pull",
    "archive_quarantine_retry",
    "archive_sources_due",
    "gap_warning_after",
    "sdk_library_config",
]
