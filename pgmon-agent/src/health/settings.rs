//! Configuration drift, read by the 60-second loop: which server settings changed since the
//! agent's previous look, and which wait for a restart (`pg_settings.pending_restart`,
//! PostgreSQL docs, section 54.24 "pg_settings": a value changed in the configuration
//! file that only a restart applies).
//!
//! The snapshot is the server's level of each setting: rows whose `source` is the
//! default, the environment, the configuration file, the command line, `ALTER SYSTEM`
//! (`configuration file` too) or `override`. Values a session, a role or a database set
//! (`session`, `user`, `database`, `client`, …) are the monitor session's own and are
//! left out. The snapshot lives in the agent and survives a lost session (a restart of
//! the server is when most such changes land); a change made while the agent was down is
//! not seen as a change.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::board::{Family, Kind};

/// The server-level settings: name, value with its unit, where it comes from, and whether
/// a restart is needed to apply the configuration file's value.
pub(crate) const SETTINGS: &str = "SELECT name, setting || coalesce(' ' || unit, ''), source, pending_restart \
     FROM pg_settings \
     WHERE source IN ('default', 'environment variable', 'configuration file', 'command line', 'override') \
     ORDER BY name";

/// One change the agent saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The setting's name (`pg_settings.name`).
    pub name: String,
    /// The value before (with its unit).
    pub old: String,
    /// The value after.
    pub new: String,
    /// When the agent saw it, milliseconds since the UNIX epoch.
    pub at_ms: u64,
}

/// The previous snapshot and the changes seen since the agent started.
#[derive(Debug, Default)]
pub struct Drift {
    previous: Option<HashMap<String, String>>,
    /// The last time each setting changed, milliseconds since the UNIX epoch.
    changed_at: HashMap<String, u64>,
    changes: u64,
}

impl Drift {
    /// Compares `rows` (name, value) with the previous snapshot, at `now_ms`; returns the
    /// changes. The first snapshot has none. A setting that appears or disappears (its
    /// source moved to or from a session's) is not a change.
    pub fn observe(&mut self, rows: Vec<(String, String)>, now_ms: u64) -> Vec<Change> {
        let current: HashMap<String, String> = rows.into_iter().collect();
        let mut out = Vec::new();
        if let Some(prev) = &self.previous {
            for (name, new) in &current {
                if let Some(old) = prev.get(name)
                    && old != new
                {
                    out.push(Change {
                        name: name.clone(),
                        old: old.clone(),
                        new: new.clone(),
                        at_ms: now_ms,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        for c in &out {
            self.changed_at.insert(c.name.clone(), now_ms);
        }
        self.changes += out.len() as u64;
        self.previous = Some(current);
        out
    }

    /// One run: reads [`SETTINGS`], logs each change, and returns
    /// `pgmon_settings_changes_total`, `pgmon_setting_changed_timestamp_seconds{name}` and
    /// `pgmon_setting_pending_restart{name}`.
    pub async fn run(&mut self, client: &Client) -> Result<Vec<Family>, tokio_postgres::Error> {
        let rows = client.query(SETTINGS, &[]).await?;
        let mut pending = Family::new(
            "pgmon_setting_pending_restart",
            "1 for each setting whose configuration-file value waits for a server restart (pg_settings.pending_restart).",
            Kind::Gauge,
        );
        let mut values = Vec::with_capacity(rows.len());
        for r in &rows {
            let name: String = r.get(0);
            if r.get::<_, bool>(3) {
                pending.push(vec![("name", name.clone())], 1.0);
            }
            values.push((name, r.get::<_, String>(1)));
        }
        for c in self.observe(values, crate::util::now_ms()) {
            tracing::info!(setting = %c.name, old = %c.old, new = %c.new, "server setting changed");
        }
        let mut changed = Family::new(
            "pgmon_setting_changed_timestamp_seconds",
            "When the agent last saw each server setting change value (since the agent started), seconds since the UNIX epoch.",
            Kind::Gauge,
        );
        let mut names: Vec<_> = self.changed_at.iter().collect();
        names.sort();
        for (name, at) in names {
            changed.push(vec![("name", name.clone())], *at as f64 / 1000.0);
        }
        Ok(vec![
            Family::single(
                "pgmon_settings_changes",
                "Server setting changes the agent saw since it started (pg_settings compared every 60-second loop).",
                Kind::Counter,
                self.changes as f64,
            ),
            changed,
            pending,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    }

    #[test]
    fn a_change_is_a_different_value_of_a_setting_seen_both_times() {
        let mut d = Drift::default();
        assert!(
            d.observe(rows(&[("work_mem", "4096 kB"), ("jit", "on")]), 1)
                .is_empty()
        );
        let c = d.observe(
            rows(&[("work_mem", "65536 kB"), ("jit", "on"), ("new_one", "1")]),
            2_000,
        );
        assert_eq!(
            c,
            vec![Change {
                name: "work_mem".into(),
                old: "4096 kB".into(),
                new: "65536 kB".into(),
                at_ms: 2_000
            }]
        );
        // Gone from the server level (a session set it): not a change.
        assert!(d.observe(rows(&[("jit", "on")]), 3_000).is_empty());
        assert_eq!(d.changes, 1);
        assert_eq!(d.changed_at.get("work_mem"), Some(&2_000));
    }
}
