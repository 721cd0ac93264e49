//! The storage families (names from issue 4): `pgmon_role_storage_bytes{role}`,
//! `pgmon_role_storage_limit_bytes{role,limit}`, `pgmon_role_storage_state{role,state}`,
//! `pgmon_storage_recount_seconds`, and the agent's own counters
//! `pgmon_storage_actions_total{action,result}` and
//! `pgmon_storage_notifications_total{sink,result}`. The same families, and only those,
//! can also be written as a node_exporter textfile.

use std::{
    path::{Path, PathBuf},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{policy::Limits, state::Phase};
use crate::notify::SinkLabels;

/// `{role}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

/// `{role, limit}`: `limit` is `soft` or `hard`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub role: String,
    pub limit: &'static str,
}

/// `{role, state}`: one series per state, 1 for the role's current one, 0 for the others
/// (an OpenMetrics state set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub role: String,
    pub state: &'static str,
}

/// `{action, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `lock`, `unlock`.
    pub action: &'static str,
    /// `applied`, `dry_run`, `refused` (the SQL function refused the role), `failed`.
    pub result: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The storage families, registered in the agent's registry and in a private one for the
/// textfile.
#[derive(Clone)]
pub struct StorageMetrics {
    bytes: Family<RoleLabels, Gauge>,
    limit: Family<LimitLabels, Gauge>,
    state: Family<StateLabels, Gauge>,
    recount: F64Gauge,
    actions: Family<ActionLabels, Counter>,
    notifications: Family<SinkLabels, Counter>,
}

impl StorageMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            bytes: Family::default(),
            limit: Family::default(),
            state: Family::default(),
            recount: F64Gauge::default(),
            actions: Family::default(),
            notifications: Family::default(),
        };
        m.register_into(registry);
        m
    }

    fn register_into(&self, registry: &mut Registry) {
        registry.register(
            "pgmon_role_storage_bytes",
            "Bytes of every relation the role owns, all databases (tables, TOAST, indexes, materialized views)",
            self.bytes.clone(),
        );
        registry.register(
            "pgmon_role_storage_limit_bytes",
            "The role's storage limits from the policy, bytes",
            self.limit.clone(),
        );
        registry.register(
            "pgmon_role_storage_state",
            "1 for the role's storage quota state (ok, soft, hard, locked), 0 for the others",
            self.state.clone(),
        );
        registry.register(
            "pgmon_storage_recount_seconds",
            "Duration of the last full recount of every database",
            self.recount.clone(),
        );
        registry.register(
            "pgmon_storage_actions",
            "Storage quota locks and unlocks, by result",
            self.actions.clone(),
        );
        registry.register(
            "pgmon_storage_notifications",
            "Storage quota notifications, by sink and result",
            self.notifications.clone(),
        );
    }

    /// One role's usage.
    pub fn usage(&self, role: &str, bytes: u64) {
        self.bytes
            .get_or_create(&RoleLabels { role: role.into() })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// One role's limits.
    pub fn limits(&self, role: &str, limits: &Limits) {
        for (limit, v) in [("soft", limits.soft), ("hard", limits.hard)] {
            self.limit
                .get_or_create(&LimitLabels {
                    role: role.into(),
                    limit,
                })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// One role's state.
    pub fn phase(&self, role: &str, phase: Phase) {
        for p in Phase::ALL {
            self.state
                .get_or_create(&StateLabels {
                    role: role.into(),
                    state: p.as_str(),
                })
                .set(i64::from(p == phase));
        }
    }

    /// Removes every series of a role no longer limited.
    pub fn forget(&self, role: &str) {
        self.bytes.remove(&RoleLabels { role: role.into() });
        for limit in ["soft", "hard"] {
            self.limit.remove(&LimitLabels {
                role: role.into(),
                limit,
            });
        }
        for p in Phase::ALL {
            self.state.remove(&StateLabels {
                role: role.into(),
                state: p.as_str(),
            });
        }
    }

    /// The last full recount took `seconds`.
    pub fn recount_seconds(&self, seconds: f64) {
        self.recount.set(seconds);
    }

    /// Counts one lock or unlock.
    pub fn action(&self, action: &'static str, result: &'static str) {
        self.actions
            .get_or_create(&ActionLabels { action, result })
            .inc();
    }

    /// Counts one notification outcome.
    pub fn notification(&self, sink: &str, result: &'static str) {
        self.notifications
            .get_or_create(&SinkLabels {
                sink: sink.to_owned(),
                result,
            })
            .inc();
    }

    /// The storage families alone, in the text exposition format.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register_into(&mut registry);
        let mut out = String::new();
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Writes [`StorageMetrics::encode`] to `path` atomically: into `.<name>.tmp` in the same
/// directory, then rename(2), so node_exporter never reads half a file (its textfile
/// collector documentation asks for exactly this).
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_the_issues() {
        let mut r = Registry::default();
        let m = StorageMetrics::register(&mut r);
        let l = Limits {
            soft: 5,
            hard: 10,
            hard_grace_ms: 0,
            unlock_grace_ms: 0,
            manual_unlock: false,
        };
        m.usage("alice", 7);
        m.limits("alice", &l);
        m.phase("alice", Phase::Soft);
        m.recount_seconds(0.25);
        let text = m.encode();
        for needle in [
            "pgmon_role_storage_bytes{role=\"alice\"} 7",
            "pgmon_role_storage_limit_bytes{role=\"alice\",limit=\"hard\"} 10",
            "pgmon_role_storage_state{role=\"alice\",state=\"soft\"} 1",
            "pgmon_role_storage_state{role=\"alice\",state=\"locked\"} 0",
            "pgmon_storage_recount_seconds 0.25",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        m.forget("alice");
        assert!(!m.encode().contains("alice"));
        let dir = std::env::temp_dir().join(format!("pgmon-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgmon.prom");
        write_textfile(&path, &text).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert!(!dir.join(".pgmon.prom.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
