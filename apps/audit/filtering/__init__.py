"""Plain-Python content checks: sensitive words (batch and streaming) and personal data.

Kept free of Django so the inference path and the archive pipeline can share it.
"""

from apps.audit.filtering.matcher import Match, StreamGuard, WordMatcher, mask
from apps.audit.filtering.normalize import normalize
from apps.audit.filtering.pii import PiiKind, PiiMatch, find_pii

__all__ = [
    "Match",
    "PiiKind",
    "PiiMatch",
    "StreamGuard",
    "WordMatcher",
    "find_pii",
    "mask",
    "normalize",
]
