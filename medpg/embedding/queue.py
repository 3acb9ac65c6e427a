"""Finding work: count what is claimable, stamp chunks for the broker, reconcile, retry failed.

PostgreSQL decides what needs a vector (``medpg.mark_enqueued`` and friends in
``070_embedding_state.sql``); a message only carries chunk ids. A lost message, a flushed broker
or a killed worker costs time, never data: reconcile finds the chunks again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from medpg.config import Settings
from medpg.db.engine import Database
from medpg.embedding.rechunk import rechunk_pending
from medpg.embedding.records import ReconcileReport, batched
from medpg.embedding.space import article_model_identity
from medpg.embedding.switch import finish_model_switch

RECONCILE_LOCK = "medpg.reconcile"

_COUNT_CLAIMABLE = "SELECT medpg.count_claimable(%(model)s, %(lease)s, %(max_attempts)s)"
_MARK_ENQUEUED = """
SELECT id FROM medpg.mark_enqueued(model => %(model)s, lease_seconds => %(lease)s,
                                   max_attempts => %(max_attempts)s, document_ids => %(docs)s,
                                   chunk_ids => %(ids)s, include_recent => %(include_recent)s) AS m(id)
"""
_RESET_FAILED = "SELECT id FROM medpg.reset_failed(%(model)s, %(max_attempts)s) AS r(id)"
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext(%s))"


def _params(settings: Settings, model: str) -> dict[str, object]:
    return {
        "model": model,
        "lease": settings.embed_lease_seconds,
        "max_attempts": settings.embed_max_attempts,
    }


def count_claimable(db: Database, settings: Settings, model: str) -> int:
    """How many chunks could be claimed now (pending, attempts left, not leased by a live worker)."""
    with db.connect() as conn:
        row = conn.execute(_COUNT_CLAIMABLE, _params(settings, model)).fetchone()
    return int(row[0]) if row else 0


def select_for_enqueue(
    db: Database,
    settings: Settings,
    *,
    model: str | None = None,
    document_ids: Sequence[int] | None = None,
    chunk_ids: Sequence[int] | None = None,
    include_recent: bool = True,
    lock_key: str | None = None,
) -> list[int] | None:
    """Ids of claimable pending chunks, stamped ``enqueued_at = now()`` and committed.

    Commit before sending: a worker receiving the message must not find the rows locked by this
    transaction (SKIP LOCKED would skip them and the message would be wasted). ``include_recent``
    False leaves out chunks enqueued less than a lease ago (their message is probably still queued).
    ``lock_key``: take this advisory lock or return None (another reconcile is running).
    """
    params = _params(settings, model or article_model_identity(settings))
    params.update(
        docs=list(document_ids) if document_ids is not None else None,
        ids=list(chunk_ids) if chunk_ids is not None else None,
        include_recent=include_recent,
    )
    with db.connect() as conn:
        if lock_key is not None:
            got = conn.execute(_TRY_LOCK, (lock_key,)).fetchone()
            if not got or not got[0]:
                conn.rollback()
                return None
        ids = sorted(r[0] for r in conn.execute(_MARK_ENQUEUED, params).fetchall())
        conn.commit()
    return ids


def reconcile(
    db: Database,
    settings: Settings,
    enqueue: Callable[[list[int]], object],
    *,
    include_recent: bool = True,
) -> ReconcileReport:
    """Find every chunk that needs a vector and is not leased, and hand its id to ``enqueue``.

    Documents queued for chunking (changed by plain SQL) are chunked first. Pending, stale-model
    (during a switch) and lease-expired chunks are all "claimable pending".
    With ``include_recent`` False, chunks enqueued less than a lease ago are left alone (periodic
    runs with a backlog in the queue). When nothing is left during a switch, the switch finishes.
    Concurrent reconciles are harmless; an advisory lock lets one of them skip.
    """
    model = article_model_identity(settings)
    rechunk_pending(db, settings)  # documents a plain-SQL writer changed get their chunks first
    ids = select_for_enqueue(
        db, settings, model=model, include_recent=include_recent, lock_key=RECONCILE_LOCK
    )
    if ids is None:
        return ReconcileReport(skipped=True)
    for group in batched(ids, settings.embed_claim_size):
        enqueue(group)
    report = ReconcileReport(enqueued=len(ids))
    if not ids:
        report.switched_model = finish_model_switch(db, settings, model)
    return report


def retry_failed(db: Database, settings: Settings) -> list[int]:
    """Give chunks that ran out of attempts a fresh set; returns their ids (to embed or enqueue)."""
    with db.connect() as conn:
        rows = conn.execute(_RESET_FAILED, _params(settings, article_model_identity(settings))).fetchall()
        conn.commit()
    return sorted(r[0] for r in rows)
