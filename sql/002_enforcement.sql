-- pgmon's enforcement schema: the agent's state tables and the only functions through
-- which the (non-superuser) role pgmon may limit, lock and restore a tenant role.
-- Idempotent; run after sql/001_roles.sql, once per database the agent connects to, as a
-- superuser:  psql -U postgres -v ON_ERROR_STOP=1 -f sql/002_enforcement.sql
-- Everything happens in one transaction: a failed run leaves nothing half-installed, and no
-- function is ever visible while PUBLIC can still execute it.
-- Removed by sql/uninstall.sql.
BEGIN;

-- Preconditions. Any failure aborts the transaction, so the rest of the file does nothing.
DO $$
DECLARE
    schema_owner name;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'pgmon') THEN
        RAISE EXCEPTION 'role pgmon does not exist: run sql/001_roles.sql first'
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'sql/002_enforcement.sql must be run by a superuser, not %', current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The functions below run as their owner; a schema owned by anyone but a superuser
    -- could have its tables or functions swapped underneath them.
    SELECT r.rolname INTO schema_owner
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
     WHERE n.nspname = 'pgmon' AND NOT r.rolsuper;
    IF FOUND THEN
        RAISE EXCEPTION 'schema pgmon exists and is owned by % (not a superuser); drop it first',
            schema_owner USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS pgmon;
GRANT USAGE ON SCHEMA pgmon TO pgmon;

-- Which of the sql/ files are installed here (001 makes only a role, so it leaves no row).
CREATE TABLE IF NOT EXISTS pgmon.schema_version (
    version      int PRIMARY KEY,
    installed_at timestamptz DEFAULT now()
);
INSERT INTO pgmon.schema_version (version) VALUES (2) ON CONFLICT (version) DO NOTHING;
GRANT SELECT ON pgmon.schema_version TO pgmon;

-- Roles the policy leaves alone; the functions below refuse them too.
CREATE TABLE IF NOT EXISTS pgmon.exempt_roles (
    rolname name PRIMARY KEY
);
GRANT SELECT, INSERT, DELETE ON pgmon.exempt_roles TO pgmon;

-- A role's settings before pgmon first changed them; restore_role puts them back.
-- Written only by the functions below: pgmon may read it, never forge it.
CREATE TABLE IF NOT EXISTS pgmon.role_original (
    rolname      name PRIMARY KEY,
    rolconnlimit int NOT NULL,
    rolcanlogin  boolean NOT NULL,
    saved_at     timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON pgmon.role_original TO pgmon;

-- Who holds a role NOLOGIN: 'budget' (the query-cost ladder's lock step) and 'storage' (the
-- storage quota, sql/004_storage.sql) lock and unlock independently. A role stays NOLOGIN
-- while any holder remains; LOGIN comes back (if the role had it in pgmon.role_original)
-- only when the last holder lets go. Written only by the functions below.
CREATE TABLE IF NOT EXISTS pgmon.role_locks (
    rolname   name NOT NULL,
    holder    text NOT NULL CHECK (holder IN ('budget', 'storage')),
    locked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rolname, holder)
);
GRANT SELECT ON pgmon.role_locks TO pgmon;
-- Upgrading an install made before lock holders existed: the budget ladder was the only
-- locker then, so a saved role that could log in, cannot now and has no holder was locked
-- by it.
INSERT INTO pgmon.role_locks (rolname, holder, locked_at)
SELECT o.rolname, 'budget', o.saved_at
  FROM pgmon.role_original o JOIN pg_catalog.pg_roles r ON r.rolname = o.rolname
 WHERE o.rolcanlogin AND NOT r.rolcanlogin
   AND NOT EXISTS (SELECT FROM pgmon.role_locks l WHERE l.rolname = o.rolname)
ON CONFLICT DO NOTHING;

-- What the agent did and why; append-only for pgmon.
CREATE TABLE IF NOT EXISTS pgmon.audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    role        name NOT NULL,
    source      text NOT NULL,              -- 'budget' or 'storage'
    step        text NOT NULL,
    utilisation double precision,
    action      text NOT NULL,
    result      text NOT NULL
);
GRANT SELECT, INSERT ON pgmon.audit TO pgmon;
GRANT USAGE ON SEQUENCE pgmon.audit_id_seq TO pgmon;
CREATE INDEX IF NOT EXISTS audit_at ON pgmon.audit (at);

-- The agent's persisted budget ledgers and the step it applied to each role.
CREATE TABLE IF NOT EXISTS pgmon.budget_state (
    role       name PRIMARY KEY,
    tier       text NOT NULL,
    step       int NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- One row per budgeted role: its window's spend as [[first unix second, spend], ...], at
-- most 60 buckets whatever the window (the agent's Ledger::coarse), rewritten every
-- budgets.persist_interval_seconds while the role is charged. Its size follows the number
-- of roles, not time. (Before, pgmon.budget_ledger held a row per role and second and was
-- never pruned: it is dropped.)
DROP TABLE IF EXISTS pgmon.budget_ledger;
CREATE TABLE IF NOT EXISTS pgmon.budget_ledgers (
    role       name PRIMARY KEY,
    tier       text NOT NULL,
    buckets    jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Half of each page left free: a rewritten row (about 1 kB) fits beside the old one, so
-- the update is HOT and writes no index entry (PostgreSQL docs, section 65.7 "Heap-Only
-- Tuples").
ALTER TABLE pgmon.budget_ledgers SET (fillfactor = 50);
GRANT SELECT, INSERT, UPDATE, DELETE ON pgmon.budget_state, pgmon.budget_ledgers TO pgmon;

-- The cost worker's estimates, one row per fingerprint, written once when made (batched),
-- deleted when they pass cost.cache_ttl_seconds or an operator forgets them. `signature`
-- hashes the catalog rows of the relations the statement uses, taken before the plan: a
-- restarted agent keeps only the estimates whose relations have not changed since.
CREATE TABLE IF NOT EXISTS pgmon.cost_estimates (
    fingerprint  bigint PRIMARY KEY,
    datname      name NOT NULL,
    cost         double precision NOT NULL,
    relations    jsonb NOT NULL,
    signature    bigint NOT NULL,
    estimated_at timestamptz NOT NULL DEFAULT now()
);
-- The alert engine's state: one row per pending or firing alert (its `for` timer), and one
-- per surge baseline (at most a day of one-a-minute rates). Rewritten when they change.
CREATE TABLE IF NOT EXISTS pgmon.alert_state (
    dedupe_key text PRIMARY KEY,
    alert      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgmon.alert_baselines (
    rule       text NOT NULL,
    entity     text NOT NULL,
    baseline   jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, entity)
);
GRANT SELECT, INSERT, UPDATE, DELETE
    ON pgmon.cost_estimates, pgmon.alert_state, pgmon.alert_baselines TO pgmon;

-- Functions. Following PostgreSQL docs, "CREATE FUNCTION", section "Writing SECURITY
-- DEFINER Functions Safely": each one pins search_path to pg_catalog with pg_temp last
-- (so every object is schema-qualified or from pg_catalog), and EXECUTE is revoked from
-- PUBLIC in the same transaction that creates it, then granted to pgmon alone.
-- They run as the installing superuser, which is why every one of them checks its target.

-- Raises insufficient_privilege (42501) unless pgmon may limit or lock `target`.
CREATE OR REPLACE FUNCTION pgmon.check_enforceable(target name)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    why text;
BEGIN
    IF target IS NULL THEN
        RAISE EXCEPTION 'pgmon refuses to enforce on a NULL role'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT rolsuper, rolreplication, rolbypassrls INTO r
      FROM pg_catalog.pg_roles WHERE rolname = target;
    IF NOT FOUND THEN
        why := 'it does not exist';
    ELSIF r.rolsuper THEN
        why := 'it is a superuser';
    ELSIF r.rolreplication THEN
        why := 'it has REPLICATION';
    ELSIF r.rolbypassrls THEN
        why := 'it has BYPASSRLS';
    ELSIF starts_with(target, 'pg_') THEN
        -- Reserved for predefined roles (PostgreSQL docs, "Predefined Roles").
        why := 'names starting with pg_ are reserved for predefined roles';
    ELSIF starts_with(target, 'pgmon') THEN
        why := 'it is pgmon''s own role or named like it';
    ELSIF pg_catalog.pg_has_role(target, 'pgmon', 'MEMBER')
       OR pg_catalog.pg_has_role('pgmon', target, 'MEMBER') THEN
        why := 'it is a member of pgmon or pgmon is a member of it';
    ELSIF EXISTS (SELECT FROM pgmon.exempt_roles e WHERE e.rolname = target) THEN
        why := 'it is listed in pgmon.exempt_roles';
    ELSIF target = current_user THEN
        -- Inside a SECURITY DEFINER function current_user is the function's owner.
        why := 'it owns pgmon''s functions';
    ELSIF target = session_user THEN
        why := 'it is the session user';
    END IF;
    IF why IS NOT NULL THEN
        RAISE EXCEPTION 'pgmon refuses to enforce on role "%": %', target, why
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- Internal: signals up to `batch` of target's client backends, newest first, sparing its
-- `keep` oldest and the pids in `skip` (already tried). `tried` is every pid it called
-- pg_terminate_backend on, `signalled` those for which the call returned true.
-- Not SECURITY DEFINER and not granted: only the functions below call it, as its owner.
CREATE OR REPLACE FUNCTION pgmon.signal_backends(
    target name, keep int, batch int, skip int[],
    OUT tried int[], OUT signalled int[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    victim int;
BEGIN
    tried := '{}';
    signalled := '{}';
    -- pg_stat_activity is read once per transaction and then cached; look again.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    FOR victim IN
        SELECT v.pid FROM (
            SELECT a.pid, a.backend_start
              FROM pg_catalog.pg_stat_activity a
             WHERE a.usename = target
               AND a.backend_type = 'client backend'
               AND a.pid <> pg_catalog.pg_backend_pid()
             ORDER BY a.backend_start, a.pid
            OFFSET keep
        ) v
         WHERE v.pid <> ALL (skip)
         ORDER BY v.backend_start DESC, v.pid DESC
         LIMIT batch
    LOOP
        tried := tried || victim;
        -- Server Signaling Functions (PostgreSQL docs): true once SIGTERM is sent; false
        -- with a warning when the process has already gone.
        IF pg_catalog.pg_terminate_backend(victim) THEN
            signalled := signalled || victim;
        END IF;
    END LOOP;
END
$$;

-- Internal: waits (at most 2 s) until the given backends have left pg_stat_activity, so
-- that what the caller sees next no longer counts them; warns about any still there.
CREATE OR REPLACE FUNCTION pgmon.await_exit(pids int[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deadline timestamptz := pg_catalog.clock_timestamp() + interval '2 seconds';
    left_over int;
BEGIN
    IF cardinality(pids) = 0 THEN
        RETURN;
    END IF;
    LOOP
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        SELECT count(*) INTO left_over
          FROM pg_catalog.pg_stat_activity WHERE pid = ANY (pids);
        EXIT WHEN left_over = 0;
        IF pg_catalog.clock_timestamp() > deadline THEN
            RAISE WARNING 'pgmon: % of % terminated backends still running after 2 s',
                left_over, cardinality(pids);
            EXIT;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.01);
    END LOOP;
END
$$;

-- Terminates target's client backends beyond its `keep` oldest, newest first, at most
-- `batch` of them; returns how many pg_terminate_backend calls returned true.
CREATE OR REPLACE FUNCTION pgmon.terminate_backends(target name, keep int DEFAULT 0,
                                                    batch int DEFAULT 100)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
BEGIN
    PERFORM pgmon.check_enforceable(target);
    IF keep IS NULL OR keep < 0 OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'pgmon.terminate_backends: need keep >= 0 and batch >= 1 (got %, %)',
            keep, batch USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO s FROM pgmon.signal_backends(target, keep, batch, '{}');
    PERFORM pgmon.await_exit(s.signalled);
    RETURN cardinality(s.signalled);
END
$$;

-- Internal: terminates, batch after batch of `batch`, all of target's client backends beyond
-- its `keep` oldest; returns how many were signalled. Each pid is tried once.
-- (Before lock holders it took no batch: that signature is dropped.)
DROP FUNCTION IF EXISTS pgmon.terminate_all_beyond(name, int);
CREATE OR REPLACE FUNCTION pgmon.terminate_all_beyond(target name, keep int, batch int DEFAULT 100)
RETURNS int
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
    tried int[] := '{}';
    done int[] := '{}';
BEGIN
    LOOP
        SELECT * INTO s FROM pgmon.signal_backends(target, keep, batch, tried);
        EXIT WHEN cardinality(s.tried) = 0;
        tried := tried || s.tried;
        done := done || s.signalled;
    END LOOP;
    PERFORM pgmon.await_exit(done);
    RETURN cardinality(done);
END
$$;

-- Lowers (or raises) target's connection limit and terminates its newest client backends,
-- `batch` at a time, so that at most `lim` remain (none when lim is -1, i.e. no limit). The
-- role's settings before pgmon's first change are kept in pgmon.role_original. The new
-- limit only applies to later logins (PostgreSQL docs, "CREATE ROLE", CONNECTION LIMIT),
-- and only once this transaction commits, hence the terminations. With batch = 0 it only
-- sets the limit, and the caller terminates in later transactions once this one has
-- committed (pgmon.terminate_backends), so an ended session cannot take the freed slot
-- back under the old limit. Returns the number terminated.
-- (Before it took a batch it took only (target, lim): that signature is dropped.)
DROP FUNCTION IF EXISTS pgmon.set_connection_limit(name, int);
CREATE OR REPLACE FUNCTION pgmon.set_connection_limit(target name, lim int, batch int DEFAULT 100)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgmon.check_enforceable(target);
    IF lim IS NULL OR lim < -1 THEN
        RAISE EXCEPTION 'pgmon.set_connection_limit: need lim >= -1 (got %)', lim
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch IS NULL OR batch < 0 THEN
        RAISE EXCEPTION 'pgmon.set_connection_limit: need batch >= 0 (got %)', batch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgmon.role_original (rolname, rolconnlimit, rolcanlogin)
    SELECT rolname, rolconnlimit, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = target
    ON CONFLICT (rolname) DO NOTHING;
    EXECUTE format('ALTER ROLE %I CONNECTION LIMIT %s', target, lim);
    IF lim = -1 OR batch = 0 THEN
        RETURN 0;
    END IF;
    RETURN pgmon.terminate_all_beyond(target, lim, batch);
END
$$;

-- Makes target NOLOGIN on behalf of `lock_holder` ('budget' or 'storage', recorded in
-- pgmon.role_locks) and terminates all its client backends, `batch` at a time, newest first
-- (NOLOGIN alone does not end existing sessions). Saves the original settings like
-- set_connection_limit. Returns the number terminated. NOLOGIN is only seen by logins after
-- this transaction commits, so a session terminated before the commit can log in again:
-- with batch = 0 it only locks, and the caller terminates in a second transaction once
-- this one has committed (pgmon.terminate_backends), which leaves a reconnecting client
-- nothing to come back to.
-- (Before lock holders it took only the role: that signature is dropped.)
DROP FUNCTION IF EXISTS pgmon.lock_role(name);
CREATE OR REPLACE FUNCTION pgmon.lock_role(target name, lock_holder text DEFAULT 'budget',
                                           batch int DEFAULT 100)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgmon.check_enforceable(target);
    IF lock_holder IS NULL OR lock_holder NOT IN ('budget', 'storage') THEN
        RAISE EXCEPTION 'pgmon.lock_role: holder must be budget or storage (got %)', lock_holder
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch IS NULL OR batch < 0 THEN
        RAISE EXCEPTION 'pgmon.lock_role: need batch >= 0 (got %)', batch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgmon.role_original (rolname, rolconnlimit, rolcanlogin)
    SELECT rolname, rolconnlimit, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = target
    ON CONFLICT (rolname) DO NOTHING;
    INSERT INTO pgmon.role_locks (rolname, holder) VALUES (target, lock_holder)
    ON CONFLICT (rolname, holder) DO NOTHING;
    EXECUTE format('ALTER ROLE %I NOLOGIN', target);
    IF batch = 0 THEN
        RETURN 0;
    END IF;
    RETURN pgmon.terminate_all_beyond(target, 0, batch);
END
$$;

-- Internal: the holders still locking target, comma-separated, NULL when none.
CREATE OR REPLACE FUNCTION pgmon.lock_holders(target name)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(l.holder, ', ' ORDER BY l.holder) FROM pgmon.role_locks l
     WHERE l.rolname = target
$$;

-- Takes `lock_holder`'s lock off target. Returns 'not locked by <holder>' when that holder
-- holds none (pgmon never unlocks what it did not lock), 'still locked by <others>' when
-- another holder keeps it NOLOGIN, 'unlocked' when the LOGIN/NOLOGIN saved in
-- pgmon.role_original is back (the connection limit is the budget ladder's business and is
-- left as it is; the saved settings are forgotten once the limit is the original one too),
-- and 'role no longer exists' (its records forgotten) for a dropped role. Like restore_role
-- it skips check_enforceable (a role exempted after being locked can still be unlocked) and
-- refuses superusers.
CREATE OR REPLACE FUNCTION pgmon.unlock_role(target name, lock_holder text)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved record;
    is_super boolean;
    others text;
BEGIN
    SELECT rolsuper INTO is_super FROM pg_catalog.pg_roles WHERE rolname = target;
    IF is_super THEN
        RAISE EXCEPTION 'pgmon refuses to unlock role "%": it is a superuser', target
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM pgmon.role_locks l WHERE l.rolname = target AND l.holder = lock_holder;
    IF NOT FOUND THEN
        RETURN format('not locked by %s', lock_holder);
    END IF;
    IF is_super IS NULL THEN
        DELETE FROM pgmon.role_locks l WHERE l.rolname = target;
        DELETE FROM pgmon.role_original o WHERE o.rolname = target;
        RETURN 'role no longer exists';
    END IF;
    others := pgmon.lock_holders(target);
    IF others IS NOT NULL THEN
        RETURN format('still locked by %s', others);
    END IF;
    SELECT * INTO saved FROM pgmon.role_original o WHERE o.rolname = target;
    IF NOT FOUND THEN
        -- lock_role saves before it locks; only a hand-edited table gets here.
        RAISE WARNING 'pgmon: no saved settings for role "%"; LOGIN left as it is', target;
        RETURN 'unlocked (no saved settings; LOGIN left as it is)';
    END IF;
    EXECUTE format('ALTER ROLE %I %s', target,
                   CASE WHEN saved.rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END);
    IF (SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = target) = saved.rolconnlimit THEN
        DELETE FROM pgmon.role_original o WHERE o.rolname = target;
    END IF;
    RETURN 'unlocked';
END
$$;

-- The budget ladder's undo: takes the 'budget' lock off target and puts back its saved
-- connection limit. LOGIN/NOLOGIN comes back too, and the saved settings are forgotten,
-- unless another holder (the storage quota) still locks the role: then it stays NOLOGIN
-- and its saved LOGIN waits for that holder's unlock. Returns 'restored', 'restored the
-- connection limit; still locked by <holders>', or 'nothing to restore' when pgmon never
-- changed the role (or it has since been dropped). Restoring only returns settings pgmon
-- itself took away, so it skips check_enforceable (a role exempted after being locked can
-- still be restored); it refuses superusers all the same.
CREATE OR REPLACE FUNCTION pgmon.restore_role(target name)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved record;
    is_super boolean;
    others text;
BEGIN
    SELECT rolsuper INTO is_super FROM pg_catalog.pg_roles WHERE rolname = target;
    IF is_super THEN
        RAISE EXCEPTION 'pgmon refuses to restore role "%": it is a superuser', target
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM pgmon.role_locks l WHERE l.rolname = target AND l.holder = 'budget';
    SELECT * INTO saved FROM pgmon.role_original o WHERE o.rolname = target;
    IF NOT FOUND THEN
        RETURN 'nothing to restore';
    END IF;
    IF is_super IS NULL THEN
        DELETE FROM pgmon.role_original o WHERE o.rolname = target;
        DELETE FROM pgmon.role_locks l WHERE l.rolname = target;
        RAISE NOTICE 'pgmon: role "%" no longer exists; forgot its saved settings', target;
        RETURN 'nothing to restore';
    END IF;
    others := pgmon.lock_holders(target);
    IF others IS NOT NULL THEN
        EXECUTE format('ALTER ROLE %I CONNECTION LIMIT %s', target, saved.rolconnlimit);
        RETURN format('restored the connection limit; still locked by %s', others);
    END IF;
    DELETE FROM pgmon.role_original o WHERE o.rolname = target;
    EXECUTE format('ALTER ROLE %I %s CONNECTION LIMIT %s', target,
                   CASE WHEN saved.rolcanlogin THEN 'LOGIN' ELSE 'NOLOGIN' END,
                   saved.rolconnlimit);
    RETURN 'restored';
END
$$;

REVOKE ALL ON FUNCTION pgmon.check_enforceable(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.signal_backends(name, int, int, int[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.await_exit(int[]) FROM PUBLIC;
-- Deletes the audit rows older than `days` (>= 1; the agent passes audit.retention_days,
-- every hour) and returns how many. The agent's role may insert audit rows but not delete
-- them: only this function does, and only old ones.
CREATE OR REPLACE FUNCTION pgmon.prune_audit(days int)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'pgmon.prune_audit: need days >= 1 (got %)', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM pgmon.audit WHERE at < now() - make_interval(days => days);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION pgmon.prune_audit(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgmon.prune_audit(int) TO pgmon;
REVOKE ALL ON FUNCTION pgmon.terminate_backends(name, int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.terminate_all_beyond(name, int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.set_connection_limit(name, int, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.lock_role(name, text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.lock_holders(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.unlock_role(name, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.restore_role(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgmon.check_enforceable(name) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.terminate_backends(name, int, int) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.set_connection_limit(name, int, int) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.lock_role(name, text, int) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.unlock_role(name, text) TO pgmon;
GRANT EXECUTE ON FUNCTION pgmon.restore_role(name) TO pgmon;

COMMIT;
