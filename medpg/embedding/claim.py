"""Leases on chunks: claim the ones that need a vector, give them back without a result.

The rules live in SQL (``medpg.claim_chunks``, ``070_embedding_state.sql``): ``FOR UPDATE SKIP
LOCKED`` so workers split the work without waiting on each other, a lease (``claimed_by`` /
``claimed_at``) that another worker may take over once it expires, and ``attempts`` counted per
claim, so a chunk that keeps killing its worker stops being retried too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from medpg.config import Settings
from medpg.embedding.records import ClaimedChunk

_CLAIM = """
SELECT chunk_id, title, chunk_text, content_hash
FROM medpg.claim_chunks(model => %(model)s, token => %(token)s, max_chunks => %(limit)s,
                        lease_seconds => %(lease)s, max_attempts => %(max_attempts)s,
                        after_id => %(after)s, chunk_ids => %(ids)s)
"""

_RELEASE = """
UPDATE medpg.chunks SET claimed_by = NULL, claimed_at = NULL, attempts = greatest(attempts - 1, 0)
WHERE id = ANY(%s) AND claimed_by = %s
"""


def claim_chunks(
    conn: psycopg.Connection[Any],
    settings: Settings,
    model: str,
    token: str,
    limit: int,
    *,
    after: int | None = None,
    ids: Sequence[int] | None = None,
) -> list[ClaimedChunk]:
    """Lease up to ``limit`` chunks: the given ``ids`` still pending and free, or the next after ``after``."""
    rows = conn.execute(
        _CLAIM,
        {
            "model": model,
            "token": token,
            "limit": limit,
            "lease": settings.embed_lease_seconds,
            "max_attempts": settings.embed_max_attempts,
            "after": after,
            "ids": list(ids) if ids is not None else None,
        },
    ).fetchall()
    return sorted((ClaimedChunk(r[0], r[1], r[2], bytes(r[3])) for r in rows), key=lambda c: c.id)


def release_chunks(conn: psycopg.Connection[Any], chunks: Sequence[ClaimedChunk], token: str) -> None:
    """Give leases and their attempt back (shutdown, or an error that is not the chunks' fault)."""
    conn.execute(_RELEASE, ([c.id for c in chunks], token))
