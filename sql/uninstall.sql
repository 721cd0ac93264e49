-- Removes what sql/002_enforcement.sql, 003_ddl_notify.sql and 004_storage.sql installed:
-- first takes every lock holder off (budget and storage alike) and gives every role pgmon
-- changed its saved connection limit and LOGIN/NOLOGIN back (pgmon.restore_role), then
-- drops schema pgmon. With its functions go the event triggers of 003 and 004 and the
-- pgmon_storage_notify triggers 004 put on tenant tables (they depend on
-- pgmon.storage_notify()); dropping those takes a brief lock on each such table, in this
-- one transaction, so run it at a quiet time on a database with many tenant tables.
-- Idempotent (does nothing once the schema is gone); run in each database 002 was installed
-- in, as a superuser:  psql -U postgres -v ON_ERROR_STOP=1 -f sql/uninstall.sql
-- The role pgmon (sql/001_roles.sql) is left alone: it is cluster-wide and may still own
-- objects elsewhere. Drop it by hand, after REASSIGN OWNED BY pgmon TO postgres and
-- DROP OWNED BY pgmon in every database, with DROP ROLE pgmon.
BEGIN;

DO $$
DECLARE
    r record;
BEGIN
    IF to_regclass('pgmon.role_original') IS NULL
       OR to_regprocedure('pgmon.restore_role(name)') IS NULL THEN
        RETURN;
    END IF;
    -- Every holder lets go at once: restore_role then puts LOGIN back too.
    IF to_regclass('pgmon.role_locks') IS NOT NULL THEN
        DELETE FROM pgmon.role_locks;
    END IF;
    FOR r IN SELECT * FROM pgmon.role_original ORDER BY rolname LOOP
        BEGIN
            RAISE NOTICE 'pgmon: %: %', r.rolname, pgmon.restore_role(r.rolname);
        EXCEPTION WHEN insufficient_privilege THEN
            -- restore_role refuses superusers (a role made superuser after pgmon changed
            -- it): say what its settings were rather than change a superuser blindly.
            RAISE WARNING 'pgmon: % not restored (%); its saved settings were: ALTER ROLE % % CONNECTION LIMIT %',
                r.rolname, SQLERRM, quote_ident(r.rolname),
                CASE WHEN r.rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END, r.rolconnlimit;
        END;
    END LOOP;
END
$$;

DROP SCHEMA IF EXISTS pgmon CASCADE;

COMMIT;
