//! The alert engine's state across restarts: every pending and firing alert with its
//! timers (`pgmon.alert_state`, one row per dedupe key) and every surge baseline
//! (`pgmon.alert_baselines`, one row per rule and entity), in the monitor database
//! (sql/002_enforcement.sql).
//!
//! Without it a restart sets every `for` timer back to zero (the 7-day unused-index rule
//! would never fire on a host upgraded weekly), pages again for what was already paged,
//! and forgets a day of surge baseline. An alert row is written when its timers change
//! (a transition, a notification), not at every evaluation: its value and message are
//! re-evaluated at the first evaluation after the start. Baselines are written every
//! [`BASELINE_EVERY`] (a restart loses at most that much of a day-long baseline).
//!
//! The time the agent was down counts as time the condition held: an alert pending for
//! 6 of its 7 days when the agent stopped fires at the first evaluation after the start
//! if the condition still holds then.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::{
    Engine,
    rules::Kind,
    state::{Alert, Phase, Severity},
};

/// How often the surge baselines are written.
pub const BASELINE_EVERY: Duration = Duration::from_secs(1800);

/// One alert's timers as stored (`pgmon.alert_state.alert`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedAlert {
    pub alertname: String,
    pub labels: BTreeMap<String, String>,
    pub state: Phase,
    pub severity: Severity,
    pub expression: String,
    pub active_since_ms: u64,
    pub firing_since_ms: Option<u64>,
    pub last_notified_ms: Option<u64>,
    pub notified_severity: Option<Severity>,
    pub repeats: u32,
}

/// One surge baseline as stored (`pgmon.alert_baselines.baseline`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedBaseline {
    /// Past rates, oldest first.
    pub values: Vec<f64>,
    /// When the last was observed, unix ms.
    pub last_ms: Option<u64>,
}

/// Label names are `&'static str` in the engine; a stored one is matched against the
/// catalog's, and an unknown one (from another version) leaked once.
fn intern(name: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "datname",
        "relation",
        "application_name",
        "role",
        "schemaname",
        "indexrelname",
        "relname",
        "slot_name",
        "archiver",
        "pid",
    ];
    if let Some(k) = KNOWN.iter().find(|k| **k == name) {
        return k;
    }
    static LEAKED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut leaked = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = leaked.iter().find(|k| **k == name) {
        return k;
    }
    let k: &'static str = Box::leak(name.to_owned().into_boxed_str());
    leaked.push(k);
    k
}

impl Engine {
    /// Every pending and firing alert's timers, by dedupe key.
    pub fn saved_alerts(&self) -> BTreeMap<String, SavedAlert> {
        self.tracker
            .alerts()
            .map(|a| {
                (
                    a.dedupe_key.clone(),
                    SavedAlert {
                        alertname: a.alertname.to_owned(),
                        labels: a
                            .labels
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), v.clone()))
                            .collect(),
                        state: a.state,
                        severity: a.severity,
                        expression: a.expression.clone(),
                        active_since_ms: a.active_since_ms,
                        firing_since_ms: a.firing_since_ms,
                        last_notified_ms: a.last_notified_ms,
                        notified_severity: a.notified_severity,
                        repeats: a.repeats,
                    },
                )
            })
            .collect()
    }

    /// Every surge baseline: (rule, entity) → baseline.
    pub fn saved_baselines(&self) -> BTreeMap<(String, String), SavedBaseline> {
        let mut out = BTreeMap::new();
        for r in &self.rules {
            if let Kind::Surge { state, .. } = &r.kind {
                for (entity, (_, b)) in state {
                    let (values, last_ms) = b.saved();
                    out.insert(
                        (r.meta.name.to_owned(), entity.clone()),
                        SavedBaseline { values, last_ms },
                    );
                }
            }
        }
        out
    }

    /// Puts back what an earlier run saved; alerts of rules no longer in the catalog are
    /// dropped. Returns (alerts, baselines) restored.
    pub fn restore(
        &mut self,
        alerts: BTreeMap<String, SavedAlert>,
        baselines: BTreeMap<(String, String), SavedBaseline>,
    ) -> (usize, usize) {
        let mut n_alerts = 0;
        for (key, a) in alerts {
            let Some(rule) = self.rules.iter().find(|r| r.meta.name == a.alertname) else {
                continue;
            };
            self.tracker.restore(Alert {
                alertname: rule.meta.name,
                dedupe_key: key,
                labels: a
                    .labels
                    .iter()
                    .map(|(k, v)| (intern(k), v.clone()))
                    .collect(),
                state: a.state,
                severity: a.severity,
                value: f64::NAN,
                message: "restored after a restart; re-evaluated at the next evaluation".into(),
                expression: a.expression,
                active_since_ms: a.active_since_ms,
                firing_since_ms: a.firing_since_ms,
                last_notified_ms: a.last_notified_ms,
                notified_severity: a.notified_severity,
                repeats: a.repeats,
            });
            n_alerts += 1;
        }
        let mut n_baselines = 0;
        for r in &mut self.rules {
            if let Kind::Surge {
                config,
                interval_ms,
                state,
                ..
            } = &mut r.kind
            {
                for ((rule, entity), b) in &baselines {
                    if rule != r.meta.name {
                        continue;
                    }
                    let (_, base) = state.entry(entity.clone()).or_insert_with(|| {
                        (
                            super::series::Window::new(config.window_seconds * 1000),
                            super::series::Baseline::new(
                                config.baseline_seconds * 1000,
                                *interval_ms,
                            ),
                        )
                    });
                    base.restore(b.values.clone(), b.last_ms);
                    n_baselines += 1;
                }
            }
        }
        (n_alerts, n_baselines)
    }
}

/// Reads both tables.
pub async fn load(
    c: &Client,
) -> Result<
    (
        BTreeMap<String, SavedAlert>,
        BTreeMap<(String, String), SavedBaseline>,
    ),
    tokio_postgres::Error,
> {
    let mut alerts = BTreeMap::new();
    for r in c
        .query("SELECT dedupe_key, alert::text FROM pgmon.alert_state", &[])
        .await?
    {
        match serde_json::from_str(r.get::<_, &str>(1)) {
            Ok(a) => {
                alerts.insert(r.get(0), a);
            }
            Err(e) => {
                tracing::warn!(key = r.get::<_, &str>(0), error = %e, "pgmon.alert_state: a row that does not parse is ignored")
            }
        }
    }
    let mut baselines = BTreeMap::new();
    for r in c
        .query(
            "SELECT rule, entity, baseline::text FROM pgmon.alert_baselines",
            &[],
        )
        .await?
    {
        if let Ok(b) = serde_json::from_str(r.get::<_, &str>(2)) {
            baselines.insert((r.get(0), r.get(1)), b);
        }
    }
    Ok((alerts, baselines))
}

/// What was last written, to write only what changed.
#[derive(Default)]
pub struct Written {
    alerts: HashMap<String, String>,
    baselines_at: Option<tokio::time::Instant>,
}

impl Written {
    /// Starts from what [`load`] read (so an unchanged restored alert is not rewritten).
    pub fn from_loaded(alerts: &BTreeMap<String, SavedAlert>) -> Self {
        Self {
            alerts: alerts
                .iter()
                .map(|(k, a)| (k.clone(), serde_json::to_string(a).unwrap_or_default()))
                .collect(),
            baselines_at: Some(tokio::time::Instant::now()),
        }
    }

    /// Writes the alerts that changed, deletes the ones gone, and every [`BASELINE_EVERY`]
    /// the baselines, in one transaction. On error nothing is marked written (retried at
    /// the next evaluation).
    pub async fn write(
        &mut self,
        c: &mut Client,
        engine: &Engine,
    ) -> Result<(), tokio_postgres::Error> {
        let now: HashMap<String, String> = engine
            .saved_alerts()
            .into_iter()
            .map(|(k, a)| (k, serde_json::to_string(&a).unwrap_or_default()))
            .collect();
        let changed: Vec<(&String, &String)> = now
            .iter()
            .filter(|(k, v)| self.alerts.get(*k) != Some(*v))
            .collect();
        let gone: Vec<&String> = self
            .alerts
            .keys()
            .filter(|k| !now.contains_key(*k))
            .collect();
        let baselines_due = self
            .baselines_at
            .is_none_or(|t| t.elapsed() >= BASELINE_EVERY);
        if changed.is_empty() && gone.is_empty() && !baselines_due {
            return Ok(());
        }
        let tx = c.transaction().await?;
        if !gone.is_empty() {
            tx.execute(
                "DELETE FROM pgmon.alert_state WHERE dedupe_key = ANY($1)",
                &[&gone],
            )
            .await?;
        }
        for (k, v) in &changed {
            tx.execute(
                "INSERT INTO pgmon.alert_state (dedupe_key, alert) VALUES ($1, $2::text::jsonb) \
                 ON CONFLICT (dedupe_key) DO UPDATE SET alert = excluded.alert, updated_at = now()",
                &[k, v],
            )
            .await?;
        }
        if baselines_due {
            let saved = engine.saved_baselines();
            let (rules, entities, values): (Vec<&str>, Vec<&str>, Vec<String>) = saved
                .iter()
                .map(|((r, e), b)| {
                    (
                        r.as_str(),
                        e.as_str(),
                        serde_json::to_string(b).unwrap_or_default(),
                    )
                })
                .fold(
                    (vec![], vec![], vec![]),
                    |(mut a, mut b, mut c), (x, y, z)| {
                        a.push(x);
                        b.push(y);
                        c.push(z);
                        (a, b, c)
                    },
                );
            tx.execute("DELETE FROM pgmon.alert_baselines", &[]).await?;
            tx.execute(
                "INSERT INTO pgmon.alert_baselines (rule, entity, baseline) \
                 SELECT r, e, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS u(r, e, b)",
                &[&rules, &entities, &values],
            )
            .await?;
        }
        tx.commit().await?;
        self.alerts = now;
        if baselines_due {
            self.baselines_at = Some(tokio::time::Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertsConfig, state::Active};

    #[test]
    fn a_restored_pending_alert_keeps_its_timer_and_a_firing_one_is_not_paged_again() {
        let config = AlertsConfig::default();
        let mut engine = Engine::new(&config);
        let rule = engine
            .rules
            .iter()
            .find(|r| r.meta.for_ms > 0)
            .expect("a rule with a `for`")
            .meta
            .clone();
        let active = |v| {
            Some(vec![Active {
                labels: vec![("datname", "app".into())],
                severity: Severity::Warning,
                value: v,
                message: "m".into(),
            }])
        };
        assert!(engine.tracker.observe(1_000, &rule, active(1.0)).is_empty());
        let saved = engine.saved_alerts();
        let json = serde_json::to_string(&saved).unwrap();
        let back: BTreeMap<String, SavedAlert> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);

        let mut restarted = Engine::new(&config);
        assert_eq!(restarted.restore(back, BTreeMap::new()), (1, 0));
        // The timer runs from 1 000, not from the restart.
        let fired = restarted
            .tracker
            .observe(1_000 + rule.for_ms, &rule, active(2.0));
        assert_eq!(fired.len(), 1, "fires at active_since + for");
        assert_eq!(fired[0].alert.active_since_ms, 1_000);
        assert_eq!(
            fired[0].alert.labels.get("datname").map(String::as_str),
            Some("app")
        );

        // Firing and notified: restored, it is not notified again.
        let mut again = Engine::new(&config);
        again.restore(restarted.saved_alerts(), BTreeMap::new());
        assert!(
            again
                .tracker
                .observe(5_000 + rule.for_ms, &rule, active(3.0))
                .is_empty()
        );
    }
}
