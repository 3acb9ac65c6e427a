"""Write vectors back, and record the chunks the encoder failed on.

A vector is stored only if its chunk still has the content hash that was encoded and the lease is
still ours: a chunk edited meanwhile is embedded again from the new text, and a chunk whose lease
was taken over is written once, by the new holder.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from medpg.config import Settings
from medpg.embedding.encode import Encoded, Failed
from medpg.embedding.records import BatchResult
from medpg.embedding.space import mode_for, space_model

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500

_WRITE_DIRECT = """
UPDATE medpg.chunks c
SET embedding = v.embedding, embedding_model = %(model)s, embedded_hash = v.hash,
    embedded_at = now(), claimed_by = NULL, claimed_at = NULL, attempts = 0,
    last_error = NULL, failed_at = NULL
FROM unnest(%(ids)s::bigint[], %(hashes)s::bytea[], %(vectors)s::vector[]) AS v(id, hash, embedding)
WHERE c.id = v.id AND c.content_hash = v.hash AND c.claimed_by = %(token)s
RETURNING c.id
"""

# During a model switch: the lease is settled on the chunk, the vector goes to staging.
_WRITE_STAGING = """
WITH done AS (
    UPDATE medpg.chunks c
    SET claimed_by = NULL, claimed_at = NULL, attempts = 0, last_error = NULL, failed_at = NULL
    FROM unnest(%(ids)s::bigint[], %(hashes)s::bytea[], %(vectors)s::vector[]) AS v(id, hash, embedding)
    WHERE c.id = v.id AND c.content_hash = v.hash AND c.claimed_by = %(token)s
    RETURNING c.id, v.hash, v.embedding
)
INSERT INTO medpg.chunk_embeddings_staging AS s (chunk_id, model, embedding, embedded_hash)
SELECT id, %(model)s, embedding, hash FROM done
ON CONFLICT (chunk_id) DO UPDATE SET model = EXCLUDED.model, embedding = EXCLUDED.embedding,
    embedded_hash = EXCLUDED.embedded_hash, embedded_at = now()
RETURNING s.chunk_id
"""

# Not written, lease still ours: the text changed; give the lease back so it is embedded again.
_RELEASE_STALE = """
UPDATE medpg.chunks SET claimed_by = NULL, claimed_at = NULL
WHERE id = ANY(%s) AND claimed_by = %s RETURNING id
"""

_RECORD_FAILURE = """
UPDATE medpg.chunks SET last_error = %s, failed_at = now(), claimed_by = NULL, claimed_at = NULL
WHERE id = %s AND claimed_by = %s AND content_hash = %s
RETURNING attempts
"""


def write_vectors(
    conn: psycopg.Connection[Any], encoded: Encoded, model: str, token: str, result: BatchResult
) -> None:
    """Store the vectors of ``encoded`` and commit; sort the rest into stale and lost in ``result``.

    Takes ``embedding_space`` FOR SHARE first, so the destination (direct or staging) cannot change
    under us: a finishing model switch takes the row FOR UPDATE.
    """
    if not encoded:
        return
    ids = [c.id for c, _ in encoded]
    params = {
        "ids": ids,
        "hashes": [c.content_hash for c, _ in encoded],
        "vectors": [v for _, v in encoded],
        "model": model,
        "token": token,
    }
    mode = mode_for(model, space_model(conn, lock="share"))
    sql = _WRITE_DIRECT if mode == "direct" else _WRITE_STAGING
    written = {r[0] for r in conn.execute(sql, params).fetchall()}
    rest = [i for i in ids if i not in written]
    if rest:
        stale = {r[0] for r in conn.execute(_RELEASE_STALE, (rest, token)).fetchall()}
        result.stale += sorted(stale)
        result.lost += [i for i in rest if i not in stale]
    conn.commit()
    result.written += sorted(written)


def error_text(exc: BaseException) -> str:
    """What is stored as ``last_error``: the exception's type and first words, one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:MAX_ERROR_CHARS]


def record_failures(
    conn: psycopg.Connection[Any], failures: Failed, settings: Settings, token: str, result: BatchResult
) -> None:
    """Store each failing chunk's error and give its lease back; it is retried until attempts run out."""
    if not failures:
        return
    for chunk, exc in failures:
        error = error_text(exc)
        row = conn.execute(_RECORD_FAILURE, (error, chunk.id, token, chunk.content_hash)).fetchone()
        if row is None:  # text changed or lease lost meanwhile: not this text's failure
            result.stale.append(chunk.id)
            continue
        attempts = int(row[0])
        result.failed.append((chunk.id, attempts, error))
        if attempts < settings.embed_max_attempts:
            result.retry.append((chunk.id, attempts))
        # The exception type only: messages from tokenizers can quote the input text.
        log.warning(
            "chunk %d failed to embed (attempt %d of %d): %s",
            chunk.id,
            attempts,
            settings.embed_max_attempts,
            type(exc).__name__,
        )
    conn.commit()


__all__ = ["MAX_ERROR_CHARS", "error_text", "record_failures", "write_vectors"]
