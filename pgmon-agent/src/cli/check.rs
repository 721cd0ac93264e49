//! `pgmon-agent check`: a one-shot health report of the cluster as JSON, with the exit
//! codes of Nagios plugins (Nagios Plugin Development Guidelines, "Plugin Return Codes"):
//! 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. It needs no running agent: it opens one
//! read-only session with `cluster.connection`, runs the 15-second and 60-second health
//! queries and the wraparound query once, and compares them with `alerts:` in the policy.

use std::path::Path;

use serde::Serialize;

use crate::{alerts::AlertsConfig, config::Config, health::Board};

/// A Nagios state, ordered by gravity (UNKNOWN only when nothing could be read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    /// The plugin exit code.
    pub fn code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub state: State,
    pub value: f64,
    pub warn: f64,
    pub crit: f64,
    /// What the value belongs to (a database, a standby), when it is a maximum over several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub of: Option<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub state: State,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Compares what `board` holds with the threshold rules of `alerts` (the alert engine's
/// [`crate::alerts::config::Level`]s; the largest sample of each metric decides, the
/// smallest where less is worse).
pub fn evaluate(board: &Board, alerts: &AlertsConfig) -> Report {
    let state = |value: f64, th: &crate::alerts::Threshold| {
        if value >= th.crit {
            State::Critical
        } else if value >= th.warn {
            State::Warning
        } else {
            State::Ok
        }
    };
    let mut checks: Vec<Check> = alerts
        .levels()
        .into_iter()
        .filter_map(|l| {
            let th = l.threshold;
            // Where less is worse the smallest sample decides, and no sample is no
            // check (0 would read as critical).
            let (labels, value) = if l.below {
                board
                    .samples(l.metric)?
                    .into_iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))?
            } else {
                board.max(l.metric).unwrap_or_default()
            };
            let state = if l.below {
                state(
                    -value,
                    &crate::alerts::Threshold {
                        warn: -th.warn,
                        crit: -th.crit,
                        for_seconds: None,
                    },
                )
            } else {
                state(value, &th)
            };
            Some(Check {
                name: l.field,
                state,
                value,
                warn: th.warn,
                crit: th.crit,
                of: labels.first().map(|(_, v)| v.clone()),
            })
        })
        .collect();
    // Lock entries, against counts that may follow the lock table's capacity.
    let capacity = board
        .value(crate::alerts::locks::CAPACITY, &[])
        .unwrap_or(0.0);
    let th = alerts.total_locks.threshold(capacity);
    let value = board
        .value(crate::alerts::locks::METRIC, &[])
        .unwrap_or(0.0);
    checks.push(Check {
        name: "total_locks",
        state: state(value, &th),
        value,
        warn: th.warn,
        crit: th.crit,
        of: None,
    });
    Report {
        state: checks.iter().map(|c| c.state).max().unwrap_or(State::Ok),
        checks,
        error: None,
    }
}

/// Runs the check with the policy at `path`, prints the JSON report, and returns the exit
/// code (3 when the policy or the cluster cannot be read).
pub fn check(path: &Path) -> u8 {
    let report = match run(path) {
        Ok(r) => r,
        Err(e) => Report {
            state: State::Unknown,
            checks: Vec::new(),
            error: Some(format!("{e:#}")),
        },
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    report.state.code()
}

fn run(path: &Path) -> anyhow::Result<Report> {
    let config = Config::load(path)?;
    let monitor = config.cluster.monitor()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let board = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            crate::health::snapshot(&monitor),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the cluster within 30 s"))?
    })?;
    Ok(evaluate(&board, &config.alerts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Family, Kind};

    #[test]
    fn the_worst_check_decides_the_state() {
        let board = Board::default();
        board.publish(
            "fast",
            vec![
                Family::single("pgmon_connections_used_ratio", "", Kind::Gauge, 0.5),
                Family::single(
                    "pgmon_idle_in_transaction_max_seconds",
                    "",
                    Kind::Gauge,
                    400.0,
                ),
            ],
        );
        let mut xid = Family::new("pgmon_database_xid_age", "", Kind::Gauge);
        xid.push(vec![("datname", "a".into())], 10.0);
        xid.push(vec![("datname", "b".into())], 1.9e9);
        board.publish("hourly", vec![xid]);
        let r = evaluate(&board, &AlertsConfig::default());
        assert_eq!(r.state, State::Critical);
        let by = |n: &str| r.checks.iter().find(|c| c.name == n).unwrap();
        assert_eq!(by("connection_saturation").state, State::Ok);
        assert_eq!(by("idle_in_transaction_seconds").state, State::Warning);
        let w = by("wraparound_xid_age");
        assert_eq!((w.state, w.of.as_deref()), (State::Critical, Some("b")));
        // No lock count read: 0 against thresholds of a capacity of 0.
        assert_eq!(by("total_locks").value, 0.0);
        assert_eq!(r.state.code(), 2);
    }
}
