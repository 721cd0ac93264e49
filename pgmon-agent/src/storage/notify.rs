//! Notifications of storage transitions, through the shared notifier ([`crate::notify`]):
//! a Slack incoming webhook (`{"text": …}`) and a generic JSON webhook (the [`Event`]).
//!
//! Enforcement never waits for a webhook: [`Notifier::send`] puts the event on each
//! sink's bounded queue (`storage.notifications.queue`) and returns; when a queue is full
//! the event is dropped for that sink and counted. Each sink has its own task, which drops
//! events already sent for the same (role, transition) within `dedup_seconds` and delivers
//! the others with exponential backoff (1 s doubling to 60 s, `retries` retries), at most 4
//! at a time: a sink that fails holds up neither enforcement nor the other sink.

use std::{sync::Arc, time::Duration};

use crate::notify::{self, Delivery, Payload, Sink, Target};

use super::{metrics::StorageMetrics, policy::Notifications, state::Phase};

/// One transition as notified.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub role: String,
    pub from: Phase,
    pub to: Phase,
    /// `record`, `lock` or `unlock`.
    pub action: &'static str,
    /// What the enforcer did: `logged`, `applied: …`, `refused: …`, `failed: …`,
    /// `dry run`.
    pub result: String,
    pub reason: &'static str,
    pub usage_bytes: u64,
    pub soft_limit_bytes: u64,
    pub hard_limit_bytes: u64,
    /// Seconds left in the hard grace period, when one started.
    pub grace_seconds: Option<u64>,
    /// RFC 3339, UTC.
    pub at: String,
    /// One line for people (the Slack text).
    pub message: String,
}

impl Event {
    /// The Slack/JSON line: `pgmon storage: role "alice" soft → hard: 12.0 MiB of 10.0 MiB
    /// hard (soft 5.0 MiB); locked in 600 s unless it shrinks`.
    pub fn describe(&self) -> String {
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20));
        let tail = match (self.to, self.grace_seconds) {
            (Phase::Hard, Some(s)) => format!("; locked in {s} s unless it shrinks"),
            (Phase::Locked, _) => "; sessions terminated, NOLOGIN".to_owned(),
            _ => String::new(),
        };
        format!(
            "pgmon storage: role \"{}\" {} → {} ({}): {} of {} hard (soft {}){tail} [{}]",
            self.role,
            self.from.as_str(),
            self.to.as_str(),
            self.reason,
            mib(self.usage_bytes),
            mib(self.hard_limit_bytes),
            mib(self.soft_limit_bytes),
            self.result
        )
    }
}

impl Event {
    /// The payload of every sink: the key is (role, from, to), the JSON the event itself.
    /// `link`: the UI's Storage quotas page under `metrics.external_url`, when set.
    pub fn payload(&self, external_url: Option<&str>) -> Payload {
        Payload {
            link: crate::ui::link(external_url, "quotas"),
            key: format!("{}|{}|{}", self.role, self.from.as_str(), self.to.as_str()),
            text: self.message.clone(),
            details: self.message.clone(),
            json: serde_json::to_value(self).unwrap_or_default(),
        }
    }
}

/// The sending half; cheap to clone.
#[derive(Clone)]
pub struct Notifier(notify::Notifier, Option<String>);

impl Notifier {
    /// Starts one delivery task per configured sink on the current runtime; without a sink,
    /// [`Notifier::send`] does nothing.
    /// `external_url` (`metrics.external_url`) makes each notification link to the UI's
    /// Storage quotas page.
    pub fn start(
        config: &Notifications,
        metrics: StorageMetrics,
        external_url: Option<String>,
    ) -> Self {
        let sinks = [
            ("slack", &config.slack_webhook_url),
            ("webhook", &config.webhook_url),
        ]
        .into_iter()
        .filter_map(|(name, url)| {
            let uri: hyper::Uri = url.as_deref()?.parse().ok()?;
            let target = if name == "slack" {
                Target::Slack(uri)
            } else {
                Target::Webhook(uri)
            };
            Some(Sink {
                name: name.to_owned(),
                target,
            })
        })
        .collect();
        let delivery = Delivery {
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            queue: config.queue,
            dedup: Duration::from_secs(config.dedup_seconds),
            max_per_minute: 0,
            rate_window: Duration::from_secs(60),
        };
        let count: notify::Count = Arc::new(move |sink, result| metrics.notification(sink, result));
        Self(
            notify::Notifier::start(sinks, &delivery, count),
            external_url,
        )
    }

    /// Queues `event` for every sink; never waits.
    pub fn send(&self, event: Event) {
        self.0.send(event.payload(self.1.as_deref()));
    }
}
