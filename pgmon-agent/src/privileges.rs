//! `security.read_only_enforce`: the monitor role, the role of `cluster.connection`, may
//! read everything (`pg_monitor`) and write only in schema `pgmon`. Enforcement never needs
//! more: it goes through pgmon's SECURITY DEFINER functions (sql/002_enforcement.sql,
//! 004_storage.sql, 005_sessions.sql), which run as their owner and are granted to role
//! `pgmon`. `pgmon-agent run` checks the role at start-up and refuses to start when it can
//! write elsewhere; `pgmon-agent doctor` reports the same check. `cost.connection` (the cost
//! worker's, which must `SET ROLE` to tenants to EXPLAIN as them) is not checked.

use std::fmt::Write as _;

use tokio_postgres::Client;

/// Every write privilege the current role holds, as rows `(role, privilege, object)`; one
/// row `(role, NULL, NULL)` when there is none. Run on the monitor connection, in its
/// database (schemas and tables are per database; databases are per cluster).
///
/// - `superuser` (`rolsuper`): alone, since it implies everything else;
/// - `CREATEROLE` (it can grant itself any role), `CREATEDB` (it can create databases);
/// - membership of `pg_write_all_data` (PostgreSQL docs, 22.5 "Predefined Roles": INSERT,
///   UPDATE and DELETE on every table; PostgreSQL 14+, hence `to_regrole`, NULL on 13);
/// - INSERT, UPDATE, DELETE, TRUNCATE on a table, partitioned table, view, materialized view
///   or foreign table outside schemas `pgmon`, `pg_catalog`, `information_schema`, `pg_toast`
///   and the temporary schemas: one row per privilege, with the count and the first three
///   names (`table public.t`, `3 tables (public.a, public.b, public.c)`); INSERT and UPDATE
///   granted on columns only count too;
/// - CREATE on a schema other than `pgmon` and the temporary ones (PostgreSQL 14 and older
///   grant it on `public` to PUBLIC);
/// - CREATE on a database (it can create schemas).
///
/// TEMP (temporary tables, gone with the session) is not counted. Privileges come from
/// `has_table_privilege`, `has_any_column_privilege`, `has_schema_privilege`,
/// `has_database_privilege` and `pg_has_role` (PostgreSQL docs, 9.27 "System Information
/// Functions"), so they include what the role inherits from the roles it is a member of.
/// One pass over `pg_class` (four privilege checks per relation; the column check only
/// for relations with column grants, found in one pass over `pg_attribute`): about 0.15 s
/// on a database of 10 000 tables.
pub(crate) const WRITE_PRIVILEGES_SQL: &str = r"
WITH me AS (
    SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb
      FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
), writable AS (
    SELECT p.ord, p.privilege, n.nspname, c.relname
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     CROSS JOIN (VALUES (4, 'INSERT'), (5, 'UPDATE'), (6, 'DELETE'), (7, 'TRUNCATE'))
           AS p(ord, privilege)
     WHERE NOT (SELECT rolsuper FROM me)
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND n.nspname NOT IN ('pgmon', 'pg_catalog', 'information_schema', 'pg_toast')
       AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
       AND (pg_catalog.has_table_privilege(c.oid, p.privilege)
            OR p.privilege IN ('INSERT', 'UPDATE')
               AND c.oid IN (SELECT a.attrelid FROM pg_catalog.pg_attribute a
                              WHERE a.attacl IS NOT NULL)
               AND pg_catalog.has_any_column_privilege(c.oid, p.privilege))
), found AS (
    SELECT 0 AS ord, 'superuser' AS privilege, NULL::text AS object FROM me WHERE rolsuper
    UNION ALL
    SELECT 1, 'CREATEROLE', NULL FROM me WHERE rolcreaterole AND NOT rolsuper
    UNION ALL
    SELECT 2, 'CREATEDB', NULL FROM me WHERE rolcreatedb AND NOT rolsuper
    UNION ALL
    SELECT 3, 'member of pg_write_all_data', NULL FROM me
     WHERE NOT rolsuper
       AND pg_catalog.pg_has_role(current_user, to_regrole('pg_write_all_data'), 'MEMBER')
    UNION ALL
    SELECT ord, privilege,
           CASE WHEN count(*) = 1 THEN 'table ' ELSE count(*) || ' tables (' END
           || array_to_string((array_agg(format('%I.%I', nspname, relname)
                                         ORDER BY nspname, relname))[1:3], ', ')
           || CASE WHEN count(*) > 3 THEN ', …)' WHEN count(*) > 1 THEN ')' ELSE '' END
      FROM writable GROUP BY ord, privilege
    UNION ALL
    SELECT 8, 'CREATE', format('schema %I', n.nspname)
      FROM pg_catalog.pg_namespace n, me
     WHERE NOT me.rolsuper
       AND n.nspname <> 'pgmon'
       AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
       AND pg_catalog.has_schema_privilege(n.oid, 'CREATE')
    UNION ALL
    SELECT 9, 'CREATE', format('database %I', d.datname)
      FROM pg_catalog.pg_database d, me
     WHERE NOT me.rolsuper AND pg_catalog.has_database_privilege(d.oid, 'CREATE')
)
SELECT me.rolname::text AS role, found.privilege, found.object
  FROM me LEFT JOIN found ON true
 ORDER BY found.ord, found.object";

/// What to do about a role that can write: connect as another, or turn the check off.
pub(crate) const REMEDY: &str = "connect as a role without write privileges, e.g. pgmon from \
                      sql/001_roles.sql, or set security.read_only_enforce: false";

/// One write privilege of the monitor role, a row of [`WRITE_PRIVILEGES_SQL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePrivilege {
    /// `superuser`, `CREATEROLE`, `CREATEDB`, `member of pg_write_all_data`, `INSERT`,
    /// `UPDATE`, `DELETE`, `TRUNCATE` or `CREATE`.
    pub privilege: String,
    /// What it is held on (`table public.t`, `3 tables (…)`, `schema public`, `database
    /// app`); none for a role attribute or membership.
    pub object: Option<String>,
}

/// The monitor role and every write privilege it holds outside schema `pgmon`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// `current_user` of the monitor connection.
    pub role: String,
    /// Empty when the role is read-only outside schema `pgmon`.
    pub writes: Vec<WritePrivilege>,
}

impl Privileges {
    /// True when the role can write nowhere but in schema `pgmon`.
    pub fn read_only(&self) -> bool {
        self.writes.is_empty()
    }

    /// The finding in words, after the role's name: `is a superuser`, or `can write outside
    /// schema pgmon: INSERT, UPDATE on table public.t; CREATE on schema public (…)`, the
    /// privileges on one object listed together.
    pub fn summary(&self) -> String {
        if self.writes.iter().any(|w| w.privilege == "superuser") {
            return "is a superuser".to_owned();
        }
        let mut grouped: Vec<(Option<&str>, Vec<&str>)> = Vec::new();
        for w in &self.writes {
            let object = w.object.as_deref();
            match grouped
                .iter_mut()
                .find(|(o, _)| object.is_some() && *o == object)
            {
                Some((_, privileges)) => privileges.push(&w.privilege),
                None => grouped.push((object, vec![&w.privilege])),
            }
        }
        let mut out = String::from("can write outside schema pgmon: ");
        for (i, (object, privileges)) in grouped.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let _ = match (object, privileges.as_slice()) {
                (None, [p]) => write!(out, "{p}{}", attribute_hint(p)),
                (None, ps) => write!(out, "{}", ps.join(", ")),
                (Some(o), ps) => write!(out, "{} on {o}", ps.join(", ")),
            };
            if *object == Some("schema public") {
                out.push_str(
                    " (PostgreSQL 14 and older grant it to PUBLIC: \
                     REVOKE CREATE ON SCHEMA public FROM PUBLIC)",
                );
            }
        }
        out
    }
}

/// Why a role attribute or membership is a write privilege.
fn attribute_hint(privilege: &str) -> &'static str {
    match privilege {
        "CREATEROLE" => " (it can grant itself any role)",
        "CREATEDB" => " (it can create databases)",
        "member of pg_write_all_data" => " (INSERT, UPDATE, DELETE on every table)",
        _ => "",
    }
}

/// Errors of the read-only check.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnlyError {
    /// The start-up check could not start its runtime.
    #[error("starting the runtime of the read-only check")]
    Runtime(#[source] std::io::Error),
    /// The check's statement failed on a session that connected.
    #[error("checking the monitor role's privileges (security.read_only_enforce)")]
    Check(#[source] tokio_postgres::Error),
    /// The monitor role can write outside schema `pgmon`.
    #[error(
        "refusing to start: the monitor role {:?} {} (security.read_only_enforce); {REMEDY}",
        .0.role,
        .0.summary()
    )]
    Refused(Privileges),
}

/// Runs [`WRITE_PRIVILEGES_SQL`] on `client`.
///
/// # Errors
/// The statement failed (connection lost).
pub async fn check(client: &Client) -> Result<Privileges, tokio_postgres::Error> {
    let rows = client.query(WRITE_PRIVILEGES_SQL, &[]).await?;
    let role = rows
        .first()
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default();
    let writes = rows
        .iter()
        .filter_map(|r| {
            Some(WritePrivilege {
                privilege: r.get::<_, Option<String>>(1)?,
                object: r.get(2),
            })
        })
        .collect();
    Ok(Privileges { role, writes })
}

/// `Ok` (logged at info) when the role is read-only, else [`ReadOnlyError::Refused`].
fn judge(privileges: Privileges) -> Result<(), ReadOnlyError> {
    if privileges.read_only() {
        tracing::info!(
            role = %privileges.role,
            "monitor role {}: read-only outside schema pgmon",
            privileges.role
        );
        Ok(())
    } else {
        Err(ReadOnlyError::Refused(privileges))
    }
}

/// Whether the check is done or waits for the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtStart {
    /// `security.read_only_enforce: false`, or the role passed.
    Done,
    /// The database did not answer: [`check_when_reachable`] must run.
    Pending,
}

/// `pgmon-agent run`'s check before it attaches anything, when `enforce`: one connection
/// attempt with `monitor`; a role that can write is refused. An unreachable database does
/// not stop the agent (it waits for it with backoff, as every task does): the check is then
/// [`AtStart::Pending`].
///
/// # Errors
/// [`ReadOnlyError::Refused`], or the check's statement failed on a session that connected.
pub fn check_at_start(
    enforce: bool,
    monitor: &crate::db::DbConfig,
) -> Result<AtStart, ReadOnlyError> {
    if !enforce {
        tracing::warn!(
            "security.read_only_enforce is off: the monitor role's write privileges are not checked"
        );
        return Ok(AtStart::Done);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReadOnlyError::Runtime)?;
    runtime.block_on(async {
        match crate::db::connect(monitor).await {
            Ok(client) => {
                let privileges = check(&client).await.map_err(ReadOnlyError::Check)?;
                judge(privileges).map(|()| AtStart::Done)
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::util::error_chain(&e),
                    "database unreachable at start-up: security.read_only_enforce checks the \
                     monitor role once it answers"
                );
                Ok(AtStart::Pending)
            }
        }
    })
}

/// The check deferred by [`AtStart::Pending`]: connects with backoff (each failure logged
/// as "read-only check: connection failed"), then judges the role once.
///
/// # Errors
/// [`ReadOnlyError::Refused`], or the check's statement failed.
pub async fn check_when_reachable(monitor: &crate::db::DbConfig) -> Result<(), ReadOnlyError> {
    let client = crate::db::connect_with_backoff(monitor, "read-only check", None).await;
    let privileges = check(&client).await.map_err(ReadOnlyError::Check)?;
    judge(privileges)
}

/// When the start-up check is [`AtStart::Pending`]: spawns [`check_when_reachable`] on the
/// current runtime; a refusal (or a failed check) arrives on the returned channel, which
/// closes without a message when the role passes (or nothing was pending).
pub fn check_later(
    at_start: AtStart,
    monitor: &crate::db::DbConfig,
) -> tokio::sync::mpsc::Receiver<ReadOnlyError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if at_start == AtStart::Pending {
        let monitor = monitor.clone();
        tokio::spawn(async move {
            if let Err(e) = check_when_reachable(&monitor).await {
                let _ = tx.send(e).await;
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::{Privileges, ReadOnlyError, WritePrivilege};

    fn w(privilege: &str, object: Option<&str>) -> WritePrivilege {
        WritePrivilege {
            privilege: privilege.to_owned(),
            object: object.map(str::to_owned),
        }
    }

    #[test]
    fn a_read_only_role_passes() {
        let p = Privileges {
            role: "pgmon".into(),
            writes: vec![],
        };
        assert!(p.read_only());
    }

    #[test]
    fn a_superuser_is_named_as_one() {
        let p = Privileges {
            role: "postgres".into(),
            writes: vec![w("superuser", None)],
        };
        assert_eq!(
            ReadOnlyError::Refused(p).to_string(),
            "refusing to start: the monitor role \"postgres\" is a superuser \
             (security.read_only_enforce); connect as a role without write privileges, e.g. \
             pgmon from sql/001_roles.sql, or set security.read_only_enforce: false"
        );
    }

    #[test]
    fn privileges_on_one_object_are_listed_together() {
        let tables = "3 tables (public.a, public.b, public.c)";
        let p = Privileges {
            role: "writer".into(),
            writes: vec![
                w("CREATEROLE", None),
                w("member of pg_write_all_data", None),
                w("INSERT", Some(tables)),
                w("UPDATE", Some(tables)),
                w("DELETE", Some("table public.t")),
                w("TRUNCATE", Some(tables)),
                w("CREATE", Some("schema public")),
                w("CREATE", Some("database app")),
            ],
        };
        assert_eq!(
            p.summary(),
            "can write outside schema pgmon: CREATEROLE (it can grant itself any role); \
             member of pg_write_all_data (INSERT, UPDATE, DELETE on every table); \
             INSERT, UPDATE, TRUNCATE on 3 tables (public.a, public.b, public.c); \
             DELETE on table public.t; \
             CREATE on schema public (PostgreSQL 14 and older grant it to PUBLIC: \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC); CREATE on database app"
        );
    }
}
