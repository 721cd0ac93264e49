//! `GET /api/v1/audit[?role=NAME][&limit=N]`: the newest rows of `pgmon.audit` (every step
//! a budget or a storage quota took or gave back, every session ended, every unlock by
//! hand; sql/002_enforcement.sql), newest first, for the web UI's Budgets and Storage quota
//! pages.
//!
//! `data` is `{"installed": bool, "rows": [{"id", "at", "role", "source", "step",
//! "utilisation", "action", "result"}]}`; `at` is RFC 3339 UTC with milliseconds. Without
//! pgmon's SQL (`pgmon-agent install-sql`) there is no table: `installed` is false and
//! `rows` empty, never an error.

use serde_json::{Value, json};

use super::{ApiError, Recorder, session::Session};

/// Whether the table exists (it is created by sql/002_enforcement.sql).
const AUDIT_EXISTS: &str = "SELECT to_regclass('pgmon.audit') IS NOT NULL";

/// The newest rows, of one role when `$1` is not null.
const AUDIT_ROWS: &str = "\
SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS at,
       role::text AS role, source, step, utilisation, action, result
  FROM pgmon.audit
 WHERE $1::text IS NULL OR role = $1::text
 ORDER BY at DESC, id DESC
 LIMIT $2";

/// The answer's `data` (see the module doc).
pub async fn answer(
    s: &Session,
    rec: &mut Recorder,
    role: Option<&str>,
    limit: i64,
) -> Result<Value, ApiError> {
    let exists = rec
        .raw(&s.client, &s.database, ("audit_exists", AUDIT_EXISTS), &[])
        .await?;
    if !exists.first().is_some_and(|r| r.get::<_, bool>(0)) {
        return Ok(json!({"installed": false, "rows": []}));
    }
    let rows = rec
        .rows(
            &s.client,
            &s.database,
            ("audit", AUDIT_ROWS),
            &[&role, &limit],
            &[],
        )
        .await?;
    Ok(json!({"installed": true, "rows": rows}))
}
