//! How each rule of [`super::rules`] reads its inputs: the families the health loops
//! published on the [`Board`] and the storage quota states. A rule returns `None` when
//! what it reads is not there (its loop has not run, or failed): the state machine then
//! leaves its alerts as they are.

use crate::health::{Board, board::Sample};

use super::{
    config::Threshold,
    rules::{Kind, Rule, SurgeState},
    series::{Baseline, Window},
    state::{Active, Severity},
};

/// What one evaluation reads.
pub struct Inputs<'a> {
    /// What the health loops last published.
    pub board: &'a Board,
    /// Each limited role and its storage quota state (`ok`, `soft`, `hard`, `locked`);
    /// `None` when storage quotas are off or did not answer.
    pub storage: Option<Vec<(String, &'static str)>>,
    /// Each budgeted role's utilisation (max(0, spend − burst) ÷ budget); `None` when
    /// budgets are off.
    pub budgets: Option<Vec<(String, f64)>>,
}

/// The severity of `v` against `t` for a rule where at or below is bad, if any.
fn severity_below(v: f64, t: &Threshold) -> Option<Severity> {
    if v <= t.crit {
        Some(Severity::Critical)
    } else if v <= t.warn {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// The severity of `v` against `t`, if any.
fn severity(v: f64, t: &Threshold) -> Option<Severity> {
    if v >= t.crit {
        Some(Severity::Critical)
    } else if v >= t.warn {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// `1h 2m`, `5m 3s`, `12.5s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let whole = s as u64;
    let (d, h, m, sec) = (
        whole / 86_400,
        whole % 86_400 / 3600,
        whole % 3600 / 60,
        whole % 60,
    );
    match (d, h) {
        (0, 0) => format!("{m}m {sec}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

use crate::util::bytes;

fn label<'a>(labels: &'a [(&'static str, String)], name: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Only the labels named in `keep`, in that order.
fn entity(labels: &[(&'static str, String)], keep: &[&'static str]) -> Vec<(&'static str, String)> {
    keep.iter()
        .map(|k| (*k, label(labels, k).to_owned()))
        .collect()
}

impl Rule {
    /// Evaluates the rule at `now_ms`: every entity its condition holds for, or `None`
    /// without data.
    pub fn evaluate(&mut self, now_ms: u64, inputs: &Inputs) -> Option<Vec<Active>> {
        let board = inputs.board;
        let warn = |labels, value, message| Active {
            labels,
            severity: Severity::Warning,
            value,
            message,
        };
        match &mut self.kind {
            Kind::Level { level, bytes } => {
                let samples: Vec<Sample> = match (level.entity, level.below) {
                    ([], false) => vec![board.max(level.metric)?],
                    ([], true) => {
                        let all = board.samples(level.metric)?;
                        all.into_iter()
                            .min_by(|a, b| a.1.total_cmp(&b.1))
                            .into_iter()
                            .collect()
                    }
                    _ => board.samples(level.metric)?,
                };
                let mut out = Vec::new();
                for (labels, v) in samples {
                    let keep = entity(&labels, level.entity);
                    let own = if level.below {
                        severity_below(v, &level.threshold)
                    } else {
                        severity(v, &level.threshold)
                    };
                    let lag_bytes = bytes.as_ref().and_then(|t| {
                        let b = board.value(
                            "pgmon_replication_lag_bytes",
                            &[("application_name", label(&labels, "application_name"))],
                        )?;
                        Some((b, severity(b, t)))
                    });
                    let Some(sev) = own.max(lag_bytes.and_then(|(_, s)| s))
                    else {
                        continue;
                    };
                    let message = level_message(level.alertname, board, &labels, v, lag_bytes);
                    out.push(Active {
                        labels: keep,
                        severity: sev,
                        value: v,
                        message,
                    });
                }
                Some(out)
            }
            Kind::DeadTuples(d) => {
                let ratios = board.samples("pgmon_relation_dead_ratio")?;
                let mut out = Vec::new();
                for (labels, ratio) in ratios {
                    let (db, rel) = (label(&labels, "datname"), label(&labels, "relation"));
                    let dead = board
                        .value(
                            "pgmon_relation_dead_tuples",
                            &[("datname", db), ("relation", rel)],
                        )
                        .unwrap_or(0.0);
                    if ratio >= d.ratio && dead >= d.min_tuples {
                        out.push(warn(
                            entity(&labels, &["datname", "relation"]),
                            ratio,
                            format!(
                                "{db}.{rel}: {:.0}% dead tuples ({dead:.0} rows)",
                                ratio * 100.0
                            ),
                        ));
                    }
                }
                Some(out)
            }
            Kind::TableBloat(b) => {
                let sizes = board.samples("pgmon_relation_bloat_bytes")?;
                let mut out = Vec::new();
                for (labels, ratio) in board.samples("pgmon_relation_bloat_ratio")? {
                    let (db, rel) = (label(&labels, "datname"), label(&labels, "relation"));
                    let Some(size) = sizes
                        .iter()
                        .find(|(l, _)| label(l, "datname") == db && label(l, "relation") == rel)
                        .map(|(_, v)| *v)
                    else {
                        continue;
                    };
                    if ratio >= b.ratio && size >= b.min_bytes {
                        out.push(warn(
                            entity(&labels, &["datname", "relation"]),
                            ratio,
                            format!(
                                "{db}.{rel}: {} ({:.0}% of the table) is bloat ({}); VACUUM FULL or pg_repack gives it back",
                                bytes(size),
                                ratio * 100.0,
                                label(&labels, "method")
                            ),
                        ));
                    }
                }
                Some(out)
            }
            Kind::PendingRestart => Some(
                board
                    .samples("pgmon_setting_pending_restart")?
                    .into_iter()
                    .filter(|(_, v)| *v >= 1.0)
                    .map(|(labels, v)| {
                        let message = format!(
                            "setting {} was changed in the configuration file and waits for a server restart",
                            label(&labels, "name")
                        );
                        warn(entity(&labels, &["name"]), v, message)
                    })
                    .collect(),
            ),
            Kind::SettingsChanged(c) => {
                let now = now_ms as f64 / 1000.0;
                Some(
                    board
                        .samples("pgmon_setting_changed_timestamp_seconds")?
                        .into_iter()
                        .filter(|(_, at)| now - at <= c.window_seconds as f64)
                        .map(|(labels, at)| {
                            let name = label(&labels, "name");
                            let message = format!(
                                "setting {name} changed value {} ago (the agent's log has the old and new values)",
                                duration(now - at)
                            );
                            warn(entity(&labels, &["name"]), at, message)
                        })
                        .collect(),
                )
            }
            Kind::Stale(s) => Some(
                board
                    .samples("pgmon_stale_statistics_tables")?
                    .into_iter()
                    .filter(|(_, n)| *n >= s.min_tables)
                    .map(|(labels, n)| {
                        let message = format!(
                            "database {}: {n:.0} changed table(s) not analyzed for over 12 h",
                            label(&labels, "datname")
                        );
                        warn(entity(&labels, &["datname"]), n, message)
                    })
                    .collect(),
            ),
            Kind::Starvation(s, windows) => {
                let ages = board.samples("pgmon_vacuum_age_max_seconds")?;
                let dead = board
                    .samples("pgmon_relation_dead_tuples")
                    .unwrap_or_default();
                windows.retain(|db, _| ages.iter().any(|(l, _)| label(l, "datname") == db));
                let mut out = Vec::new();
                for (labels, age) in ages {
                    let db = label(&labels, "datname");
                    let sum: f64 = dead
                        .iter()
                        .filter(|(l, _)| label(l, "datname") == db)
                        .map(|(_, v)| v)
                        .sum();
                    let w = windows
                        .entry(db.to_owned())
                        .or_insert_with(|| Window::new(s.window_seconds * 1000));
                    // A sum that falls (a vacuum) starts the window anew, like a counter reset.
                    w.push(now_ms, [sum]);
                    let rose = w.increase().map_or(0.0, |[d]| d);
                    if age > s.vacuum_age_seconds && rose > 0.0 {
                        let message = format!(
                            "database {db}: dead tuples rose by {rose:.0} in {} while a table has not been vacuumed for {}",
                            duration(w.span_ms() as f64 / 1000.0),
                            duration(age)
                        );
                        out.push(warn(entity(&labels, &["datname"]), age, message));
                    }
                }
                Some(out)
            }
            Kind::Checkpoints(k, w) => {
                let timed = board.value("pgmon_checkpoints", &[("kind", "timed")])?;
                let requested = board.value("pgmon_checkpoints", &[("kind", "requested")])?;
                w.push(now_ms, [timed, requested]);
                let [t, r] = w.increase()?;
                let total = t + r;
                let span = w.span_ms() as f64 / 1000.0;
                let mut out = Vec::new();
                if total >= k.min_checkpoints
                    && (r / total > k.requested_ratio || span / total < k.min_interval_seconds)
                {
                    let message = format!(
                        "{r:.0} of {total:.0} checkpoints in the last {} were requested; one every {} on average",
                        duration(span),
                        duration(span / total)
                    );
                    out.push(warn(Vec::new(), r / total, message));
                }
                Some(out)
            }
            Kind::Surge {
                metric,
                entity: per,
                what,
                config,
                interval_ms,
                state,
            } => surge(
                board.samples(metric)?,
                now_ms,
                *per,
                what,
                config,
                *interval_ms,
                state,
            ),
            Kind::UnusedIndex(u) => Some(
                board
                    .samples("pgmon_unused_index_bytes")?
                    .into_iter()
                    .filter(|(_, b)| *b >= u.min_bytes)
                    .map(|(labels, b)| {
                        let message = format!(
                            "{}.{} ({}) has not been scanned since statistics were reset",
                            label(&labels, "datname"),
                            label(&labels, "index"),
                            bytes(b)
                        );
                        warn(entity(&labels, &["datname", "index"]), b, message)
                    })
                    .collect(),
            ),
            Kind::Storage(wanted) => {
                let severity = self.severities[0];
                Some(
                    inputs
                        .storage
                        .as_ref()?
                        .iter()
                        .filter(|(_, s)| s == wanted)
                        .map(|(role, _)| Active {
                            labels: vec![("role", role.clone())],
                            severity,
                            value: 1.0,
                            message: storage_message(role, wanted),
                        })
                        .collect(),
                )
            }
            Kind::Budget(b) => Some(
                inputs
                    .budgets
                    .as_ref()?
                    .iter()
                    .filter(|(_, u)| crate::budget::reaches(*u, b.utilisation))
                    .map(|(role, u)| {
                        let message = format!(
                            "role {role} is at {:.0}% of its query-cost budget",
                            u * 100.0
                        );
                        warn(vec![("role", role.clone())], *u, message)
                    })
                    .collect(),
            ),
            Kind::Locks(t) => super::locks::evaluate(t, board),
            Kind::LoopFailing => {
                let loops = board.loops();
                if loops.is_empty() {
                    return None;
                }
                Some(
                    loops
                        .into_iter()
                        .filter(|(_, s)| !s.success)
                        .map(|(name, s)| {
                            let message = format!(
                                "pgmon's {name} health loop failed its last run ({} failed runs since the agent started)",
                                s.errors
                            );
                            warn(vec![("loop", name.to_owned())], s.errors as f64, message)
                        })
                        .collect(),
                )
            }
        }
    }
}

fn level_message(
    alertname: &str,
    board: &Board,
    labels: &[(&'static str, String)],
    v: f64,
    lag_bytes: Option<(f64, Option<Severity>)>,
) -> String {
    match alertname {
        "PostgresPartitionMissing" => {
            let table = format!("{}.{}", label(labels, "datname"), label(labels, "relation"));
            if v < 0.0 {
                format!(
                    "{table}: the newest partition ended {} ago: new rows find no partition of their own; create the next ones",
                    duration(-v)
                )
            } else {
                format!(
                    "{table}: the newest partition ends in {}; create the next one before then",
                    duration(v)
                )
            }
        }
        "PostgresPartitionPastRetention" => format!(
            "{}.{}: the oldest partition ended {} ago, past the retention: detach and drop it",
            label(labels, "datname"),
            label(labels, "relation"),
            duration(v)
        ),
        "PostgresConnectionSaturation" => {
            let max = board
                .value("pg_settings_max_connections", &[])
                .unwrap_or(0.0);
            format!(
                "client connections at {:.0}% of max_connections ({:.0} of {max:.0})",
                v * 100.0,
                v * max
            )
        }
        "PostgresLongTransaction" => {
            let db = board
                .max("pg_stat_activity_max_tx_duration")
                .map(|(l, _)| label(&l, "datname").to_owned())
                .filter(|d| !d.is_empty())
                .map(|d| format!(" (database {d})"))
                .unwrap_or_default();
            format!("a transaction has been open for {}{db}", duration(v))
        }
        "PostgresIdleInTransaction" => {
            format!("a session has been idle in transaction for {}", duration(v))
        }
        "PostgresBlockingLocks" => {
            let n = board.value("pgmon_blocked_backends", &[]).unwrap_or(0.0);
            let chain = board
                .value("pgmon_blocking_chain_max_length", &[])
                .unwrap_or(0.0);
            format!(
                "a session has waited {} on a lock ({n:.0} blocked, longest chain {chain:.0} sessions)",
                duration(v)
            )
        }
        // pg_stat_replication.replay_lag keeps its last measure while replay is paused or
        // stuck: with a bytes threshold, the WAL not yet replayed is said first.
        "PostgresReplicationLag" => match lag_bytes {
            Some((b, _)) => format!(
                "standby {}: {} of WAL not yet replayed (replay_lag {})",
                label(labels, "application_name"),
                bytes(b),
                duration(v)
            ),
            None => format!(
                "standby {} replays {} behind",
                label(labels, "application_name"),
                duration(v)
            ),
        },
        "PostgresWraparoundDanger" => format!(
            "database {}: age(datfrozenxid) is {v:.3e}, {:.0}% of the way to wraparound (2^31): vacuum freeze it",
            label(labels, "datname"),
            v / 2_147_483_648.0 * 100.0
        ),
        "PostgresWalArchivingBehind" => {
            let failed = board
                .value("pgmon_archive_last_failed_age_seconds", &[])
                .map(|f| format!("; archive_command last failed {} ago", duration(f)))
                .unwrap_or_default();
            let n = board
                .value("pgmon_archive_pending_segments", &[])
                .unwrap_or(0.0);
            format!(
                "{n:.0} WAL segment(s) wait for archive_command, the oldest for {}{failed}",
                duration(v)
            )
        }
        "PostgresCanarySlow" => format!(
            "SELECT 1 took {} to come back{}",
            duration(v),
            board
                .value("pgmon_canary_execution_seconds", &[])
                .map(|e| format!("; a tiny EXPLAIN ANALYZE executed in {}", duration(e)))
                .unwrap_or_default()
        ),
        "PostgresInactiveReplicationSlot" => format!(
            "replication slot {} has no consumer and holds back {} of WAL: drop it or reattach its consumer",
            label(labels, "slot_name"),
            bytes(v)
        ),
        _ => format!("{alertname}: {v}"),
    }
}

fn storage_message(role: &str, state: &str) -> String {
    match state {
        "soft" => format!("role {role} is over its soft storage limit"),
        "hard" => format!(
            "role {role} is over its hard storage limit: it is locked when the grace period ends"
        ),
        _ => format!("role {role} is locked by its storage quota (NOLOGIN)"),
    }
}

fn surge(
    samples: Vec<Sample>,
    now_ms: u64,
    per: Option<&'static str>,
    what: &str,
    config: &super::config::Surge,
    interval_ms: u64,
    state: &mut SurgeState,
) -> Option<Vec<Active>> {
    let key_of =
        |labels: &[(&'static str, String)]| per.map_or("", |p| label(labels, p)).to_owned();
    state.retain(|k, _| samples.iter().any(|(l, _)| key_of(l) == *k));
    let mut out = Vec::new();
    for (labels, v) in samples {
        let (w, b) = state.entry(key_of(&labels)).or_insert_with(|| {
            (
                Window::new(config.window_seconds * 1000),
                Baseline::new(config.baseline_seconds * 1000, interval_ms),
            )
        });
        w.push(now_ms, [v]);
        let Some([rate]) = w.rate() else {
            continue;
        };
        let j = b.judge(
            now_ms,
            rate,
            config.sigma,
            config.min_samples,
            config.floor_bytes_per_second,
        );
        if j.surge {
            let whose = per
                .map(|p| format!("database {}: ", label(&labels, p)))
                .unwrap_or_default();
            out.push(Active {
                labels: per.map(|p| entity(&labels, &[p])).unwrap_or_default(),
                severity: Severity::Warning,
                value: rate,
                message: format!(
                    "{whose}{what} at {}/s over the last {} s, above its baseline of {}/s + {}σ ({}/s)",
                    bytes(rate),
                    config.window_seconds,
                    bytes(j.mean),
                    config.sigma,
                    bytes(j.limit)
                ),
            });
        }
    }
    Some(out)
}
