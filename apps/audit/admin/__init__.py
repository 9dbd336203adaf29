"""Compliance admin: policies, review cases, the archive, and read-only audit records.

Officers see only cases and archived messages of the bots and archive sources assigned to
them (guardian object permissions, see `apps.audit.selectors`); anything else answers 404.
Opening a case or a transcript asks for a reason first and writes an access-log row.

Importing the topic modules registers their admins; the shared mixins are re-exported so
`from apps.audit.admin import OperatorAuditAdminMixin` keeps working for other apps.
"""

from apps.audit.admin import archive, policies, records, review, users
from apps.audit.admin.mixins import (
    AccessReasonAdminMixin,
    OperatorAuditAdminMixin,
    ReadOnlyAdminMixin,
)

__all__ = [
    "AccessReasonAdminMixin",
    "OperatorAuditAdminMixin",
    "ReadOnlyAdminMixin",
    "archive",
    "policies",
    "records",
    "review",
    "users",
]
