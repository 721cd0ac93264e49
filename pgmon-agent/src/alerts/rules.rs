//! The alert catalog of issue 5: each rule's name (the same `alert:` names as
//! `alerts/pgmon-rules.yml`), its expression written out with the policy's numbers, its
//! `for`, the severities it can have, and what it reads. How each one is evaluated is in
//! [`super::eval`]. Dedupe key of every alert: the name and the entity's labels
//! (`datname`, `relation`, `index`, `application_name`, `role`, `loop`), or the name alone
//! for a cluster-wide rule.

use std::collections::HashMap;

use super::{
    config::{
        AlertsConfig, BudgetExceeded, CheckpointThrash, DeadTuples, Level, SettingsChanged,
        StaleStatistics, Starvation, Surge, TableBloat, Threshold, UnusedIndex,
    },
    series::{Baseline, Window},
    state::{RuleMeta, Severity},
};

/// Both severities.
pub const BOTH: &[Severity] = &[Severity::Warning, Severity::Critical];
/// Warning only.
pub const WARNING: &[Severity] = &[Severity::Warning];
/// Critical only.
pub const CRITICAL: &[Severity] = &[Severity::Critical];

/// One rule of the catalog, with the state its evaluation keeps between rounds.
pub struct Rule {
    /// Name, expression and `for`.
    pub meta: RuleMeta,
    /// The severities its alerts can have (the series of `pgmon_alerts_firing`).
    pub severities: &'static [Severity],
    pub(super) kind: Kind,
}

/// A rate rule's state per entity.
pub(super) type SurgeState = HashMap<String, (Window<1>, Baseline)>;

impl Rule {
    /// A surge rule's baselines by entity, sorted by entity; empty for any other rule.
    pub fn baselines(&self) -> Vec<super::BaselineView> {
        let Kind::Surge { config, state, .. } = &self.kind else {
            return Vec::new();
        };
        let mut v: Vec<_> = state
            .iter()
            .map(|(entity, (_, b))| {
                let (samples, mean) = b.observed();
                super::BaselineView {
                    entity: entity.clone(),
                    samples,
                    min_samples: config.min_samples,
                    armed: samples >= config.min_samples,
                    mean_bytes_per_second: mean,
                }
            })
            .collect();
        v.sort_by(|a, b| a.entity.cmp(&b.entity));
        v
    }
}

/// What a rule reads and compares.
pub(super) enum Kind {
    /// A metric against warn/crit (replication lag also against bytes).
    Level {
        level: Level,
        bytes: Option<Threshold>,
    },
    DeadTuples(DeadTuples),
    Stale(StaleStatistics),
    /// The dead tuples of each database over the window.
    Starvation(Starvation, HashMap<String, Window<1>>),
    /// Timed and requested checkpoints over the window.
    Checkpoints(CheckpointThrash, Window<2>),
    Surge {
        metric: &'static str,
        entity: Option<&'static str>,
        what: &'static str,
        config: Surge,
        interval_ms: u64,
        state: SurgeState,
    },
    UnusedIndex(UnusedIndex),
    TableBloat(TableBloat),
    /// Settings waiting for a restart.
    PendingRestart,
    SettingsChanged(SettingsChanged),
    /// Roles in this storage quota state.
    Storage(&'static str),
    /// Roles at or over this budget utilisation.
    Budget(BudgetExceeded),
    /// Lock entries in `pg_locks`.
    Locks(super::locks::TotalLocks),
    LoopFailing,
}

fn meta(name: &'static str, expression: String, for_seconds: u64) -> RuleMeta {
    RuleMeta {
        name,
        expression,
        for_ms: for_seconds.saturating_mul(1000),
    }
}

/// Every rule of the catalog with the policy's numbers, in catalog order.
pub fn catalog(c: &AlertsConfig) -> Vec<Rule> {
    let mut rules = Vec::new();
    for level in c.levels() {
        let t = level.threshold;
        let per = match level.entity {
            [] => String::new(),
            [e] => format!(", per {e}"),
            many => format!(", per ({})", many.join(", ")),
        };
        let op = level.operator();
        let mut expression = format!(
            "{} {op} {} (critical: {op} {}){per}",
            level.metric, t.warn, t.crit
        );
        let bytes = (level.field == "replication_lag_seconds")
            .then_some(c.replication_lag_bytes)
            .flatten();
        if let Some(b) = bytes {
            expression.push_str(&format!(
                "; or pgmon_replication_lag_bytes >= {} (critical: >= {})",
                b.warn, b.crit
            ));
        }
        rules.push(Rule {
            meta: meta(
                level.alertname,
                expression,
                t.for_seconds.unwrap_or(level.default_for),
            ),
            severities: BOTH,
            kind: Kind::Level { level, bytes },
        });
    }
    let l = c.total_locks;
    rules.push(Rule {
        meta: meta(super::locks::ALERTNAME, l.expression(), l.for_seconds),
        severities: BOTH,
        kind: Kind::Locks(l),
    });
    let d = c.dead_tuples;
    rules.push(Rule {
        meta: meta(
            "PostgresDeadTupleBacklog",
            format!(
                "pgmon_relation_dead_ratio >= {} and pgmon_relation_dead_tuples >= {}, per (datname, relation)",
                d.ratio, d.min_tuples
            ),
            d.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::DeadTuples(d),
    });
    let s = c.stale_statistics;
    rules.push(Rule {
        meta: meta(
            "PostgresStaleStatistics",
            format!(
                "pgmon_stale_statistics_tables >= {}, per datname",
                s.min_tables
            ),
            s.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::Stale(s),
    });
    let a = c.autovacuum_starvation;
    rules.push(Rule {
        meta: meta(
            "PostgresAutovacuumStarvation",
            format!(
                "pgmon_vacuum_age_max_seconds > {} and sum by (datname) (pgmon_relation_dead_tuples) rose over the last {} s, per datname",
                a.vacuum_age_seconds, a.window_seconds
            ),
            a.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::Starvation(a, HashMap::new()),
    });
    let k = c.checkpoint_thrash;
    rules.push(Rule {
        meta: meta(
            "PostgresCheckpointThrash",
            format!(
                "over the last {w} s: increase(pgmon_checkpoints_total) >= {} and \
                 (increase(pgmon_checkpoints_total{{kind=\"requested\"}}) / increase(pgmon_checkpoints_total) > {} \
                 or {w} s / increase(pgmon_checkpoints_total) < {} s)",
                k.min_checkpoints,
                k.requested_ratio,
                k.min_interval_seconds,
                w = k.window_seconds
            ),
            k.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::Checkpoints(k, Window::new(k.window_seconds * 1000)),
    });
    let interval_ms = c.evaluation_interval_seconds * 1000;
    for (name, metric, entity, what, config) in [
        (
            "PostgresWalSurge",
            "pgmon_wal_position_bytes",
            None,
            "WAL",
            c.wal_surge.erased(),
        ),
        (
            "PostgresTempSurge",
            "pg_stat_database_temp_bytes",
            Some("datname"),
            "temp files",
            c.temp_surge.erased(),
        ),
    ] {
        let per = entity.map(|e| format!(", per {e}")).unwrap_or_default();
        rules.push(Rule {
            meta: meta(
                name,
                format!(
                    "rate({metric}_total[{}s]) > mean + {}σ of its own past rates over {} s (at least {} of them) \
                     and >= {} bytes/s{per}",
                    config.window_seconds,
                    config.sigma,
                    config.baseline_seconds,
                    config.min_samples,
                    config.floor_bytes_per_second
                ),
                config.for_seconds,
            ),
            severities: WARNING,
            kind: Kind::Surge {
                metric,
                entity,
                what,
                config,
                interval_ms,
                state: HashMap::new(),
            },
        });
    }
    let u = c.unused_index;
    rules.push(Rule {
        meta: meta(
            "PostgresUnusedLargeIndex",
            format!(
                "pgmon_unused_index_bytes >= {}, per (datname, index)",
                u.min_bytes
            ),
            u.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::UnusedIndex(u),
    });
    let b = c.table_bloat;
    rules.push(Rule {
        meta: meta(
            "PostgresTableBloat",
            format!(
                "pgmon_relation_bloat_ratio >= {} and pgmon_relation_bloat_bytes >= {}, per (datname, relation)",
                b.ratio, b.min_bytes
            ),
            b.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::TableBloat(b),
    });
    rules.push(Rule {
        meta: meta(
            "PostgresPendingRestart",
            "pgmon_setting_pending_restart >= 1, per name".into(),
            c.pending_restart.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::PendingRestart,
    });
    let s = c.settings_changed;
    rules.push(Rule {
        meta: meta(
            "PostgresSettingChanged",
            format!(
                "time() - pgmon_setting_changed_timestamp_seconds <= {}, per name",
                s.window_seconds
            ),
            s.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::SettingsChanged(s),
    });
    for (name, state, severities) in [
        ("PgmonStorageSoftLimit", "soft", WARNING),
        ("PgmonStorageHardLimit", "hard", CRITICAL),
        ("PgmonStorageLocked", "locked", CRITICAL),
    ] {
        rules.push(Rule {
            meta: meta(
                name,
                format!("pgmon_role_storage_state{{state=\"{state}\"}} == 1, per role"),
                c.storage_quota.for_seconds,
            ),
            severities,
            kind: Kind::Storage(state),
        });
    }
    let b = c.budget_exceeded;
    rules.push(Rule {
        meta: meta(
            "PgmonBudgetExceeded",
            format!(
                "pgmon_role_budget_utilisation >= {}, per role",
                b.utilisation
            ),
            b.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::Budget(b),
    });
    rules.push(Rule {
        meta: meta(
            "PgmonHealthLoopFailing",
            "pgmon_last_scrape_success == 0, per loop".into(),
            c.health_loop_failing.for_seconds,
        ),
        severities: WARNING,
        kind: Kind::LoopFailing,
    });
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_matches_the_prometheus_rules() {
        let rules = catalog(&AlertsConfig::default());
        let shipped = include_str!("../../../alerts/pgmon-rules.yml");
        for r in &rules {
            assert!(
                shipped.contains(&format!("alert: {}\n", r.meta.name)),
                "{} is not in alerts/pgmon-rules.yml",
                r.meta.name
            );
        }
        let names: std::collections::HashSet<_> = rules.iter().map(|r| r.meta.name).collect();
        assert_eq!(names.len(), rules.len(), "one rule per name");
        let by = |n: &str| rules.iter().find(|r| r.meta.name == n).unwrap();
        assert_eq!(by("PostgresConnectionSaturation").meta.for_ms, 120_000);
        assert_eq!(
            by("PostgresLongTransaction").meta.expression,
            "pgmon_oldest_xact_age_seconds >= 300 (critical: >= 1800)"
        );
        assert_eq!(by("PostgresUnusedLargeIndex").meta.for_ms, 604_800_000);
    }

    /// One rule of `alerts/pgmon-rules.yml`.
    #[derive(serde::Deserialize)]
    struct PromRule {
        alert: Option<String>,
        expr: String,
        #[serde(rename = "for")]
        for_: Option<String>,
        #[serde(default)]
        labels: std::collections::BTreeMap<String, String>,
    }

    #[derive(serde::Deserialize)]
    struct PromGroup {
        rules: Vec<PromRule>,
    }

    #[derive(serde::Deserialize)]
    struct PromFile {
        groups: Vec<PromGroup>,
    }

    /// A Prometheus duration (`90s`, `2m`, `1h`, `7d`) in seconds.
    fn seconds(d: &str) -> u64 {
        let (n, unit) = d.split_at(d.len() - 1);
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("a duration: {d}"));
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => panic!("a duration: {d}"),
        }
    }

    /// An expression with its numbers written one way (`1.5e9` and `1500000000` alike),
    /// single spaces, and PromQL's join modifiers (`on (…)`) left out.
    fn normalized(e: &str) -> String {
        let e = e.replace(" on (datname, relation)", "");
        e.split_whitespace()
            .map(|t| {
                t.parse::<f64>()
                    .map_or_else(|_| t.to_owned(), |v| format!("{v}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The Prometheus expression the engine's `expression` means at `severity`: the part
    /// before `(critical: …)` for a warning, its left-hand side with the critical
    /// comparison for a critical, without the `, per …` that PromQL needs no words for.
    fn expected(expression: &str, severity: Severity, both: bool) -> String {
        let e = expression.split(", per ").next().unwrap_or(expression);
        let Some((warn, crit)) = e.split_once(" (critical: ") else {
            return e.to_owned();
        };
        match (severity, both) {
            (Severity::Critical, true) => {
                let lhs = warn
                    .split(" >= ")
                    .next()
                    .and_then(|w| w.split(" <= ").next())
                    .unwrap_or(warn);
                format!("{lhs} {}", crit.trim_end_matches(')'))
            }
            _ => warn.to_owned(),
        }
    }

    /// Every rule of the engine's catalog is in `alerts/pgmon-rules.yml` with the same
    /// severities and `for`, and, where the engine's expression is a comparison PromQL
    /// writes the same way (levels, ratios, states; not the surges, starvation and
    /// checkpoint rules, whose windows and baselines PromQL writes otherwise), the same
    /// expression at each severity, numbers compared as numbers.
    #[test]
    fn the_prometheus_rules_say_what_the_engine_evaluates() {
        let file: PromFile =
            yaml_serde::from_str(include_str!("../../../alerts/pgmon-rules.yml")).expect("YAML");
        let shipped: Vec<PromRule> = file.groups.into_iter().flat_map(|g| g.rules).collect();
        let mut compared = 0;
        for r in catalog(&AlertsConfig::default()) {
            let name = r.meta.name;
            let prom: Vec<&PromRule> = shipped
                .iter()
                .filter(|p| p.alert.as_deref() == Some(name))
                .collect();
            let mut severities: Vec<&str> = prom
                .iter()
                .map(|p| p.labels.get("severity").map_or("none", String::as_str))
                .collect();
            severities.sort_unstable();
            let mut want: Vec<&str> = r.severities.iter().map(|s| s.as_str()).collect();
            want.sort_unstable();
            assert_eq!(severities, want, "{name}: severities");
            let complex = ["rate(", "increase(", "rose", "mean"]
                .iter()
                .any(|k| r.meta.expression.contains(k));
            for p in &prom {
                assert_eq!(
                    p.for_.as_deref().map_or(0, seconds) * 1000,
                    r.meta.for_ms,
                    "{name}: for"
                );
                if complex {
                    continue;
                }
                let severity = if p.labels.get("severity").map(String::as_str) == Some("critical") {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                let both = r.severities.len() == 2;
                assert_eq!(
                    normalized(&p.expr),
                    normalized(&expected(&r.meta.expression, severity, both)),
                    "{name} ({severity:?}): the engine evaluates {:?}",
                    r.meta.expression
                );
                compared += 1;
            }
        }
        assert!(compared >= 25, "{compared} expressions compared");
    }
}
