"""Keeping the passage table's vector index useful after large deletions.

A deleted passage stays in the HNSW graph until a VACUUM removes it. The filtered vector
search (`hnsw.iterative_scan`) walks the graph nearest first and stops after
`hnsw.max_scan_tuples` entries (20,000 by default), dead or alive; after a large deletion
the dead ones can use up that budget, and a search whose filter admits few rows comes
back short (measured in bench/retrieval.py: passage recall@5 0.85 instead of 0.975 right
after 164k passages were deleted, until `VACUUM ANALYZE`). Autovacuum waits for a fifth of
the table to change, which a large table's re-indexing may never reach, so every deletion
path counts what it deleted and a vacuum is queued once the count passes a threshold.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction

logger = logging.getLogger(__name__)

_DELETED_KEY = "knowledge:chunks-deleted-since-vacuum"
_TABLE = "knowledge_chunk"


def chunks_deleted_note(*, count: int) -> bool:
    """Count `count` deleted passages; True when that makes a vacuum due (it is queued when
    the current transaction commits).

    The count lives in the cache, across processes; losing it (an evicted key, a restart)
    only delays the vacuum, which autovacuum still backs up.
    """
    threshold = settings.KNOWLEDGE_VACUUM_AFTER_DELETED
    if count <= 0 or threshold <= 0:
        return False
    try:
        cache.add(_DELETED_KEY, 0, timeout=None)
        try:
            total = cache.incr(_DELETED_KEY, count)
        except ValueError:  # evicted between add and incr
            total = count
        if total < threshold:
            return False
        cache.delete(_DELETED_KEY)
    except Exception:  # the cache is down: never fail the deletion over its bookkeeping
        logger.warning("could not count %s deleted passages", count, exc_info=True)
        return False
    transaction.on_commit(chunks_vacuum_enqueue)
    return True


def chunks_vacuum_enqueue() -> None:
    from apps.knowledge.tasks import chunks_vacuum as chunks_vacuum_task

    chunks_vacuum_task.delay()


def chunks_vacuum() -> bool:
    """VACUUM (ANALYZE) the passage table; False, with a warning, when this database role
    may not (PostgreSQL 17+ grants it the MAINTAIN privilege after every migrate, see
    `apps.audit.db_roles`; before 17 only the owner may vacuum)."""
    if connection.in_atomic_block:
        raise RuntimeError("VACUUM cannot run inside a transaction")
    with connection.cursor() as cursor:
        if connection.pg_version >= 170000:
            cursor.execute("SELECT has_table_privilege(%s, 'MAINTAIN')", [_TABLE])
        else:
            cursor.execute(
                "SELECT pg_get_userbyid(relowner) = current_user OR "
                "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
                "FROM pg_class WHERE oid = %s::regclass",
                [_TABLE],
            )
        (allowed,) = cursor.fetchone()
        if not allowed:
            logger.warning("no vacuum of %s: this database role may not maintain it", _TABLE)
            return False
        cursor.execute(f"VACUUM (ANALYZE) {_TABLE}")
    logger.info("vacuumed %s after large deletions", _TABLE)
    return True
