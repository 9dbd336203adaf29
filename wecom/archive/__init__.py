"""Session archive (会话内容存档): vendor SDK binding and record decryption.

Plain Python without Django, so the pull service and its tests can use it directly.
"""

from wecom.archive.decrypt import (
    ArchivedMessage,
    ArchiveRecordError,
    MalformedArchiveRecord,
    RandomKeyDecryptError,
    UnknownKeyVersion,
    decrypt_random_key,
    open_record,
    parse_archived_message,
)
from wecom.archive.sdk import ArchiveSdkError, FinanceSdk

__all__ = [
    "ArchiveRecordError",
    "ArchiveSdkError",
    "ArchivedMessage",
    "FinanceSdk",
    "MalformedArchiveRecord",
    "RandomKeyDecryptError",
    "UnknownKeyVersion",
    "decrypt_random_key",
    "open_record",
    "parse_archived_message",
]
