-- Who may see what: the roles of medpg's clients, row-level security policies and privileges.
--
-- Roles (cluster-wide, created once, never dropped by medpg):
--   medpg_api  NOLOGIN. The HTTP API switches to it for each request (SET LOCAL ROLE) after
--              checking the request's key, with the key's scope in medpg.tenant / medpg.patients
--              (015_scope.sql). It may read and write documents and chunks, within its scope, and
--              append audit rows.
--   medpg_app  NOLOGIN. The group role of SQL applications: a login role in it (`medpg roles
--              create`) reads documents, chunks and the lexical index through row-level security,
--              scoped by its row in medpg.sql_roles, and calls the search functions. It cannot
--              write documents or statistics, read keys, secrets or the audit log, or change its
--              scope.
-- The owner of the tables (the role that runs migrations; workers and the CLI use it) is not
-- subject to row-level security and keeps every privilege.
--
-- Policies: a row is visible when its tenant is the role's tenant and, for a role bound to
-- patients, its patient is one of them (a document without a patient is then invisible). Chunks
-- and staged embeddings are visible when their document is. The scope functions are wrapped in
-- scalar subqueries so each query evaluates them once, not per row.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'medpg_api') THEN
        CREATE ROLE medpg_api NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'medpg_app') THEN
        CREATE ROLE medpg_app NOLOGIN;
    END IF;
    -- The role that migrates runs the API: it must be able to become medpg_api.
    IF NOT pg_has_role(current_user, 'medpg_api', 'MEMBER') THEN
        EXECUTE format('GRANT medpg_api TO %I', current_user);
    END IF;
END
$$;

-- Documents and everything that reveals per-document facts.
DROP POLICY IF EXISTS scoped ON medpg.documents;
CREATE POLICY scoped ON medpg.documents
    USING (tenant_id = (SELECT medpg.scope_tenant())
           AND ((SELECT medpg.scope_patients()) IS NULL OR patient_id = ANY ((SELECT medpg.scope_patients())::text[])));

DROP POLICY IF EXISTS scoped ON medpg.chunks;
CREATE POLICY scoped ON medpg.chunks
    USING (EXISTS (SELECT 1 FROM medpg.documents d WHERE d.id = chunks.document_id));

DROP POLICY IF EXISTS scoped ON medpg.chunk_embeddings_staging;
CREATE POLICY scoped ON medpg.chunk_embeddings_staging
    USING (EXISTS (SELECT 1 FROM medpg.chunks c WHERE c.id = chunk_embeddings_staging.chunk_id));

DROP POLICY IF EXISTS scoped ON medpg.lexical_blocks;
CREATE POLICY scoped ON medpg.lexical_blocks FOR SELECT
    USING (tenant_id = (SELECT medpg.scope_tenant())
           AND ((SELECT medpg.scope_patients()) IS NULL OR patient_id = ANY ((SELECT medpg.scope_patients())::text[])));

DROP POLICY IF EXISTS scoped ON medpg.lexical_documents;
CREATE POLICY scoped ON medpg.lexical_documents FOR SELECT
    USING (tenant_id = (SELECT medpg.scope_tenant())
           AND ((SELECT medpg.scope_patients()) IS NULL OR patient_id = ANY ((SELECT medpg.scope_patients())::text[])));

-- A tenant's totals: visible to its tenant-wide roles only (a patient-bound role's BM25
-- statistics come from its own documents: medpg.lexical_scope_stats).
DROP POLICY IF EXISTS scoped ON medpg.lexical_stats;
CREATE POLICY scoped ON medpg.lexical_stats FOR SELECT
    USING (tenant_id = (SELECT medpg.scope_tenant()) AND (SELECT medpg.scope_patients()) IS NULL);

-- A SQL application's role reads its own scope, nothing else.
DROP POLICY IF EXISTS own_role ON medpg.sql_roles;
CREATE POLICY own_role ON medpg.sql_roles FOR SELECT USING (role_name = current_user);

-- The API appends audit rows for its own tenant only; nobody but the owner reads them.
DROP POLICY IF EXISTS append_own_tenant ON medpg.audit_log;
CREATE POLICY append_own_tenant ON medpg.audit_log FOR INSERT
    WITH CHECK (tenant_id = (SELECT medpg.scope_tenant()));

-- Query adaptations (medpg learn): a role reads its tenant's and those for every tenant (NULL),
-- which medpg.adapt_query_embedding applies for it; only the owner writes them.
DROP POLICY IF EXISTS scoped ON medpg.query_adaptations;
CREATE POLICY scoped ON medpg.query_adaptations FOR SELECT
    USING (tenant_id IS NULL OR tenant_id = (SELECT medpg.scope_tenant()));

-- Feedback: the API appends rows of its own tenant about documents it can see (a patient-bound key:
-- its patients' documents); nobody but the owner (medpg learn --feedback) reads them.
DROP POLICY IF EXISTS append_visible ON medpg.feedback;
CREATE POLICY append_visible ON medpg.feedback FOR INSERT
    WITH CHECK (tenant_id = (SELECT medpg.scope_tenant())
                AND EXISTS (SELECT 1 FROM medpg.documents d
                            WHERE d.id = feedback.document_id AND d.tenant_id = feedback.tenant_id));

-- Privileges. Functions are executable by anyone (PostgreSQL's default); they run as the caller,
-- so row-level security applies inside them. Only the index-maintenance triggers run as the owner.
GRANT USAGE ON SCHEMA medpg TO medpg_api, medpg_app;
GRANT SELECT ON medpg.documents, medpg.chunks, medpg.chunk_embeddings_staging, medpg.lexical_blocks,
    medpg.lexical_documents, medpg.lexical_stats, medpg.embedding_space, medpg.sql_roles,
    medpg.lexical_postings, medpg.lexical_document_frequencies, medpg.lexical_corpus, medpg.chunk_states
    TO medpg_api, medpg_app;
GRANT INSERT, UPDATE, DELETE ON medpg.documents, medpg.chunks TO medpg_api;
GRANT USAGE ON SEQUENCE medpg.documents_id_seq TO medpg_api;
GRANT INSERT ON medpg.audit_log TO medpg_api;
GRANT USAGE ON SEQUENCE medpg.audit_log_id_seq TO medpg_api;
GRANT SELECT ON medpg.query_adaptations TO medpg_api, medpg_app;
GRANT INSERT ON medpg.feedback TO medpg_api;
GRANT USAGE ON SEQUENCE medpg.feedback_id_seq TO medpg_api;
