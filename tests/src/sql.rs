//! SQL through Debian's `psql`: one-shot statements, roles and databases,
//! `pg_stat_statements` readings.

use std::io::Write as _;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::PSQL;
use crate::cluster::{Cluster, Transport};
use crate::proc::{clean_pg_env, run_checked};

/// SQL longer than this goes through a temp file (`psql -f`) instead of `-c`.
const INLINE_SQL_MAX: usize = 4000;

/// Quotes an SQL identifier: `"…"` with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'…'` with `'` doubled (standard_conforming_strings on).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Cluster {
    /// A `psql -X -q -At -v ON_ERROR_STOP=1 -d <conninfo>` command (run as root, libpq's
    /// environment removed), without the SQL.
    pub fn psql_cmd(&self, user: &str, db: &str, transport: Transport) -> Command {
        let mut cmd = Command::new(PSQL);
        clean_pg_env(&mut cmd)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.conninfo(user, db, transport));
        cmd
    }

    /// Starts `psql -c sql` as `user` in `db` over the Unix socket in the background
    /// (output discarded), for statements that block or sleep; wait on the child.
    pub fn psql_background(&self, user: &str, db: &str, sql: &str) -> std::process::Child {
        self.psql_cmd(user, db, Transport::Unix)
            .arg("-c")
            .arg(sql)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql")
    }

    /// Runs `sql` as `user` in `db` and returns psql's stdout (unaligned, tuples only: one row
    /// per line, columns separated by `|`). Short SQL goes as `-c` (one Query message: several
    /// statements run in one implicit transaction); SQL over 4000 bytes goes through a temp
    /// file with `-f` (statement by statement). Fails with psql's stderr on any error.
    pub fn psql(&self, user: &str, db: &str, transport: Transport, sql: &str) -> Result<String> {
        let mut cmd = self.psql_cmd(user, db, transport);
        // The temp file (if any) must live until psql is done.
        let _file = if sql.len() > INLINE_SQL_MAX {
            let mut f = tempfile::Builder::new()
                .prefix("pgmon-sql-")
                .suffix(".sql")
                .tempfile()?;
            f.write_all(sql.as_bytes())?;
            f.flush()?;
            cmd.arg("-f").arg(f.path());
            Some(f)
        } else {
            cmd.arg("-c").arg(sql);
            None
        };
        run_checked(&mut cmd).with_context(|| {
            format!(
                "psql as {user} in {db} ({transport:?}) failed: {}",
                abbreviate(sql)
            )
        })
    }

    /// [`Cluster::psql`] as superuser `postgres` in database `postgres` over the unix socket.
    pub fn psql_admin(&self, sql: &str) -> Result<String> {
        self.psql("postgres", "postgres", Transport::Unix, sql)
    }

    /// Runs a query returning a single value and returns it trimmed.
    pub fn query_value(&self, user: &str, db: &str, sql: &str) -> Result<String> {
        Ok(self
            .psql(user, db, Transport::Unix, sql)?
            .trim()
            .to_string())
    }

    /// `CREATE ROLE <name> LOGIN`.
    pub fn create_role(&self, name: &str) -> Result<()> {
        self.psql_admin(&format!("CREATE ROLE {} LOGIN", quote_ident(name)))?;
        Ok(())
    }

    /// `CREATE ROLE <name> LOGIN` plus `CREATE DATABASE <name> OWNER <name>`.
    pub fn create_role_with_db(&self, name: &str) -> Result<()> {
        self.create_role(name)?;
        self.create_database(name, name)
    }

    /// `CREATE DATABASE <name> OWNER <owner>`.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        self.psql_admin(&format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(owner)
        ))?;
        Ok(())
    }

    /// `pg_stat_statements_reset()` (all users, databases and queries).
    pub fn pg_stat_statements_reset(&self) -> Result<()> {
        self.psql_admin("SELECT pg_stat_statements_reset()")?;
        Ok(())
    }

    /// `(query, calls)` of every `pg_stat_statements` entry of role `user` whose normalized
    /// text matches the SQL `LIKE` pattern `query_like` (e.g. `%pgbench_accounts%`), all
    /// databases, most calls first.
    pub fn pss_calls(&self, user: &str, query_like: &str) -> Result<Vec<(String, u64)>> {
        let sql = format!(
            "SELECT coalesce(json_agg(json_build_array(s.query, s.calls) \
               ORDER BY s.calls DESC, s.query), '[]') \
             FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
             WHERE r.rolname = {} AND s.query LIKE {}",
            quote_literal(user),
            quote_literal(query_like)
        );
        let out = self.psql_admin(&sql)?;
        parse_pss_json(&out).with_context(|| format!("unexpected pg_stat_statements output: {out}"))
    }

    /// Runs the SQL file `file` (relative to the workspace root, e.g.
    /// `sql/002_enforcement.sql`) as superuser `postgres` in `db`, stopping at the first
    /// error (`ON_ERROR_STOP`); fails with psql's stderr.
    pub fn run_sql_file(&self, db: &str, file: &str) -> Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(file);
        run_checked(
            self.psql_cmd("postgres", db, Transport::Unix)
                .arg("-f")
                .arg(&path),
        )
        .with_context(|| format!("{file} in database {db}"))?;
        Ok(())
    }

    /// The server's total cost of the generic plan of `sql` (whose constants are `$1` …
    /// `$params`), planned as `user` in `db`: `EXPLAIN (GENERIC_PLAN, FORMAT JSON)` on
    /// PostgreSQL 16+, and on 15 `PREPARE` + `EXPLAIN EXECUTE` with every parameter NULL
    /// under `plan_cache_mode = force_generic_plan` (what the agent's cost worker does).
    pub fn generic_plan_cost(&self, user: &str, db: &str, sql: &str, params: usize) -> Result<f64> {
        let script = if self.version().major() >= 16 {
            format!("EXPLAIN (GENERIC_PLAN, FORMAT JSON) {sql}")
        } else {
            let args = if params == 0 {
                String::new()
            } else {
                format!("({})", vec!["NULL"; params].join(", "))
            };
            format!(
                "SET plan_cache_mode = force_generic_plan; PREPARE p AS {sql}; \
                 EXPLAIN (FORMAT JSON) EXECUTE p{args}"
            )
        };
        let out = self.psql(user, db, Transport::Unix, &script)?;
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .with_context(|| format!("EXPLAIN did not answer JSON: {out}"))?;
        v[0]["Plan"]["Total Cost"]
            .as_f64()
            .with_context(|| format!("no Total Cost in {out}"))
    }

    /// Sum of `calls` over [`Cluster::pss_calls`].
    pub fn pss_total_calls(&self, user: &str, query_like: &str) -> Result<u64> {
        Ok(self
            .pss_calls(user, query_like)?
            .iter()
            .map(|(_, c)| c)
            .sum())
    }
}

fn parse_pss_json(out: &str) -> Result<Vec<(String, u64)>> {
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    let rows = v.as_array().context("not a JSON array")?;
    rows.iter()
        .map(|r| {
            let q = r
                .get(0)
                .and_then(|q| q.as_str())
                .context("query is not a string")?;
            let c = r
                .get(1)
                .and_then(|c| c.as_u64())
                .context("calls is not a number")?;
            Ok((q.to_string(), c))
        })
        .collect()
}

/// First line of `sql`, at most 120 characters, for messages.
fn abbreviate(sql: &str) -> String {
    let first = sql.trim().lines().next().unwrap_or("");
    let mut s: String = first.chars().take(120).collect();
    if s.len() < sql.trim().len() {
        s.push('…');
    }
    s
}

/// pgmon's SQL for the database the agent connects to when storage quotas are on: roles,
/// enforcement and the storage tables and trigger (`sql/001`, `002`, `004`), in that order.
pub const STORAGE_MONITOR_SQL: [&str; 3] = [
    "sql/001_roles.sql",
    "sql/002_enforcement.sql",
    "sql/004_storage.sql",
];

/// pgmon's SQL for a tenant database whose tables the storage trigger watches (`sql/002`,
/// `004`).
pub const STORAGE_TENANT_SQL: [&str; 2] = ["sql/002_enforcement.sql", "sql/004_storage.sql"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("shop"), "\"shop\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn pss_json() {
        let rows = parse_pss_json(
            "[[\"SELECT abalance FROM pgbench_accounts WHERE aid = $1\", 400], [\"x|y\\n\", 2]]\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1, 400);
        assert_eq!(rows[1].0, "x|y\n");
        assert!(parse_pss_json("[]").unwrap().is_empty());
        assert!(parse_pss_json("oops").is_err());
    }

    #[test]
    fn abbreviation() {
        assert_eq!(abbreviate("select 1"), "select 1");
        assert_eq!(abbreviate("select 1;\nselect 2"), "select 1;…");
    }
}
