//! Notifications of storage transitions: a Slack incoming webhook (`{"text": …}`, Slack's
//! documented payload) and a generic JSON webhook, over hyper-util's client with rustls
//! (Slack's webhooks are HTTPS only; rustls is pure Rust, uses the system's CA store
//! through rustls-native-certs, and needs no OpenSSL on the host).
//!
//! Enforcement never waits for a webhook: [`Notifier::send`] puts the event on a bounded
//! queue (`storage.notifications.queue`) and returns; when the queue is full the event is
//! dropped and counted. A task takes events off the queue, drops those already sent for
//! the same (role, transition) within `dedup_seconds`, and delivers each one with
//! exponential backoff (1 s doubling to 60 s, `retries` retries), at most 4 deliveries at a
//! time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::{Semaphore, mpsc};

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

/// The sending half; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Event>>,
    sinks: Vec<&'static str>,
    metrics: StorageMetrics,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Sink {
    name: &'static str,
    uri: hyper::Uri,
}

impl Notifier {
    /// Starts the delivery task on the current runtime when a sink is configured; without
    /// one, [`Notifier::send`] does nothing.
    pub fn start(config: &Notifications, metrics: StorageMetrics) -> Self {
        let mut sinks = Vec::new();
        for (name, url) in [
            ("slack", &config.slack_webhook_url),
            ("webhook", &config.webhook_url),
        ] {
            if let Some(uri) = url.as_deref().and_then(|u| u.parse().ok()) {
                sinks.push(Sink { name, uri });
            }
        }
        let names = sinks.iter().map(|s| s.name).collect();
        if sinks.is_empty() {
            return Self {
                tx: None,
                sinks: names,
                metrics,
            };
        }
        let client = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => Client::builder(TokioExecutor::new())
                .build(b.https_or_http().enable_http1().build()),
            Err(e) => {
                tracing::error!(error = %e, "no CA certificates for the storage webhooks; notifications off");
                return Self {
                    tx: None,
                    sinks: names,
                    metrics,
                };
            }
        };
        let (tx, rx) = mpsc::channel(config.queue);
        tokio::spawn(deliver(rx, client, sinks, config.clone(), metrics.clone()));
        Self {
            tx: Some(tx),
            sinks: names,
            metrics,
        }
    }

    /// Queues `event` for every sink; never waits.
    pub fn send(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            for sink in &self.sinks {
                self.metrics.notification(sink, "dropped");
            }
        }
    }
}

async fn deliver(
    mut rx: mpsc::Receiver<Event>,
    client: HttpsClient,
    sinks: Vec<Sink>,
    config: Notifications,
    metrics: StorageMetrics,
) {
    let sinks = Arc::new(sinks);
    let in_flight = Arc::new(Semaphore::new(4));
    let mut last_sent: HashMap<(String, Phase, Phase), tokio::time::Instant> = HashMap::new();
    let dedup = Duration::from_secs(config.dedup_seconds);
    while let Some(event) = rx.recv().await {
        let key = (event.role.clone(), event.from, event.to);
        let now = tokio::time::Instant::now();
        if last_sent.get(&key).is_some_and(|t| now - *t < dedup) {
            for s in sinks.iter() {
                metrics.notification(s.name, "deduplicated");
            }
            continue;
        }
        last_sent.insert(key, now);
        if last_sent.len() > 100_000 {
            last_sent.retain(|_, t| now - *t < dedup);
        }
        for i in 0..sinks.len() {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let (client, sinks, metrics, event) = (
                client.clone(),
                sinks.clone(),
                metrics.clone(),
                event.clone(),
            );
            let (timeout, retries) = (Duration::from_millis(config.timeout_ms), config.retries);
            tokio::spawn(async move {
                let sink = &sinks[i];
                let body = match sink.name {
                    "slack" => serde_json::json!({ "text": event.message }),
                    _ => serde_json::to_value(&event).unwrap_or_default(),
                };
                let body = Bytes::from(body.to_string());
                let once = || post(&client, &sink.uri, body.clone(), timeout);
                let result = once
                    .retry(
                        ExponentialBuilder::new()
                            .with_min_delay(Duration::from_secs(1))
                            .with_max_delay(Duration::from_secs(60))
                            .with_jitter()
                            .with_max_times(retries),
                    )
                    .notify(|e: &String, wait| {
                        tracing::warn!(sink = sink.name, error = %e, retry_in = ?wait, "storage notification failed");
                    })
                    .await;
                match result {
                    Ok(()) => metrics.notification(sink.name, "sent"),
                    Err(e) => {
                        tracing::error!(sink = sink.name, role = %event.role, error = %e, "storage notification given up");
                        metrics.notification(sink.name, "failed");
                    }
                }
                drop(permit);
            });
        }
    }
}

async fn post(
    client: &HttpsClient,
    uri: &hyper::Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(), String> {
    let req = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "pgmon-agent")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| crate::capture::error_chain(&e))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", resp.status()))
    }
}
