-- pgmon's storage quotas (issue 4): what each database needs so the agent hears about a
-- role's writes as they commit, and the tables the agent keeps its quota state in.
--
--   pgmon.storage_limits   the policy's limited roles, synced by the agent from the YAML
--                          policy (the policy is the only source of truth; this is a copy)
--   pgmon.storage_state    the agent's per-role state machine (ok, soft, hard, locked) and
--                          its timers, so a restart continues a grace period where it was
--                          (used in the agent's monitor database)
--   pgmon.storage_usage    each limited role's bytes per database at the last counts, and
--   pgmon.storage_counted  the databases those rows wholly cover, so a restart enforces at
--                          once (monitor database)
--   pgmon.storage_notify() statement-level trigger function: NOTIFY pgmon_storage with
--                          '<owner> US <relation oid> US <pg_total_relation_size>' (US =
--                          the unit separator, E'\x1f'): the size lets the agent recount a
--                          role at once when the write brings it near its hard limit
--   pgmon.storage_ddl_end() event trigger on ddl_command_end: attaches that trigger to each
--                          new table (and partition) of a limited role, and notifies for
--                          DDL that changes a role's bytes without DML (CREATE TABLE AS,
--                          SELECT INTO, CREATE INDEX, CREATE/REFRESH MATERIALIZED VIEW,
--                          ALTER TABLE rewrites, ...)
--   pgmon.storage_attach_batch()  walks the tables that existed before (or whose owner
--                          became limited later) in short batches; the agent calls it after
--                          each sync of the limits
--
-- Locking and unlocking a role go through sql/002_enforcement.sql's pgmon.lock_role /
-- pgmon.unlock_role with holder 'storage' (independent of the budget ladder's 'budget').
-- No pgmon trigger ever aborts a tenant's statement: failures become a WARNING, and the
-- agent's periodic recount covers whatever a notification missed (VACUUM FULL is not DDL,
-- growth inside an uncommitted transaction is not notified yet).
--
-- Idempotent; run after sql/002_enforcement.sql, as a superuser, in every database that
-- allows connections (templates excluded), and in databases created later:
--     psql -U postgres -d DB -v ON_ERROR_STOP=1 -f sql/004_storage.sql
-- The agent reports databases where it is missing; it does not install it (that needs a
-- superuser, and the agent's role is not one). Removed by sql/uninstall.sql.
BEGIN;

DO $$
BEGIN
    IF to_regclass('pgmon.schema_version') IS NULL
       OR to_regprocedure('pgmon.lock_role(name, text, int)') IS NULL THEN
        RAISE EXCEPTION 'schema pgmon (with lock holders) is not installed here: run sql/002_enforcement.sql first'
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'sql/004_storage.sql must be run by a superuser (event triggers), not %',
            current_user USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

INSERT INTO pgmon.schema_version (version) VALUES (4) ON CONFLICT (version) DO NOTHING;

-- The limited roles and their limits, bytes. The agent replaces the rows from the policy
-- at start (and on reload); the event trigger only asks whether a role is listed here.
CREATE TABLE IF NOT EXISTS pgmon.storage_limits (
    rolname    name PRIMARY KEY,
    soft_limit bigint NOT NULL CHECK (soft_limit >= 0),
    hard_limit bigint NOT NULL CHECK (hard_limit >= soft_limit),
    synced_at  timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON pgmon.storage_limits TO pgmon;

-- The agent's state machine per role, with its timers (issue 4: "state and timers survive
-- an agent restart"). A role in state 'locked' is one the agent locked (its lock is also
-- the 'storage' row of pgmon.role_locks, which the agent reads back at start).
CREATE TABLE IF NOT EXISTS pgmon.storage_state (
    role        name PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('ok', 'soft', 'hard', 'locked')),
    since       timestamptz NOT NULL,   -- entered this state
    under_since timestamptz,            -- locked: back under the hard limit since
    usage_bytes bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON pgmon.storage_state TO pgmon;

-- Each limited role's bytes per database at the agent's last counts (used in the monitor
-- database), so a restarted agent judges every role from its first second instead of
-- after its first full recount. Written after each full recount, only the rows that moved
-- by at least 1 % of the role's hard limit (and at least one 8 kB page): at most one row
-- per (role, database) per recount, and none for a role whose bytes stand still.
CREATE TABLE IF NOT EXISTS pgmon.storage_usage (
    role       name   NOT NULL,
    datname    name   NOT NULL,
    bytes      bigint NOT NULL CHECK (bytes >= 0),
    counted_at timestamptz NOT NULL,
    PRIMARY KEY (role, datname)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON pgmon.storage_usage TO pgmon;

-- The databases whose every role the agent has counted at least once (the rows above cover
-- them wholly: a role without a row owns nothing there).
CREATE TABLE IF NOT EXISTS pgmon.storage_counted (
    datname       name PRIMARY KEY,
    first_counted timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON pgmon.storage_counted TO pgmon;

-- The per-table trigger, statement level, after INSERT, UPDATE or TRUNCATE (DELETE frees
-- no bytes until a VACUUM, which the periodic recount sees). TG_ARGV[0] is the table
-- owner's name, set when the trigger is attached (and corrected when the owner changes),
-- so a write costs no catalog lookup.
-- What it costs is what tenants pay, so it notifies at most once per session, owner and
-- quarter second of the clock (not of the transaction's start time, which a DO block or
-- procedure committing in a loop keeps for all its transactions): a NOTIFY makes its commit take a
-- cluster-wide lock and append to the queue, and wakes the agent's listening backend, once
-- per transaction otherwise. A whole second let a tenant committing ~150 MB/s in small
-- transactions go 30-290 MB past its hard limit before the agent heard of it
-- (bench/STORAGE.md). The agent recounts a notified role once more a little over a
-- second later, which covers the writes this throttle kept quiet. Within a transaction
-- pg_notify sends one notification per distinct (channel, payload) anyway (PostgreSQL
-- docs, "NOTIFY": "If the same channel name is signaled multiple times with identical
-- payload strings within the same transaction, only one instance of the notification
-- event is delivered").
-- PL/pgSQL version: the session settings pgmon.storage_notified (the last owner notified
-- and its slot: one comparison for a session writing one owner's tables) and
-- pgmon.storage_notified_set (the slot, then each owner notified in it, one per line:
-- for a session writing several owners' tables). Settings made in a transaction that
-- rolls back are undone with its notifications.
-- It stays silent, leaving the role to the periodic recount,
--   - when max_prepared_transactions > 0: PREPARE TRANSACTION refuses a transaction that
--     has executed NOTIFY (docs, "PREPARE TRANSACTION"), and no tenant's two-phase commit
--     may fail because of pgmon;
--   - when the notification queue is half full (a stuck listener): once full, every
--     commit that notifies fails (docs, "NOTIFY"), and pgmon must never cause that.
-- A session that sets these settings itself can only delay its role's count to the next
-- recount. No SET search_path: it runs as the writing tenant with no privilege of its
-- own, every name is qualified, and a SET clause would cost a GUC save/restore on every
-- statement. The exception block is entered only when it notifies.
-- This is the fallback's source: pgmon.storage_notify() below is this function's copy, or
-- the C version where the server has it.
CREATE OR REPLACE FUNCTION pgmon.storage_notify_plpgsql() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    second text := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 4)::int8::text;
    seen text;
BEGIN
    IF pg_catalog.current_setting('pgmon.storage_notified', true) = TG_ARGV[0] || ':' || second THEN
        RETURN NULL;
    END IF;
    seen := pg_catalog.current_setting('pgmon.storage_notified_set', true);
    IF pg_catalog.starts_with(seen, second || E'\n') THEN
        IF pg_catalog.strpos(seen, E'\n' || TG_ARGV[0] || E'\n') > 0 THEN
            RETURN NULL;
        END IF;
    ELSE
        seen := second || E'\n';
    END IF;
    BEGIN
        IF pg_catalog.current_setting('max_prepared_transactions') = '0'
           AND pg_catalog.pg_notification_queue_usage() < 0.5 THEN
            PERFORM pg_catalog.pg_notify('pgmon_storage', TG_ARGV[0] || E'\x1f' || TG_RELID::int8::text
                || E'\x1f' || pg_catalog.pg_total_relation_size(TG_RELID)::text);
        END IF;
        PERFORM pg_catalog.set_config('pgmon.storage_notified', TG_ARGV[0] || ':' || second, false);
        PERFORM pg_catalog.set_config('pgmon.storage_notified_set', seen || TG_ARGV[0] || E'\n', false);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pgmon.storage_notify: % (SQLSTATE %); usage follows the periodic recount',
            SQLERRM, SQLSTATE;
    END;
    RETURN NULL;
END
$$;

-- pgmon.storage_notify(), the function the triggers call: the same in C
-- (sql/native/pgmon_storage.c) wherever the server can load $libdir/pgmon_storage (built
-- and installed per PostgreSQL major with `make -C sql/native PG_CONFIG=.../pg_config
-- install`; the xtask does it for PostgreSQL 15), else a copy of the PL/pgSQL version.
-- PL/pgSQL pays for its environment, its expression states and the argument array on
-- every call: on pgbench TPC-B-like (four calls per transaction, 2 cores, fsync off) it
-- costs 7 % of the throughput at the median, the C version nothing measurable
-- (bench/STORAGE.md). The
-- triggers call it by OID, so replacing it either way needs no re-attach.
-- `pgmon-agent doctor` says which one a database uses.
DO $do$
BEGIN
    BEGIN
        CREATE OR REPLACE FUNCTION pgmon.storage_notify() RETURNS trigger
        LANGUAGE c AS '$libdir/pgmon_storage', 'pgmon_storage_notify';
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pgmon: the C storage trigger is not available (%); the PL/pgSQL one is used',
            SQLERRM;
        EXECUTE format('CREATE OR REPLACE FUNCTION pgmon.storage_notify() RETURNS trigger '
                       'LANGUAGE plpgsql AS %L',
                       (SELECT prosrc FROM pg_catalog.pg_proc
                         WHERE oid = 'pgmon.storage_notify_plpgsql()'::regprocedure));
    END;
END
$do$;

-- Internal: whether pgmon may watch `owner`'s tables: it is listed in storage_limits and
-- is not a superuser, pgmon's own or a predefined role (whatever the table says).
CREATE OR REPLACE FUNCTION pgmon.storage_limited(owner name)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM pgmon.storage_limits l WHERE l.rolname = owner)
       AND NOT starts_with(owner, 'pg_') AND NOT starts_with(owner, 'pgmon')
       AND NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = owner), true)
$$;

-- Internal: puts the trigger on table `rel` for `owner`, or takes it off when owner is
-- NULL; does nothing when it is already so. 'attached', 'detached' or 'unchanged'.
CREATE OR REPLACE FUNCTION pgmon.storage_set_trigger(rel regclass, owner name)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    args bytea;
BEGIN
    -- An older trigger that also fired on DELETE (tgtype bit 8) counts as stale.
    SELECT CASE WHEN t.tgtype & 8 = 0 THEN t.tgargs END INTO args FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = rel AND t.tgname = 'pgmon_storage_notify';
    IF owner IS NULL THEN
        IF NOT FOUND THEN
            RETURN 'unchanged';
        END IF;
        EXECUTE format('DROP TRIGGER pgmon_storage_notify ON %s', rel);
        RETURN 'detached';
    END IF;
    -- pg_trigger.tgargs: each argument followed by a zero byte (docs, "pg_trigger").
    IF FOUND AND args = convert_to(owner::text, getdatabaseencoding()) || '\x00'::bytea THEN
        RETURN 'unchanged';
    END IF;
    IF FOUND THEN
        EXECUTE format('DROP TRIGGER pgmon_storage_notify ON %s', rel);
    END IF;
    EXECUTE format('CREATE TRIGGER pgmon_storage_notify '
                   'AFTER INSERT OR UPDATE OR TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pgmon.storage_notify(%L)', rel, owner);
    RETURN 'attached';
END
$$;

-- ddl_command_end (docs, section 9.30.1 "Capturing Changes at Command End"): for each
-- relation a command created or altered, the table it belongs to (an index's table) and
-- that table's owner. A limited owner's ordinary or partitioned table gets the trigger
-- (a partition is a table of its own: statement triggers are not inherited), with the
-- current owner as its argument (ALTER TABLE ... OWNER TO re-attaches or takes it off);
-- then the owner is notified, since most such DDL changes its bytes. Temporary tables get
-- no trigger (sessions create them by the thousand; the recount counts them).
-- SECURITY DEFINER: the tenant running the DDL may not read pgmon's tables nor reference
-- its functions; everything it touches comes from pg_event_trigger_ddl_commands() and
-- the catalog. Any failure is a WARNING: the tenant's DDL goes on.
CREATE OR REPLACE FUNCTION pgmon.storage_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT t.oid::regclass AS rel, t.relkind, t.relpersistence,
               pg_catalog.pg_get_userbyid(t.relowner) AS owner
          FROM pg_catalog.pg_event_trigger_ddl_commands() d
          JOIN pg_catalog.pg_class c ON c.oid = d.objid
          LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
          JOIN pg_catalog.pg_class t ON t.oid = coalesce(i.indrelid, c.oid)
         WHERE d.classid = 'pg_catalog.pg_class'::regclass
    LOOP
        IF r.relkind IN ('r', 'p') AND r.relpersistence <> 't' THEN
            PERFORM pgmon.storage_set_trigger(
                r.rel, CASE WHEN pgmon.storage_limited(r.owner) THEN r.owner END);
        END IF;
        IF pgmon.storage_limited(r.owner) THEN
            PERFORM pg_catalog.pg_notify('pgmon_storage', r.owner || E'\x1f' || r.rel::oid::int8::text
                || E'\x1f' || pg_catalog.pg_total_relation_size(r.rel)::text);
        END IF;
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pgmon.storage_ddl_end: % (SQLSTATE %); usage follows the periodic recount',
        SQLERRM, SQLSTATE;
END
$$;

-- Puts the trigger on the tables of limited roles that lack it (tables that existed before
-- installation, or whose owner became limited since), corrects its owner argument, and
-- takes it off tables of roles no longer limited: at most `n` tables with oid > `after`,
-- in oid order, in the caller's (short) transaction. A table another session has locked
-- is skipped after lock_timeout 50 ms (CREATE TRIGGER needs SHARE ROW EXCLUSIVE, which
-- waits for writers; queueing behind a long transaction would stall every writer after
-- us) and counted in `busy`: the next walk retries it. next_after is the oid to pass next,
-- NULL when the walk is done. The agent walks after each sync of storage_limits.
CREATE OR REPLACE FUNCTION pgmon.storage_attach_batch(after oid, n int,
    OUT next_after oid, OUT attached int, OUT detached int, OUT busy int)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    seen int := 0;
BEGIN
    attached := 0;
    detached := 0;
    busy := 0;
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'pgmon.storage_attach_batch: need n >= 1 (got %)', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('lock_timeout', '50ms', true);
    FOR r IN
        SELECT * FROM (
            SELECT c.oid, c.oid::regclass AS rel, o.rolname AS owner,
                   pgmon.storage_limited(o.rolname) AS limited, t.oid AS tgoid,
                   CASE WHEN t.tgtype & 8 = 0 THEN t.tgargs END AS tgargs
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
              LEFT JOIN pg_catalog.pg_trigger t
                     ON t.tgrelid = c.oid AND t.tgname = 'pgmon_storage_notify'
             WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
               AND c.oid > coalesce(after, 0)
               AND c.relnamespace NOT IN ('pg_catalog'::regnamespace,
                                          'information_schema'::regnamespace,
                                          'pgmon'::regnamespace)
        ) x
         WHERE (x.limited AND x.tgargs IS DISTINCT FROM
                    convert_to(x.owner::text, getdatabaseencoding()) || '\x00'::bytea)
            OR (NOT x.limited AND x.tgoid IS NOT NULL)
         ORDER BY x.oid
         LIMIT n
    LOOP
        seen := seen + 1;
        next_after := r.oid;
        BEGIN
            CASE pgmon.storage_set_trigger(r.rel, CASE WHEN r.limited THEN r.owner END)
                WHEN 'attached' THEN attached := attached + 1;
                WHEN 'detached' THEN detached := detached + 1;
                ELSE NULL;
            END CASE;
        EXCEPTION WHEN lock_not_available THEN
            busy := busy + 1;
        END;
    END LOOP;
    IF seen < n THEN
        next_after := NULL;
    END IF;
END
$$;

-- Large objects: a tenant's lo_from_bytea / lo_import / lo_write store their bytes as
-- 2 KB pages in pg_largeobject (LOBLKSIZE = BLCKSZ / 4; docs, section 73.4 "pg_largeobject"
-- and chapter 35 "Large Objects"), a catalog the superuser owns, so counting relations by
-- owner misses them. They belong to pg_largeobject_metadata.lomowner. Charged: pages × 2 KB
-- (the last page of each object may be partly empty, so this rounds up by less than 2 KB per
-- object), counted from the (loid, pageno) index where the visibility map allows, not by
-- reading the data. `roles` NULL: every non-superuser owner; else those named.
-- SECURITY DEFINER: pg_largeobject is readable by superusers only (docs, "pg_largeobject").
-- Writing a large object fires no trigger (catalogs have none), so the agent sees it at its
-- next full recount, or when the same role's table writes notify.
CREATE OR REPLACE FUNCTION pgmon.storage_large_objects(roles text[])
RETURNS TABLE (owner text, bytes bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.rolname::text,
           (count(*) * (current_setting('block_size')::int8 / 4))::int8
      FROM pg_catalog.pg_largeobject_metadata m
      JOIN pg_catalog.pg_roles r ON r.oid = m.lomowner
      JOIN pg_catalog.pg_largeobject l ON l.loid = m.oid
     WHERE NOT r.rolsuper AND (roles IS NULL OR r.rolname::text = ANY (roles))
     GROUP BY 1
$$;

REVOKE ALL ON FUNCTION pgmon.storage_large_objects(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgmon.storage_large_objects(text[]) TO pgmon;
REVOKE ALL ON FUNCTION pgmon.storage_notify() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.storage_limited(name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.storage_set_trigger(regclass, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.storage_ddl_end() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgmon.storage_attach_batch(oid, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgmon.storage_attach_batch(oid, int) TO pgmon;

DROP EVENT TRIGGER IF EXISTS pgmon_storage_ddl_end;
CREATE EVENT TRIGGER pgmon_storage_ddl_end ON ddl_command_end
    EXECUTE FUNCTION pgmon.storage_ddl_end();

-- Tables already there: attached by the walk above, which the agent runs once it has
-- synced the limits (the limits come from its policy, not from this file). Re-running
-- this file with limits present walks them here too.
DO $$
DECLARE
    cursor_oid oid;
    b record;
BEGIN
    LOOP
        SELECT * INTO b FROM pgmon.storage_attach_batch(cursor_oid, 1000);
        EXIT WHEN b.next_after IS NULL;
        cursor_oid := b.next_after;
    END LOOP;
END
$$;

COMMIT;
