//! The life of an alert, as a pure state machine on an injected clock (milliseconds since
//! the UNIX epoch):
//!
//! ```text
//! inactive ──condition holds──▶ pending ──held for `for`──▶ firing ──condition ends──▶ resolved
//!     ▲                            │                        │  ▲                         │
//!     └──────condition ends────────┘                        └──┘ repeat_ms, or a new     │
//!     └──────────────────────────────────────────────────────────  severity: sent again ─┘
//! ```
//!
//! One alert per dedupe key (the alert's name and its entity labels). A firing alert is
//! notified once when it starts firing, again only when its severity changes or after
//! `repeat_ms` while it lasts, and its end is notified once (resolved). A rule that had no
//! data this round (its loop failed, or has not run yet) changes nothing: no data is not
//! the end of a condition.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    /// `warning` or `critical` (the `severity` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A rule's condition holding now for one entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Active {
    /// The entity's labels (`datname`, `relation`, `application_name`, `role`, …); empty
    /// for a cluster-wide rule.
    pub labels: Vec<(&'static str, String)>,
    /// How bad, by the rule's thresholds.
    pub severity: Severity,
    /// The value compared (seconds, bytes, a ratio: the rule says).
    pub value: f64,
    /// One line for people.
    pub message: String,
}

/// What the machine needs to know of a rule.
#[derive(Clone, Debug)]
pub struct RuleMeta {
    /// The alert's name.
    pub name: &'static str,
    /// The expression, with the policy's numbers.
    pub expression: String,
    /// How long the condition must hold before firing, milliseconds.
    pub for_ms: u64,
}

/// `pending` or `firing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Firing,
}

/// One alert that is pending or firing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// The rule's name.
    pub alertname: &'static str,
    /// `alertname{label="value",…}`.
    pub dedupe_key: String,
    /// The entity's labels.
    pub labels: BTreeMap<&'static str, String>,
    pub state: Phase,
    /// Its severity at the last evaluation.
    pub severity: Severity,
    /// The value compared at the last evaluation.
    pub value: f64,
    /// One line for people, from the last evaluation.
    pub message: String,
    /// The rule's expression with the policy's numbers.
    pub expression: String,
    /// When the condition started holding, ms since the epoch (JSON: `active_since`,
    /// RFC 3339).
    #[serde(rename = "active_since", serialize_with = "rfc3339")]
    pub active_since_ms: u64,
    /// When it started firing (JSON: `firing_since`).
    #[serde(rename = "firing_since", serialize_with = "rfc3339_opt")]
    pub firing_since_ms: Option<u64>,
    /// When it was last notified (JSON: `last_notified`).
    #[serde(rename = "last_notified", serialize_with = "rfc3339_opt")]
    pub last_notified_ms: Option<u64>,
    #[serde(skip)]
    pub(super) notified_severity: Option<Severity>,
    /// Notifications sent again while it kept firing.
    pub repeats: u32,
}

/// `firing` or `resolved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// A notification to send: the alert as it was at `at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notice {
    /// Firing or resolved.
    pub status: Status,
    /// JSON: `at`, RFC 3339.
    #[serde(rename = "at", serialize_with = "rfc3339")]
    pub at_ms: u64,
    /// Sent again because the alert kept firing for `repeat_seconds`.
    pub repeat: bool,
    #[serde(flatten)]
    pub alert: Alert,
}

fn rfc3339<S: serde::Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::util::rfc3339(*ms))
}

fn rfc3339_opt<S: serde::Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

/// Every pending and firing alert, and the recent transitions.
#[derive(Debug)]
pub struct Tracker {
    alerts: BTreeMap<String, Alert>,
    history: VecDeque<Notice>,
    history_cap: usize,
    repeat_ms: u64,
}

/// `name{a="x",b="y"}`, or `name` without labels.
pub fn dedupe_key(name: &str, labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

impl Tracker {
    /// A reloaded `repeat_seconds`, ms; alerts in flight keep their state.
    pub fn set_repeat(&mut self, repeat_ms: u64) {
        self.repeat_ms = repeat_ms;
    }

    /// `repeat_ms` 0: a firing alert is notified once; `history` transitions kept.
    pub fn new(repeat_ms: u64, history: usize) -> Self {
        Self {
            alerts: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap: history,
            repeat_ms,
        }
    }

    /// One evaluation of `rule` at `now_ms`: `None` when the rule had no data (nothing
    /// changes), otherwise every entity its condition holds for. Returns what to notify.
    pub fn observe(
        &mut self,
        now_ms: u64,
        rule: &RuleMeta,
        result: Option<Vec<Active>>,
    ) -> Vec<Notice> {
        let Some(actives) = result else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in actives {
            let key = dedupe_key(rule.name, &a.labels);
            seen.insert(key.clone());
            let alert = self.alerts.entry(key.clone()).or_insert_with(|| Alert {
                alertname: rule.name,
                dedupe_key: key,
                labels: a.labels.iter().cloned().collect(),
                state: Phase::Pending,
                severity: a.severity,
                value: a.value,
                message: String::new(),
                expression: rule.expression.clone(),
                active_since_ms: now_ms,
                firing_since_ms: None,
                last_notified_ms: None,
                notified_severity: None,
                repeats: 0,
            });
            alert.severity = a.severity;
            alert.value = a.value;
            alert.message = a.message;
            alert.expression.clone_from(&rule.expression);
            let (send, repeat) = match alert.state {
                Phase::Pending if now_ms.saturating_sub(alert.active_since_ms) >= rule.for_ms => {
                    alert.state = Phase::Firing;
                    alert.firing_since_ms = Some(now_ms);
                    (true, false)
                }
                Phase::Pending => (false, false),
                Phase::Firing if alert.notified_severity != Some(alert.severity) => (true, false),
                Phase::Firing => {
                    let due = self.repeat_ms > 0
                        && alert
                            .last_notified_ms
                            .is_some_and(|t| now_ms.saturating_sub(t) >= self.repeat_ms);
                    if due {
                        alert.repeats += 1;
                    }
                    (due, due)
                }
            };
            if send {
                alert.last_notified_ms = Some(now_ms);
                alert.notified_severity = Some(alert.severity);
                out.push(Notice {
                    status: Status::Firing,
                    at_ms: now_ms,
                    repeat,
                    alert: alert.clone(),
                });
            }
        }
        let ended: Vec<String> = self
            .alerts
            .iter()
            .filter(|(k, a)| a.alertname == rule.name && !seen.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            let Some(alert) = self.alerts.remove(&key) else {
                continue;
            };
            if alert.state == Phase::Firing {
                out.push(Notice {
                    status: Status::Resolved,
                    at_ms: now_ms,
                    repeat: false,
                    alert,
                });
            }
        }
        self.history
            .extend(out.iter().filter(|n| !n.repeat).cloned());
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        out
    }

    /// Puts back an alert saved by an earlier run (its timers as they were), unless one of
    /// that key is already tracked.
    pub fn restore(&mut self, alert: Alert) {
        self.alerts.entry(alert.dedupe_key.clone()).or_insert(alert);
    }

    /// Pending and firing alerts, by dedupe key.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    /// The recent transitions, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Notice> {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn rule(for_ms: u64) -> RuleMeta {
        RuleMeta {
            name: "PostgresIdleInTransaction",
            expression: "pgmon_idle_in_transaction_max_seconds >= 300".into(),
            for_ms,
        }
    }

    fn active(severity: Severity, value: f64) -> Active {
        Active {
            labels: vec![("datname", "app".into())],
            severity,
            value,
            message: format!("idle for {value} s"),
        }
    }

    #[test]
    fn pending_then_firing_once_then_resolved_once() {
        let mut t = Tracker::new(0, 10);
        let r = rule(60 * S);
        let w = Severity::Warning;
        assert!(t.observe(0, &r, Some(vec![active(w, 300.0)])).is_empty());
        let a = t.alerts().next().unwrap();
        assert_eq!(
            (a.state, a.dedupe_key.as_str()),
            (Phase::Pending, "PostgresIdleInTransaction{datname=\"app\"}")
        );
        assert!(
            t.observe(59 * S, &r, Some(vec![active(w, 359.0)]))
                .is_empty()
        );
        let n = t.observe(60 * S, &r, Some(vec![active(w, 360.0)]));
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].status, n[0].alert.value), (Status::Firing, 360.0));
        assert_eq!(n[0].alert.firing_since_ms, Some(60 * S));
        // Still firing: nothing more, repeat off.
        for i in 61..200 {
            assert!(
                t.observe(i * S, &r, Some(vec![active(w, i as f64 + 300.0)]))
                    .is_empty()
            );
        }
        // No data: nothing changes.
        assert!(t.observe(300 * S, &r, None).is_empty());
        assert_eq!(t.alerts().count(), 1);
        let n = t.observe(301 * S, &r, Some(vec![]));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].status, Status::Resolved);
        assert!(
            t.observe(302 * S, &r, Some(vec![])).is_empty(),
            "resolved once"
        );
        assert_eq!(t.alerts().count(), 0);
        let h: Vec<Status> = t.history().map(|n| n.status).collect();
        assert_eq!(h, [Status::Firing, Status::Resolved]);
    }

    #[test]
    fn a_condition_that_ends_while_pending_is_never_notified() {
        let mut t = Tracker::new(0, 10);
        let r = rule(10 * S);
        assert!(
            t.observe(0, &r, Some(vec![active(Severity::Warning, 1.0)]))
                .is_empty()
        );
        assert!(t.observe(5 * S, &r, Some(vec![])).is_empty());
        assert_eq!(t.alerts().count(), 0);
        // It starts again from zero.
        assert!(
            t.observe(6 * S, &r, Some(vec![active(Severity::Warning, 1.0)]))
                .is_empty()
        );
        assert!(
            t.observe(15 * S, &r, Some(vec![active(Severity::Warning, 1.0)]))
                .is_empty()
        );
        assert_eq!(
            t.observe(16 * S, &r, Some(vec![active(Severity::Warning, 1.0)]))
                .len(),
            1
        );
    }

    #[test]
    fn repeats_after_repeat_ms_and_on_a_new_severity() {
        let mut t = Tracker::new(100 * S, 10);
        let r = rule(0);
        let (w, c) = (Severity::Warning, Severity::Critical);
        assert_eq!(
            t.observe(0, &r, Some(vec![active(w, 1.0)])).len(),
            1,
            "for 0: at once"
        );
        assert!(t.observe(99 * S, &r, Some(vec![active(w, 1.0)])).is_empty());
        let n = t.observe(100 * S, &r, Some(vec![active(w, 1.0)]));
        assert_eq!((n.len(), n[0].alert.repeats, n[0].repeat), (1, 1, true));
        let n = t.observe(101 * S, &r, Some(vec![active(c, 2.0)]));
        assert_eq!(n.len(), 1, "escalation is sent at once");
        assert_eq!(n[0].alert.severity, c);
        assert!(
            t.observe(102 * S, &r, Some(vec![active(c, 2.0)]))
                .is_empty()
        );
        // The history keeps transitions, not repeats.
        let h: Vec<(Status, Severity)> =
            t.history().map(|n| (n.status, n.alert.severity)).collect();
        assert_eq!(h, [(Status::Firing, w), (Status::Firing, c)]);
    }

    #[test]
    fn entities_are_independent_and_history_is_bounded() {
        let mut t = Tracker::new(0, 3);
        let r = rule(0);
        let on = |db: &str| Active {
            labels: vec![("datname", db.to_owned())],
            severity: Severity::Warning,
            value: 1.0,
            message: String::new(),
        };
        assert_eq!(t.observe(0, &r, Some(vec![on("a"), on("b")])).len(), 2);
        let n = t.observe(S, &r, Some(vec![on("b")]));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].alert.labels["datname"], "a");
        assert_eq!(n[0].status, Status::Resolved);
        // Another rule's alerts are not touched.
        let other = RuleMeta {
            name: "Other",
            expression: String::new(),
            for_ms: 0,
        };
        assert!(t.observe(2 * S, &other, Some(vec![])).is_empty());
        assert_eq!(t.alerts().count(), 1);
        assert_eq!(t.history().count(), 3);
        assert_eq!(t.observe(3 * S, &r, Some(vec![])).len(), 1);
        assert_eq!(t.history().count(), 3, "bounded");
    }
}
