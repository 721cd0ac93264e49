//! Alerts as notifications: the sinks the policy lists, and each firing or resolved
//! alert rendered as a [`Payload`] (Slack text, email subject and body, webhook JSON).

use std::time::Duration;

use anyhow::Context as _;

use super::{
    config::{AlertsConfig, NotifierConfig},
    state::{Notice, Status},
};
use crate::notify::{Delivery, Payload, Sink, Target, email::Mailer};

/// The sinks of `alerts.notifiers`, in order (URLs and addresses were validated with the
/// policy; an email password file that cannot be read fails here).
pub fn sinks(config: &AlertsConfig) -> anyhow::Result<Vec<Sink>> {
    let timeout = Duration::from_millis(config.delivery.timeout_ms);
    let mut out = Vec::new();
    for (i, n) in config.notifiers.iter().enumerate() {
        let (name, target) = match n {
            NotifierConfig::Slack(w) => (
                w.name.clone().unwrap_or_else(|| "slack".into()),
                Target::Slack(
                    w.url
                        .parse()
                        .with_context(|| format!("alerts.notifiers[{i}].slack.url"))?,
                ),
            ),
            NotifierConfig::Webhook(w) => (
                w.name.clone().unwrap_or_else(|| "webhook".into()),
                Target::Webhook(
                    w.url
                        .parse()
                        .with_context(|| format!("alerts.notifiers[{i}].webhook.url"))?,
                ),
            ),
            NotifierConfig::Email(e) => (
                e.name.clone().unwrap_or_else(|| "email".into()),
                Target::Email(Box::new(
                    Mailer::new(e, timeout)
                        .with_context(|| format!("alerts.notifiers[{i}].email"))?,
                )),
            ),
        };
        out.push(Sink { name, target });
    }
    Ok(out)
}

/// `alerts.delivery`; deduplication drops only a transition already sent (its key names
/// the transition), the state machine having sent each one once.
pub fn delivery(config: &AlertsConfig) -> Delivery {
    let d = &config.delivery;
    Delivery {
        timeout: Duration::from_millis(d.timeout_ms),
        retries: d.retries,
        queue: d.queue,
        dedup: Duration::from_secs(3600),
        max_per_minute: d.max_per_minute,
        rate_window: Duration::from_secs(60),
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), which every notification names.
pub fn instance() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The notification of `n`.
///
/// Slack text and email subject: `[FIRING warning] PostgresLongTransaction on db1: a
/// transaction has been open for 6m 2s` or `[RESOLVED] … (was warning, fired for 3m
/// 0s)`. Webhook JSON: `status` (`firing`, `resolved`), `alertname`, `severity`,
/// `labels`, `dedupe_key`, `value`, `message`, `expression`, `instance`, `starts_at`,
/// `ends_at` (resolved only), `at` (all RFC 3339) and `repeat`.
/// `link` is the web UI's panel for the alert ([`panel`]) under `external_url`
/// (`metrics.external_url`), when set.
pub fn payload(n: &Notice, instance: &str, external_url: Option<&str>) -> Payload {
    let a = &n.alert;
    let fired = a.firing_since_ms.unwrap_or(a.active_since_ms);
    let on = if instance.is_empty() {
        String::new()
    } else {
        format!(" on {instance}")
    };
    let text = match n.status {
        Status::Firing => format!(
            "[FIRING {}] {}{on}: {}",
            a.severity.as_str(),
            a.alertname,
            a.message
        ),
        Status::Resolved => format!(
            "[RESOLVED] {}{on}: {} (was {}, fired for {})",
            a.alertname,
            a.message,
            a.severity.as_str(),
            super::eval::duration(n.at_ms.saturating_sub(fired) as f64 / 1000.0)
        ),
    };
    let rfc = crate::util::rfc3339;
    let labels: String = a.labels.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let details = format!(
        "{text}\n\nalert: {}\nstatus: {:?}\nseverity: {}\ninstance: {instance}\nlabels: {}\nvalue: {}\n\
         expression: {}\nactive since: {}\nat: {}\n",
        a.alertname,
        n.status,
        a.severity.as_str(),
        labels.trim_end(),
        a.value,
        a.expression,
        rfc(a.active_since_ms),
        rfc(n.at_ms)
    );
    let json = serde_json::json!({
        "status": n.status,
        "alertname": a.alertname,
        "severity": a.severity,
        "labels": a.labels,
        "dedupe_key": a.dedupe_key,
        "value": a.value,
        "message": a.message,
        "expression": a.expression,
        "instance": instance,
        "starts_at": rfc(fired),
        "ends_at": (n.status == Status::Resolved).then(|| rfc(n.at_ms)),
        "at": rfc(n.at_ms),
        "repeat": n.repeat,
    });
    Payload {
        key: format!(
            "{}|{:?}|{}|{fired}|{}",
            a.dedupe_key,
            n.status,
            a.severity.as_str(),
            a.repeats
        ),
        text,
        details,
        json,
        link: crate::ui::link(external_url, panel(a.alertname)),
    }
}

/// The web UI's page an alert is best read on (a route of `ui/app.js`).
pub fn panel(alertname: &str) -> &'static str {
    let has = |words: &[&str]| words.iter().any(|w| alertname.contains(w));
    if has(&["Replication"]) {
        "replication"
    } else if has(&["Autovacuum", "DeadTuple", "StaleStatistics", "Wraparound"]) {
        "autovacuum"
    } else if has(&["UnusedLargeIndex"]) {
        "storage"
    } else if has(&["Budget"]) {
        "budgets"
    } else if has(&["PgmonStorage"]) {
        "quotas"
    } else if has(&[
        "Connection",
        "Transaction",
        "Locks",
        "Checkpoint",
        "Wal",
        "Temp",
    ]) {
        "overview"
    } else {
        "alerts"
    }
}
