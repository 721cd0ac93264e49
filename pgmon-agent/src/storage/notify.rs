//! Notifications of storage transitions: a Slack incoming webhook (`{"text": …}`, Slack's
//! documented payload) and a generic JSON webhook, over hyper-util's client with rustls
//! (Slack's webhooks are HTTPS only; rustls is pure Rust, uses the system's CA store
//! through rustls-native-certs, and needs no OpenSSL on the host).
//!
//! Enforcement never waits for a webhook: [`Notifier::send`] puts the event on each
//! sink's bounded queue (`storage.notifications.queue`) and returns; when a queue is full
//! the event is dropped for that sink and counted. Each sink has its own task, which drops
//! events already sent for the same (role, transition) within `dedup_seconds` and delivers
//! the others with exponential backoff (1 s doubling to 60 s, `retries` retries), at most 4
//! at a time: a sink that fails holds up neither enforcement nor the other sink.

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
    /// One queue per sink.
    sinks: Vec<(&'static str, mpsc::Sender<Event>)>,
    metrics: StorageMetrics,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

impl Notifier {
    /// Starts one delivery task per configured sink on the current runtime; without a sink,
    /// [`Notifier::send`] does nothing.
    pub fn start(config: &Notifications, metrics: StorageMetrics) -> Self {
        let mut sinks = Vec::new();
        let wanted: Vec<(&'static str, hyper::Uri)> = [
            ("slack", &config.slack_webhook_url),
            ("webhook", &config.webhook_url),
        ]
        .into_iter()
        .filter_map(|(name, url)| Some((name, url.as_deref()?.parse().ok()?)))
        .collect();
        if wanted.is_empty() {
            return Self { sinks, metrics };
        }
        let client: HttpsClient = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
        {
            Ok(b) => Client::builder(TokioExecutor::new())
                .build(b.https_or_http().enable_http1().build()),
            Err(e) => {
                tracing::error!(error = %e, "no CA certificates for the storage webhooks; notifications off");
                return Self { sinks, metrics };
            }
        };
        for (name, uri) in wanted {
            let (tx, rx) = mpsc::channel(config.queue);
            tokio::spawn(deliver(
                rx,
                client.clone(),
                name,
                uri,
                config.clone(),
                metrics.clone(),
            ));
            sinks.push((name, tx));
        }
        Self { sinks, metrics }
    }

    /// Queues `event` for every sink; never waits.
    pub fn send(&self, event: Event) {
        for (name, tx) in &self.sinks {
            if tx.try_send(event.clone()).is_err() {
                self.metrics.notification(name, "dropped");
            }
        }
    }
}

async fn deliver(
    mut rx: mpsc::Receiver<Event>,
    client: HttpsClient,
    sink: &'static str,
    uri: hyper::Uri,
    config: Notifications,
    metrics: StorageMetrics,
) {
    let in_flight = Arc::new(Semaphore::new(4));
    let mut last_sent: HashMap<(String, Phase, Phase), tokio::time::Instant> = HashMap::new();
    let dedup = Duration::from_secs(config.dedup_seconds);
    let (timeout, retries) = (Duration::from_millis(config.timeout_ms), config.retries);
    while let Some(event) = rx.recv().await {
        let key = (event.role.clone(), event.from, event.to);
        let now = tokio::time::Instant::now();
        if last_sent.get(&key).is_some_and(|t| now - *t < dedup) {
            metrics.notification(sink, "deduplicated");
            continue;
        }
        last_sent.insert(key, now);
        if last_sent.len() > 100_000 {
            last_sent.retain(|_, t| now - *t < dedup);
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (client, uri, metrics) = (client.clone(), uri.clone(), metrics.clone());
        tokio::spawn(async move {
            let body = match sink {
                "slack" => serde_json::json!({ "text": event.message }),
                _ => serde_json::to_value(&event).unwrap_or_default(),
            };
            let body = Bytes::from(body.to_string());
            let once = || post(&client, &uri, body.clone(), timeout);
            let result = once
                .retry(
                    ExponentialBuilder::new()
                        .with_min_delay(Duration::from_secs(1))
                        .with_max_delay(Duration::from_secs(60))
                        .with_jitter()
                        .with_max_times(retries),
                )
                .notify(|e: &String, wait| {
                    tracing::warn!(sink, error = %e, retry_in = ?wait, "storage notification failed");
                })
                .await;
            match result {
                Ok(()) => metrics.notification(sink, "sent"),
                Err(e) => {
                    tracing::error!(sink, role = %event.role, error = %e, "storage notification given up");
                    metrics.notification(sink, "failed");
                }
            }
            drop(permit);
        });
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
