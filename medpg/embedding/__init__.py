"""Embed chunks: claim pending ones, encode them with the article encoder, write the vectors back.

One implementation shared by the Celery worker (``workers.tasks``), ``medpg embed`` (in-process,
no broker) and the benchmarks. PostgreSQL is the source of truth: whether a chunk needs a vector
is defined in SQL (``medpg.chunk_state`` and the work functions of
``migrations/sql/idempotent/070_embedding_state.sql``); messages in a broker only say "look at
these chunks", so losing them costs time, never data.

The stages, one module each:

- ``rechunk``: cut chunks again for documents a plain-SQL writer inserted or changed;
- ``claim``: lease chunks that need a vector (``FOR UPDATE SKIP LOCKED``), give leases back;
- ``encode``: the article encoder, splitting a batch until each failing chunk is alone;
- ``write``: vectors back if the text is unchanged and the lease is still ours; failures recorded;
- ``switch``: finish a model switch in one transaction;
- ``queue``: count, enqueue, reconcile, retry failed;
- ``embedder``: the ``Embedder`` that runs claim → encode → write for one process.
"""

from medpg.embedding.embedder import Embedder
from medpg.embedding.queue import count_claimable, reconcile, retry_failed, select_for_enqueue
from medpg.embedding.rechunk import RechunkReport, queued_documents, rechunk_pending
from medpg.embedding.records import BatchResult, ClaimedChunk, EmbedReport, ReconcileReport, batched
from medpg.embedding.space import Mode, article_model_identity, mode_for, space_model
from medpg.embedding.switch import finish_model_switch
from medpg.embedding.write import MAX_ERROR_CHARS

__all__ = [
    "MAX_ERROR_CHARS",
    "BatchResult",
    "ClaimedChunk",
    "EmbedReport",
    "Embedder",
    "Mode",
    "ReconcileReport",
    "RechunkReport",
    "article_model_identity",
    "batched",
    "count_claimable",
    "finish_model_switch",
    "mode_for",
    "queued_documents",
    "rechunk_pending",
    "reconcile",
    "retry_failed",
    "select_for_enqueue",
    "space_model",
]
