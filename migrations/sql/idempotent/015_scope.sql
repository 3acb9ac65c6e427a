-- The scope of the current role: which tenant, and which of its patients, it may see.
--
-- Row-level security (100_access.sql) compares each row's tenant_id and patient_id with these.
-- Two kinds of role are scoped:
--   medpg_api   the role the HTTP API switches to for each request (SET LOCAL ROLE). The API sets
--               the scope of the request's key in transaction-local settings: medpg.tenant, and
--               medpg.patients ('*' for every patient of the tenant, else a text[] literal).
--               Only a member of medpg_api can become it, so no other client can use them.
--   members of medpg_app
--               database roles of SQL applications. Their scope is their row of medpg.sql_roles
--               (written by `medpg roles create`), which they cannot change; settings are ignored.
-- Any other role that is not the tables' owner sees no row at all (tenant NULL). The owner
-- (migrations, embedding workers, the CLI) is not subject to row-level security.

CREATE OR REPLACE FUNCTION medpg.scope_tenant() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN current_user = 'medpg_api'
                THEN nullif(current_setting('medpg.tenant', true), '')
                ELSE (SELECT r.tenant_id FROM medpg.sql_roles r WHERE r.role_name = current_user)
           END
$$;

COMMENT ON FUNCTION medpg.scope_tenant() IS
    'The tenant the current role may see (NULL: none)';

-- NULL: every patient of the tenant; an empty array: none.
CREATE OR REPLACE FUNCTION medpg.scope_patients() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN current_user = 'medpg_api'
                THEN CASE coalesce(current_setting('medpg.patients', true), '')
                          WHEN '*' THEN NULL
                          WHEN '' THEN '{}'::text[]
                          ELSE current_setting('medpg.patients', true)::text[]
                     END
                ELSE (SELECT r.patient_ids FROM medpg.sql_roles r WHERE r.role_name = current_user)
           END
$$;

COMMENT ON FUNCTION medpg.scope_patients() IS
    'The patients the current role may see: NULL for every patient of its tenant';

-- True when row-level security filters documents for the current role down to some patients:
-- BM25 statistics then come from those patients' documents only (030_lexical_search.sql).
CREATE OR REPLACE FUNCTION medpg.patient_scoped() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT row_security_active('medpg.documents'::regclass) AND medpg.scope_patients() IS NOT NULL
$$;
