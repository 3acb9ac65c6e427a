-- Removes every policy, function, view and trigger that migrations/sql/idempotent defines, before a
-- downgrade changes the tables under them. Objects are found in the catalog (everything medpg
-- owns in its schema), so a definition removed from the idempotent files goes too. Tables,
-- sequences and indexes belong to the revisions and are left alone.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT p.policyname, format('%I.%I', p.schemaname, p.tablename) AS rel
        FROM pg_policies p WHERE p.schemaname = 'medpg'
    LOOP
        EXECUTE format('DROP POLICY %I ON %s', r.policyname, r.rel);
    END LOOP;
    FOR r IN
        SELECT t.tgname, t.tgrelid::regclass AS rel
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'medpg'::regnamespace AND NOT t.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
    FOR r IN
        SELECT c.oid::regclass AS rel FROM pg_class c
        WHERE c.relnamespace = 'medpg'::regnamespace AND c.relkind = 'v'
    LOOP
        EXECUTE format('DROP VIEW IF EXISTS %s', r.rel);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS fn FROM pg_proc p
        WHERE p.pronamespace = 'medpg'::regnamespace
    LOOP
        EXECUTE format('DROP FUNCTION %s', r.fn);
    END LOOP;
END
$$;
