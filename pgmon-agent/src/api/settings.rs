//! `/api/v1/settings`: configuration drift. The settings that wait for a restart, every
//! server-level setting not at its built-in default, and the changes the health loop saw
//! since the agent started (`crate::health::settings`; its old and new values are in the
//! agent's log).

use serde_json::{Value, json};

use super::{ApiError, Recorder, session::Session};
use crate::health::{Board, settings};

/// Settings changed in the configuration file that only a restart applies (PostgreSQL
/// docs, section 54.24 "pg_settings"); `sourcefile` and `sourceline` are shown to
/// `pg_read_all_settings`, part of `pg_monitor`.
const PENDING: &str = "SELECT name, setting, unit, source, sourcefile, sourceline \
     FROM pg_settings WHERE pending_restart ORDER BY name";

/// Server-level settings that differ from the built-in default, with where they come from.
const NOT_DEFAULT: &str = "SELECT name, setting, unit, boot_val, source, sourcefile, sourceline, pending_restart \
     FROM pg_settings \
     WHERE source IN ('environment variable', 'configuration file', 'command line', 'override') \
       AND setting IS DISTINCT FROM boot_val ORDER BY name";

/// The answer, in the monitor's database.
pub async fn answer(s: &Session, rec: &mut Recorder, board: &Board) -> Result<Value, ApiError> {
    let pending = rec
        .rows(
            &s.client,
            &s.database,
            ("pending_restart", PENDING),
            &[],
            &[],
        )
        .await?;
    let not_default = rec
        .rows(
            &s.client,
            &s.database,
            ("not_default", NOT_DEFAULT),
            &[],
            &[],
        )
        .await?;
    rec.note(
        "server_settings",
        "health loop medium",
        Some(&s.database),
        settings::SETTINGS,
    );
    let mut changed: Vec<(String, f64)> = board
        .samples("pgmon_setting_changed_timestamp_seconds")
        .unwrap_or_default()
        .into_iter()
        .map(|(labels, at)| {
            let name = labels
                .into_iter()
                .find(|(k, _)| *k == "name")
                .map(|(_, v)| v)
                .unwrap_or_default();
            (name, at)
        })
        .collect();
    changed.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(json!({
        "pending_restart": pending,
        "not_default": not_default,
        "changes_seen": board.value("pgmon_settings_changes", &[]),
        "recent_changes": changed.iter().map(|(name, at)| json!({
            "name": name,
            "changed_at_unix_seconds": at,
        })).collect::<Vec<_>>(),
    }))
}
