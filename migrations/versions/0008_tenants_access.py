"""Tenants, row-level security, API keys and the audit log.

- ``medpg.documents.tenant_id``: every document belongs to one tenant ('default' for those that
  exist); ids are unique per tenant: (tenant_id, source, external_id).
- The lexical index records each block's and each document's tenant and patient, so row-level
  security can hide another patient's postings: a block now holds documents of one (tenant,
  patient) only. Existing blocks are regrouped that way. ``medpg.lexical_stats`` is kept per
  tenant, so one tenant's BM25 statistics never include another's documents.
- Row-level security is enabled on documents, chunks and the lexical tables. The policies
  (``sql/idempotent/100_access.sql``) let a scoped role see its tenant's rows, and of those only
  its patients' when it is bound to patients; the owner (migrations, workers, the CLI) is not
  subject to them.
- ``medpg.api_keys`` (hashed keys bound to a tenant and optionally to patients, with scopes),
  ``medpg.audit_log`` (who read or searched what), ``medpg.sql_roles`` (the scope of each database
  role of a SQL application) and ``medpg.service_secrets`` (the key of the audit log's query
  hashes, readable only by the owner).

Revision ID: 0008
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCOPED_TABLES = (
    "documents", "chunks", "chunk_embeddings_staging", "lexical_blocks", "lexical_documents", "lexical_stats"
)
SERVICE_TABLES = ("api_keys", "audit_log", "sql_roles", "service_secrets")


def upgrade() -> None:
    # --- documents: a tenant each, ids unique per tenant ---------------------------------------
    op.execute("ALTER TABLE medpg.documents ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'")
    op.execute(
        "ALTER TABLE medpg.documents ADD CONSTRAINT documents_tenant_id_check "
        "CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$')"
    )
    op.execute("ALTER TABLE medpg.documents DROP CONSTRAINT documents_source_external_id_key")
    op.execute(
        "ALTER TABLE medpg.documents ADD CONSTRAINT documents_tenant_source_external_id_key "
        "UNIQUE (tenant_id, source, external_id)"
    )
    # The row-level security filter of a patient-bound role: tenant and patient first.
    op.execute(
        "CREATE INDEX documents_tenant_patient_idx ON medpg.documents (tenant_id, patient_id, id)"
    )

    # --- the lexical index: tenant and patient of each block and document ---------------------
    op.execute("ALTER TABLE medpg.lexical_blocks ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'")
    op.execute("ALTER TABLE medpg.lexical_blocks ADD COLUMN patient_id text")
    op.execute("ALTER TABLE medpg.lexical_documents ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'")
    op.execute("ALTER TABLE medpg.lexical_documents ADD COLUMN patient_id text")
    op.execute(
        "CREATE INDEX lexical_documents_scope_idx ON medpg.lexical_documents (tenant_id, patient_id)"
    )
    _regroup_blocks_by_patient()

    op.execute("ALTER TABLE medpg.lexical_stats ADD COLUMN tenant_id text NOT NULL DEFAULT 'default'")
    op.execute("ALTER TABLE medpg.lexical_stats DROP CONSTRAINT lexical_stats_pkey")
    op.execute("ALTER TABLE medpg.lexical_stats ADD PRIMARY KEY (tenant_id, slot)")

    # --- service tables -------------------------------------------------------------------------
    op.execute(
        """
        CREATE TABLE medpg.api_keys (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            prefix       text        NOT NULL UNIQUE,  -- the token's public part, to find the row
            secret_hash  bytea       NOT NULL,         -- SHA-256 of the whole token
            name         text        NOT NULL,
            tenant_id    text        NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
            patient_ids  text[],                       -- NULL: every patient of the tenant
            scopes       text[]      NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            revoked_at   timestamptz,
            last_used_at timestamptz,
            CONSTRAINT api_keys_patients_not_empty CHECK (patient_ids IS NULL OR cardinality(patient_ids) > 0)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE medpg.audit_log (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at           timestamptz NOT NULL DEFAULT clock_timestamp(),
            key_id       bigint REFERENCES medpg.api_keys (id),
            db_role      name        NOT NULL DEFAULT current_user,
            tenant_id    text        NOT NULL,
            route        text        NOT NULL,
            query_hash   bytea,                        -- HMAC-SHA256 of the query, never its text
            document_ids bigint[]    NOT NULL,
            patient_ids  text[]      NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX audit_log_tenant_at_idx ON medpg.audit_log (tenant_id, at)")
    op.execute("CREATE INDEX audit_log_patients_idx ON medpg.audit_log USING gin (patient_ids)")
    op.execute(
        """
        CREATE TABLE medpg.sql_roles (
            role_name   name        PRIMARY KEY,
            tenant_id   text        NOT NULL CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
            patient_ids text[],                        -- NULL: every patient of the tenant
            created_at  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE medpg.service_secrets (
            name   text  PRIMARY KEY,
            secret bytea NOT NULL
        )
        """
    )
    op.execute(
        sa.text("INSERT INTO medpg.service_secrets (name, secret) VALUES ('audit_hmac', :secret)").bindparams(
            secret=secrets.token_bytes(32)
        )
    )
    op.execute(
        "COMMENT ON TABLE medpg.api_keys IS 'API keys of medpg serve: a SHA-256 of each token, its tenant, "
        "its patients (NULL: all of the tenant) and its SMART-style scopes'"
    )
    op.execute(
        "COMMENT ON TABLE medpg.audit_log IS 'One row per search or document read through the API: key, "
        "tenant, route, a keyed hash of the query, the documents returned and their patients'"
    )
    op.execute(
        "COMMENT ON TABLE medpg.sql_roles IS 'The scope (tenant, patients) of each database role of a SQL "
        "application in medpg_app'"
    )

    for table in SCOPED_TABLES + SERVICE_TABLES:
        op.execute(f"ALTER TABLE medpg.{table} ENABLE ROW LEVEL SECURITY")


def _regroup_blocks_by_patient() -> None:
    """Cut the existing blocks again so that each holds the documents of one (tenant, patient)."""
    op.execute(
        """
        CREATE TEMP TABLE _medpg_placed ON COMMIT DROP AS
        SELECT ld.document_id, ld.dl, ld.dl_title, d.tenant_id, d.patient_id,
               (row_number() OVER (PARTITION BY d.tenant_id, d.patient_id ORDER BY ld.document_id) - 1) / 1000 AS g
        FROM medpg.lexical_documents ld JOIN medpg.documents d ON d.id = ld.document_id
        """
    )
    op.execute(
        """
        CREATE TEMP TABLE _medpg_blocks ON COMMIT DROP AS
        SELECT x.tenant_id, x.patient_id, x.g, nextval('medpg.lexical_block_seq') AS block_id
        FROM (SELECT DISTINCT tenant_id, patient_id, g FROM _medpg_placed ORDER BY 1, 2, 3) x
        """
    )
    op.execute(
        """
        CREATE TEMP TABLE _medpg_postings ON COMMIT DROP AS
        SELECT b.lexeme, u.document_id, u.tf, u.tf_title, u.dl, u.dl_title
        FROM medpg.lexical_blocks b
        CROSS JOIN LATERAL unnest(b.document_ids, b.tf, b.tf_title, b.dl, b.dl_title)
            AS u(document_id, tf, tf_title, dl, dl_title)
        """
    )
    op.execute("TRUNCATE medpg.lexical_blocks, medpg.lexical_documents")
    op.execute(
        """
        INSERT INTO medpg.lexical_documents (document_id, block_id, dl, dl_title, tenant_id, patient_id)
        SELECT p.document_id, b.block_id, p.dl, p.dl_title, p.tenant_id, p.patient_id
        FROM _medpg_placed p
        JOIN _medpg_blocks b ON b.tenant_id = p.tenant_id AND b.patient_id IS NOT DISTINCT FROM p.patient_id
                            AND b.g = p.g
        """
    )
    op.execute(
        """
        INSERT INTO medpg.lexical_blocks
            (lexeme, block_id, document_ids, tf, tf_title, dl, dl_title, tenant_id, patient_id)
        SELECT p.lexeme, ld.block_id,
               array_agg(p.document_id ORDER BY p.document_id), array_agg(p.tf ORDER BY p.document_id),
               array_agg(p.tf_title ORDER BY p.document_id), array_agg(p.dl ORDER BY p.document_id),
               array_agg(p.dl_title ORDER BY p.document_id), min(ld.tenant_id), min(ld.patient_id)
        FROM _medpg_postings p JOIN medpg.lexical_documents ld ON ld.document_id = p.document_id
        GROUP BY p.lexeme, ld.block_id
        """
    )


def downgrade() -> None:
    for table in SCOPED_TABLES:
        op.execute(f"ALTER TABLE medpg.{table} DISABLE ROW LEVEL SECURITY")
    for table in reversed(SERVICE_TABLES):
        op.execute(f"DROP TABLE medpg.{table}")

    # Statistics of all tenants in one: the layout before tenants.
    op.execute(
        """
        CREATE TEMP TABLE _medpg_stats ON COMMIT DROP AS
        SELECT slot, sum(documents)::bigint AS documents, sum(length)::bigint AS length,
               sum(title_length)::bigint AS title_length
        FROM medpg.lexical_stats GROUP BY slot
        """
    )
    op.execute("DELETE FROM medpg.lexical_stats")
    op.execute("ALTER TABLE medpg.lexical_stats DROP CONSTRAINT lexical_stats_pkey")
    op.execute("ALTER TABLE medpg.lexical_stats DROP COLUMN tenant_id")
    op.execute("ALTER TABLE medpg.lexical_stats ADD PRIMARY KEY (slot)")
    op.execute("INSERT INTO medpg.lexical_stats SELECT * FROM _medpg_stats")

    # Blocks of one patient are valid blocks without the columns (their ids stay unique).
    op.execute("DROP INDEX medpg.lexical_documents_scope_idx")
    op.execute("ALTER TABLE medpg.lexical_documents DROP COLUMN patient_id, DROP COLUMN tenant_id")
    op.execute("ALTER TABLE medpg.lexical_blocks DROP COLUMN patient_id, DROP COLUMN tenant_id")

    # Fails, with nothing changed, when two tenants hold the same (source, external_id).
    op.execute("DROP INDEX medpg.documents_tenant_patient_idx")
    op.execute("ALTER TABLE medpg.documents DROP CONSTRAINT documents_tenant_source_external_id_key")
    op.execute(
        "ALTER TABLE medpg.documents ADD CONSTRAINT documents_source_external_id_key UNIQUE (source, external_id)"
    )
    op.execute("ALTER TABLE medpg.documents DROP CONSTRAINT documents_tenant_id_check")
    op.execute("ALTER TABLE medpg.documents DROP COLUMN tenant_id")
