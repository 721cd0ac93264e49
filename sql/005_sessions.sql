-- pgmon's session cleanup and emergency functions: the only way the (non-superuser) role
-- pgmon may cancel a statement or end a session. Each refuses what
-- pgmon.check_enforceable refuses (superusers, replication roles, pgmon's own roles,
-- pgmon.exempt_roles, ...), acts on client backends only, and checks that the session is
-- still the one the agent saw (a reused pid or a new statement is left alone).
-- Idempotent; run after sql/002_enforcement.sql, as a superuser, in the agent's database:
--     psql -U postgres -v ON_ERROR_STOP=1 -f sql/005_sessions.sql
-- Removed by sql/uninstall.sql (it drops schema pgmon).
BEGIN;

DO $$
BEGIN
    IF to_regprocedure('pgmon.check_enforceable(name)') IS NULL THEN
        RAISE EXCEPTION 'run sql/002_enforcement.sql first' USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'sql/005_sessions.sql must be run by a superuser, not %', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

INSERT INTO pgmon.schema_version (version) VALUES (5) ON CONFLICT (version) DO NOTHING;

-- Cancels the statement of client backend `target_pid` if it is still the one that started
-- at `seen_query_start` (pg_cancel_backend; PostgreSQL docs, section 9.28.2 "Server
-- Signaling Functions"). Returns 'cancelled', 'gone' or 'moved on'.
CREATE OR REPLACE FUNCTION pgmon.cancel_statement(target_pid int, seen_query_start timestamptz)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
BEGIN
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT usename, query_start, state INTO a FROM pg_catalog.pg_stat_activity
     WHERE pid = target_pid AND backend_type = 'client backend';
    IF NOT FOUND THEN
        RETURN 'gone';
    END IF;
    PERFORM pgmon.check_enforceable(a.usename);
    IF a.state <> 'active' OR a.query_start IS DISTINCT FROM seen_query_start THEN
        RETURN 'moved on';
    END IF;
    IF pg_catalog.pg_cancel_backend(target_pid) THEN
        RETURN 'cancelled';
    END IF;
    RETURN 'gone';
END
$$;

-- Terminates client backend `target_pid` if it is still the session that started at
-- `seen_backend_start` and has not changed state since `seen_state_change`
-- (pg_terminate_backend). Returns 'terminated', 'gone' or 'moved on'.
CREATE OR REPLACE FUNCTION pgmon.end_session(target_pid int, seen_backend_start timestamptz,
                                             seen_state_change timestamptz)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
BEGIN
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    SELECT usename, backend_start, state_change INTO a FROM pg_catalog.pg_stat_activity
     WHERE pid = target_pid AND backend_type = 'client backend';
    IF NOT FOUND THEN
        RETURN 'gone';
    END IF;
    PERFORM pgmon.check_enforceable(a.usename);
    IF a.backend_start IS DISTINCT FROM seen_backend_start
       OR a.state_change IS DISTINCT FROM seen_state_change THEN
        RETURN 'moved on';
    END IF;
    IF pg_catalog.pg_terminate_backend(target_pid) THEN
        RETURN 'terminated';
    END IF;
    RETURN 'gone';
END
$$;

-- Emergency: terminates every client backend pgmon.check_enforceable allows (never a
-- superuser, a replication role, pgmon's own roles or pgmon.exempt_roles; never a
-- walsender, autovacuum or other background process, which are not client backends; never
-- the caller's session), writes one audit row per backend, and returns them.
CREATE OR REPLACE FUNCTION pgmon.emergency_terminate(reason text DEFAULT 'emergency')
RETURNS TABLE (pid int, rolname name, result text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
BEGIN
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    FOR a IN
        SELECT s.pid, s.usename FROM pg_catalog.pg_stat_activity s
         WHERE s.backend_type = 'client backend' AND s.usename IS NOT NULL
           AND s.pid <> pg_catalog.pg_backend_pid()
         ORDER BY s.backend_start DESC
    LOOP
        pid := a.pid;
        rolname := a.usename;
        BEGIN
            PERFORM pgmon.check_enforceable(a.usename);
            result := CASE WHEN pg_catalog.pg_terminate_backend(a.pid)
                           THEN 'terminated' ELSE 'gone' END;
        EXCEPTION WHEN insufficient_privilege THEN
            result := 'spared: ' || SQLERRM;
        END;
        INSERT INTO pgmon.audit (role, source, step, utilisation, action, result)
        VALUES (a.usename, 'emergency', reason, NULL, 'terminate', result);
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION pgmon.cancel_statement(int, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.end_session(int, timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.emergency_terminate(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgmon.cancel_statement(int, timestamptz) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.end_session(int, timestamptz, timestamptz) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.emergency_terminate(text) TO pgmon;

COMMIT;
