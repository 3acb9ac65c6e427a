"""Query adaptations learned from judgments, and the feedback they can be learned from.

- ``medpg.query_adaptations``: versions of a query-side adaptation (``medpg learn``), trained
  against the document vectors already stored. Each row says which query model and which stored
  vectors it was trained for, what it was trained on, its held-out nDCG@10 and that of the
  adaptation active when it was trained, its parameters and its fusion weights. ``tenant_id``
  NULL: it serves every tenant that has no active adaptation of its own. At most one row is active
  per tenant and one globally (a partial unique index); switching is one UPDATE transaction
  (``medpg.learning.store``). ``previous_id`` is what was active before this one was activated,
  for ``medpg learn rollback``.
- ``medpg.feedback``: judgments recorded by applications (``POST /feedback``): the query text (kept
  because training needs it; never logged), the document (deleted with it), a grade 0-3 and how it
  was given (``marked``: a user's explicit grade; ``opened``: a result the user opened).

Row-level security is enabled on both; the policies and grants are in
``sql/idempotent/100_access.sql``, the SQL function that applies the active adaptation in
``sql/idempotent/110_query_adaptation.sql``.

Revision ID: 0009
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TENANT_CHECK = "~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE medpg.query_adaptations (
            id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            created_at       timestamptz NOT NULL DEFAULT now(),
            tenant_id        text CHECK (tenant_id {TENANT_CHECK}),   -- NULL: every tenant
            kind             text        NOT NULL CHECK (kind IN ('residual_linear')),
            query_model      text        NOT NULL,   -- label@fingerprint of the query encoder it adapts
            article_model    text        NOT NULL,   -- embedding_space.model of the vectors it was trained on
            dimension        integer     NOT NULL CHECK (dimension BETWEEN 1 AND 16000),
            -- q' = (q + W q) * |q| / |q + W q|: row i of W as a vector, so that (W q)_i is
            -- pgvector's inner product of row i and q (in SQL as in Python)
            weight           vector[]    NOT NULL CHECK (cardinality(weight) = dimension),
            dense_weight     double precision NOT NULL CHECK (dense_weight BETWEEN 0 AND 1000),
            lexical_weight   double precision NOT NULL CHECK (lexical_weight BETWEEN 0 AND 1000),
            trained_on       jsonb       NOT NULL,   -- source, data set, splits, counts (never text)
            training         jsonb       NOT NULL,   -- hyperparameters, epochs, seconds
            heldout_ndcg10   double precision NOT NULL,   -- this adaptation on the held-out queries
            baseline_ndcg10  double precision NOT NULL,   -- what was active then, on the same queries
            baseline_id      bigint REFERENCES medpg.query_adaptations (id) ON DELETE SET NULL,
            active           boolean     NOT NULL DEFAULT false,
            activated_at     timestamptz,
            forced           boolean     NOT NULL DEFAULT false,   -- activated although it scored lower
            previous_id      bigint REFERENCES medpg.query_adaptations (id) ON DELETE SET NULL,
            CONSTRAINT query_adaptations_active_has_time CHECK (NOT active OR activated_at IS NOT NULL)
        )
        """
    )
    # At most one active adaptation per tenant and one for every tenant (NULL); the lookup of
    # the active one on every search reads this index.
    op.execute(
        "CREATE UNIQUE INDEX query_adaptations_one_active ON medpg.query_adaptations (tenant_id) "
        "NULLS NOT DISTINCT WHERE active"
    )
    op.execute(
        f"""
        CREATE TABLE medpg.feedback (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            tenant_id    text        NOT NULL CHECK (tenant_id {TENANT_CHECK}),
            key_id       bigint REFERENCES medpg.api_keys (id),
            query        text        NOT NULL CHECK (btrim(query) <> ''),
            document_id  bigint      NOT NULL REFERENCES medpg.documents (id) ON DELETE CASCADE,
            grade        smallint    NOT NULL CHECK (grade BETWEEN 0 AND 3),
            kind         text        NOT NULL CHECK (kind IN ('marked', 'opened')),
            created_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX feedback_tenant_created_idx ON medpg.feedback (tenant_id, created_at)")
    op.execute("CREATE INDEX feedback_document_idx ON medpg.feedback (document_id)")
    op.execute(
        "COMMENT ON TABLE medpg.query_adaptations IS 'Versions of the query-side adaptation learned by "
        "medpg learn: parameters, fusion weights, what they were trained on, held-out figures, which is active'"
    )
    op.execute(
        "COMMENT ON TABLE medpg.feedback IS 'Relevance judgments recorded through POST /feedback: query text "
        "(for training; never logged), document, grade 0-3, kind'"
    )
    for table in ("query_adaptations", "feedback"):
        op.execute(f"ALTER TABLE medpg.{table} ENABLE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.execute("DROP TABLE medpg.feedback")
    op.execute("DROP TABLE medpg.query_adaptations")
