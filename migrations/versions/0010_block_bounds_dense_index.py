"""Per-block score bounds for pruned BM25, and the dense index's configuration.

- ``medpg.lexical_blocks`` gains, per (lexeme, block), what an upper bound of any of its
  documents' BM25 contributions needs, for every k1, b and title weight chosen at query time:
  ``n_docs`` (the block's document frequency, so df needs no array), ``max_tf``, ``max_tf_title``,
  ``min_dl`` and ``min_dl_title``. A term's contribution grows with tf and shrinks with the length,
  so max tf over min length bounds every document of the block. ``medpg.bm25_search`` skips
  blocks whose summed bound cannot reach the current top-n (030_lexical_search.sql). The primary
  key now INCLUDEs them (and the block's tenant and patient), so the bounds of a query's blocks are
  read by an index-only scan without touching the postings' arrays.
- ``medpg.embedding_space`` records how the HNSW index over chunk vectors is built:
  ``index_storage`` ('vector': full precision; 'halfvec': an expression index over
  ``embedding::halfvec``, half the size), ``hnsw_m`` and ``hnsw_ef_construction``
  (``medpg.embedding.index``). A database without vectors yet has its (empty) index set to
  ef_construction 128, which reached recall@10 0.97 where 64 gave 0.93 at 100k x 768
  (benchmarks/results/hnsw_params.md); one with vectors keeps its graph, recorded as built (64),
  until ``medpg db reindex``.

Backfilling rewrites every block row once (one UPDATE).

Revision ID: 0010
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BOUNDS = ("n_docs", "max_tf", "max_tf_title", "min_dl", "min_dl_title")


def upgrade() -> None:
    op.execute(
        "ALTER TABLE medpg.lexical_blocks "
        + ", ".join(f"ADD COLUMN {c} integer" for c in BOUNDS)
    )
    op.execute(
        """
        UPDATE medpg.lexical_blocks b SET
            n_docs = cardinality(b.document_ids),
            max_tf = (SELECT max(x) FROM unnest(b.tf) x),
            max_tf_title = (SELECT max(x) FROM unnest(b.tf_title) x),
            min_dl = (SELECT min(x) FROM unnest(b.dl) x),
            min_dl_title = (SELECT min(x) FROM unnest(b.dl_title) x)
        """
    )
    op.execute(
        "ALTER TABLE medpg.lexical_blocks "
        + ", ".join(f"ALTER COLUMN {c} SET NOT NULL" for c in BOUNDS)
        + ", ADD CONSTRAINT lexical_blocks_bounds CHECK (n_docs = cardinality(document_ids))"
    )
    op.execute(
        "ALTER TABLE medpg.lexical_blocks DROP CONSTRAINT lexical_blocks_pkey, "
        "ADD CONSTRAINT lexical_blocks_pkey PRIMARY KEY (lexeme, block_id) "
        f"INCLUDE ({', '.join(BOUNDS)}, tenant_id, patient_id)"
    )
    op.execute(
        """
        ALTER TABLE medpg.embedding_space
            ADD COLUMN index_storage text NOT NULL DEFAULT 'vector'
                CHECK (index_storage IN ('vector', 'halfvec')),
            ADD COLUMN hnsw_m integer NOT NULL DEFAULT 16 CHECK (hnsw_m BETWEEN 2 AND 100),
            ADD COLUMN hnsw_ef_construction integer NOT NULL DEFAULT 64
                CHECK (hnsw_ef_construction BETWEEN 4 AND 1000)
        """
    )
    op.execute(
        """
        DO $$
        BEGIN
            IF to_regclass('medpg.chunks_embedding_hnsw_idx') IS NOT NULL
               AND NOT EXISTS (SELECT FROM medpg.chunks WHERE embedding IS NOT NULL) THEN
                ALTER INDEX medpg.chunks_embedding_hnsw_idx SET (ef_construction = 128);
                UPDATE medpg.embedding_space SET hnsw_ef_construction = 128;
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF to_regclass('medpg.chunks_embedding_hnsw_idx') IS NOT NULL THEN
                ALTER INDEX medpg.chunks_embedding_hnsw_idx RESET (ef_construction);
            END IF;
        END
        $$
        """
    )
    op.execute(
        "ALTER TABLE medpg.embedding_space DROP COLUMN index_storage, DROP COLUMN hnsw_m, "
        "DROP COLUMN hnsw_ef_construction"
    )
    op.execute(
        "ALTER TABLE medpg.lexical_blocks DROP CONSTRAINT lexical_blocks_pkey, "
        "ADD CONSTRAINT lexical_blocks_pkey PRIMARY KEY (lexeme, block_id)"
    )
    op.execute(
        "ALTER TABLE medpg.lexical_blocks DROP CONSTRAINT lexical_blocks_bounds, "
        + ", ".join(f"DROP COLUMN {c}" for c in BOUNDS)
    )
