-- pgmon's DDL notifications. After DDL that changes a relation (CREATE/ALTER/DROP TABLE,
-- CREATE/DROP INDEX, CREATE MATERIALIZED VIEW, ...) an event trigger sends
--     NOTIFY pgmon_ddl, '<relation name without schema>'
-- and '*' when the relation can no longer be named (a dropped index). The agent's cost
-- worker listens in each database it plans in and forgets the estimates made against the
-- old shape: a new index changes every plan on its table.
-- pg_notify delivers one notification per distinct payload per transaction, so a migration
-- that alters one table many times sends one. A failure inside the trigger is reported as
-- a WARNING and never aborts the tenant's DDL.
-- Idempotent; run after sql/002_enforcement.sql, once per database, as a superuser:
--     psql -U postgres -v ON_ERROR_STOP=1 -f sql/003_ddl_notify.sql
-- Removed by sql/uninstall.sql (the functions live in schema pgmon; dropping it drops the
-- event triggers with them).
BEGIN;

DO $$
BEGIN
    IF to_regclass('pgmon.schema_version') IS NULL THEN
        RAISE EXCEPTION 'schema pgmon is not installed here: run sql/002_enforcement.sql first'
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'sql/003_ddl_notify.sql must be run by a superuser (event triggers), not %',
            current_user USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

INSERT INTO pgmon.schema_version (version) VALUES (3) ON CONFLICT (version) DO NOTHING;

-- ddl_command_end: every relation a command created or altered (an index counts as its
-- table). PostgreSQL docs, section 9.30.1 "Capturing Changes at Command End".
CREATE OR REPLACE FUNCTION pgmon.notify_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    rel name;
BEGIN
    FOR cmd IN SELECT classid, objid FROM pg_event_trigger_ddl_commands() LOOP
        IF cmd.classid = 'pg_catalog.pg_class'::regclass THEN
            SELECT coalesce(t.relname, c.relname) INTO rel
              FROM pg_class c
              LEFT JOIN pg_index i ON i.indexrelid = c.oid
              LEFT JOIN pg_class t ON t.oid = i.indrelid
             WHERE c.oid = cmd.objid;
            PERFORM pg_notify('pgmon_ddl', coalesce(rel, '*'));
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgmon.notify_ddl_end: % (SQLSTATE %); cost estimates expire on their TTL',
        SQLERRM, SQLSTATE;
END
$$;

-- sql_drop: dropped relations by name; a dropped index's table is gone from the catalog
-- by now, so it forgets the whole database's estimates. Docs, section 9.30.2.
CREATE OR REPLACE FUNCTION pgmon.notify_ddl_drop() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    obj record;
BEGIN
    FOR obj IN SELECT object_type, object_name, original FROM pg_event_trigger_dropped_objects() LOOP
        IF obj.object_type IN ('table', 'view', 'materialized view', 'foreign table') THEN
            PERFORM pg_notify('pgmon_ddl', obj.object_name);
        ELSIF obj.object_type = 'index' AND obj.original THEN
            PERFORM pg_notify('pgmon_ddl', '*');
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgmon.notify_ddl_drop: % (SQLSTATE %); cost estimates expire on their TTL',
        SQLERRM, SQLSTATE;
END
$$;

DROP EVENT TRIGGER IF EXISTS pgmon_ddl_end;
CREATE EVENT TRIGGER pgmon_ddl_end ON ddl_command_end
    EXECUTE FUNCTION pgmon.notify_ddl_end();
DROP EVENT TRIGGER IF EXISTS pgmon_ddl_drop;
CREATE EVENT TRIGGER pgmon_ddl_drop ON sql_drop
    EXECUTE FUNCTION pgmon.notify_ddl_drop();

COMMIT;
