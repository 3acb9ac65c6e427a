"""Finish a model switch: make the staged vectors of the new model the searched ones.

README, "Changing the article model without downtime". While the configured article model
differs from ``embedding_space.model``, vectors go to ``medpg.chunk_embeddings_staging`` and
search keeps using the old model's; when every chunk has a staged vector, one transaction swaps.
"""

from __future__ import annotations

import logging

from medpg.config import Settings
from medpg.db.engine import Database
from medpg.embedding.space import article_model_identity, mode_for, space_model

log = logging.getLogger(__name__)

# Chunks still waiting for a staged vector; failed ones (attempts used up) do not block the switch.
_REMAINING = """
SELECT count(*) FROM medpg.chunk_state(%(model)s, %(lease)s, %(max_attempts)s)
WHERE state NOT IN ('embedded', 'failed')
"""

_SWAP = """
UPDATE medpg.chunks c
SET embedding = s.embedding, embedding_model = s.model, embedded_hash = s.embedded_hash,
    embedded_at = s.embedded_at
FROM medpg.chunk_embeddings_staging s
WHERE s.chunk_id = c.id AND s.model = %(model)s
"""

# Chunks without a new vector keep none: an old-model vector is in another space.
_CLEAR_OLD = """
UPDATE medpg.chunks SET embedding = NULL, embedding_model = NULL, embedded_hash = NULL, embedded_at = NULL
WHERE embedding_model IS DISTINCT FROM %(model)s AND (embedding IS NOT NULL OR embedding_model IS NOT NULL)
"""


def finish_model_switch(db: Database, settings: Settings, model: str | None = None) -> str | None:
    """If a switch to ``model`` is complete, make its vectors the searched ones; returns the model.

    Complete: every chunk has a staging vector of ``model`` for its current text, except chunks
    that ran out of attempts (they would block the switch forever; they lose their old-model vector,
    stay listed as failed, and ``medpg embed --retry-failed`` retries them). One transaction: the
    vectors, ``embedding_model`` and ``embedding_space.model`` change together, so search sees
    either all old vectors or all new ones.
    """
    model = model or article_model_identity(settings)
    params = {
        "model": model,
        "lease": settings.embed_lease_seconds,
        "max_attempts": settings.embed_max_attempts,
    }
    with db.connect() as conn:
        active = space_model(conn, lock="update")
        if mode_for(model, active) == "direct":
            conn.rollback()
            return None
        remaining = conn.execute(_REMAINING, params).fetchone()
        if remaining is None or remaining[0] > 0:
            conn.rollback()
            return None
        conn.execute(_SWAP, params)
        conn.execute(_CLEAR_OLD, params)
        conn.execute("DELETE FROM medpg.chunk_embeddings_staging")
        conn.execute("UPDATE medpg.embedding_space SET model = %s", (model,))
        conn.commit()
    log.info("model switch finished: search now uses %s (was %s)", model, active)
    return model
