-- pgmon's role in a cluster: the monitor connection of `pgmon-agent run`.
-- Idempotent; run once per cluster as a superuser:  psql -U postgres -f sql/001_roles.sql
-- pg_monitor (PostgreSQL docs, section 22.5 "Predefined Roles") lets it read every
-- session's row of pg_stat_activity, which attributes connections opened before the agent.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgmon') THEN
        CREATE ROLE pgmon LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
END
$$;
GRANT pg_monitor TO pgmon;
-- The agent's sessions identify themselves; pgmon never counts them as traffic.
ALTER ROLE pgmon SET application_name = 'pgmon';
