//! Notifications, shared by storage quotas and alerts: a Slack incoming webhook
//! (`{"text": …}`, Slack's documented payload), a generic JSON webhook (the payload's own
//! JSON), and email over SMTP ([`email`]). Webhooks go through hyper-util's client with
//! rustls (Slack's webhooks are HTTPS only; rustls is pure Rust and reads the system's CA
//! store, so no OpenSSL on the host).
//!
//! Nothing that notifies ever waits for a sink: [`Notifier::send`] puts the payload on each
//! sink's bounded queue and returns; a full queue drops the payload for that sink and
//! counts it (`dropped`). Each sink has its own task, which
//! 1. drops a payload whose key it delivered within the dedup window (`deduplicated`),
//! 2. holds back what exceeds `max_per_minute` (`rate_limited`), and when that minute ends
//!    sends one summary saying how many were held back, with the first few lines,
//! 3. delivers the rest with exponential backoff (1 s doubling to 60 s, with jitter,
//!    `retries` retries; `sent` or, after the last, `failed`), at most 4 at a time,
//!
//! so a sink that hangs or fails holds up neither the caller nor the other sinks.

pub mod email;
pub mod limit;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{
    sync::{Semaphore, mpsc},
    time::Instant,
};

use limit::{Dedup, RateLimit, Suppressed};

/// Deliveries in flight per sink at most.
const IN_FLIGHT: usize = 4;

/// One notification, rendered for every kind of sink.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    /// What deduplication compares: the same key within the dedup window is sent once.
    pub key: String,
    /// One line for people: the Slack text and the email subject.
    pub text: String,
    /// Several lines for people: the email body.
    pub details: String,
    /// The body POSTed to a generic JSON webhook.
    pub json: serde_json::Value,
    /// The web UI's panel for it ([`crate::ui::link`] of `metrics.external_url`), when one
    /// is configured: Slack shows it after the text, email at the end of the body, and the
    /// webhook JSON carries it as `url`.
    pub link: Option<String>,
}

/// How every sink of one notifier delivers.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Per attempt (an HTTP request, or each SMTP command).
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: usize,
    /// Payloads waiting per sink at most (at least 1).
    pub queue: usize,
    /// The same key is delivered once per this window (zero: no deduplication).
    pub dedup: Duration,
    /// Payloads per sink and minute at most (0: no limit).
    pub max_per_minute: u32,
    /// The rate limit's window: a minute, save in tests.
    pub rate_window: Duration,
}

/// Where a sink sends.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Slack incoming webhook: `{"text": payload.text}`.
    Slack(hyper::Uri),
    /// Any URL taking a JSON POST: `payload.json`.
    Webhook(hyper::Uri),
    /// Email over SMTP.
    Email(Box<email::Mailer>),
}

/// One sink: its name (the `sink` label, bounded by the policy) and target.
#[derive(Clone, Debug)]
pub struct Sink {
    /// The `sink` label and the name in logs.
    pub name: String,
    /// Where it sends.
    pub target: Target,
}

/// `{sink, result}` of the notification counters (storage's and the alerts').
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct SinkLabels {
    /// The sink's name: `slack`, `webhook`, `email`, or the name the policy gives it.
    pub sink: String,
    /// `sent`, `failed` (after every retry), `dropped` (queue full), `deduplicated`,
    /// `rate_limited`.
    pub result: &'static str,
}

/// Counts one outcome of a sink: `(sink, result)` with result `sent`, `failed`,
/// `dropped`, `deduplicated` or `rate_limited`.
pub type Count = Arc<dyn Fn(&str, &'static str) + Send + Sync>;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The sending half; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    sinks: Vec<(Arc<str>, mpsc::Sender<Payload>)>,
    count: Count,
}

impl Notifier {
    /// Starts one task per sink on the current tokio runtime (call inside it). Webhook
    /// sinks are left out, with an error in the log, when the system has no CA store.
    pub fn start(sinks: Vec<Sink>, delivery: &Delivery, count: Count) -> Self {
        let needs_http = sinks
            .iter()
            .any(|s| matches!(s.target, Target::Slack(_) | Target::Webhook(_)));
        let client: Option<HttpsClient> = needs_http
            .then(|| {
                crate::util::tls_provider();
                hyper_rustls::HttpsConnectorBuilder::new().with_native_roots()
            })
            .and_then(|b| match b {
                Ok(b) => Some(
                    Client::builder(TokioExecutor::new())
                        .build(b.https_or_http().enable_http1().build()),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "no CA certificates: webhook notifications off");
                    None
                }
            });
        let mut out = Vec::new();
        for sink in sinks {
            let http = !matches!(sink.target, Target::Email(_));
            if http && client.is_none() {
                continue;
            }
            let (tx, rx) = mpsc::channel(delivery.queue.max(1));
            let name: Arc<str> = sink.name.into();
            tokio::spawn(deliver(
                rx,
                Task {
                    name: name.clone(),
                    target: Arc::new(sink.target),
                    client: client.clone(),
                    delivery: delivery.clone(),
                    count: count.clone(),
                },
            ));
            out.push((name, tx));
        }
        Self { sinks: out, count }
    }

    /// Queues `payload` for every sink; never waits.
    pub fn send(&self, payload: Payload) {
        for (name, tx) in &self.sinks {
            if tx.try_send(payload.clone()).is_err() {
                (self.count)(name, "dropped");
            }
        }
    }

    /// The sinks' names.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|(n, _)| n.to_string()).collect()
    }
}

/// What a sink's task owns.
#[derive(Clone)]
struct Task {
    name: Arc<str>,
    target: Arc<Target>,
    client: Option<HttpsClient>,
    delivery: Delivery,
    count: Count,
}

async fn deliver(mut rx: mpsc::Receiver<Payload>, task: Task) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut dedup = Dedup::new(task.delivery.dedup);
    let mut limit = RateLimit::new(task.delivery.max_per_minute, task.delivery.rate_window);
    loop {
        let due = limit.summary_due().map(Instant::from_std);
        let payload = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => Some(p),
                None => return,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => None,
        };
        let now = std::time::Instant::now();
        let mut batch = Vec::with_capacity(2);
        if let Some(s) = limit.take_summary(now) {
            batch.push(summary(&task, &s));
        }
        if let Some(p) = payload {
            if !dedup.fresh(&p.key, now) {
                (task.count)(&task.name, "deduplicated");
            } else if !limit.admit(&p.text, now) {
                (task.count)(&task.name, "rate_limited");
            } else {
                dedup.record(&p.key, now);
                batch.push(p);
            }
        }
        for p in batch {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let task = task.clone();
            tokio::spawn(async move {
                send_with_retries(&task, &p).await;
                drop(permit);
            });
        }
    }
}

/// The message that sums up what the rate limit held back in one minute.
fn summary(task: &Task, s: &Suppressed) -> Payload {
    let text = format!(
        "pgmon: {} notification(s) to {} held back by its rate limit ({} a minute) in the last minute",
        s.count, task.name, task.delivery.max_per_minute
    );
    let mut details = format!("{text}. The first:\n");
    for e in &s.examples {
        details.push_str("- ");
        details.push_str(e);
        details.push('\n');
    }
    Payload {
        key: String::new(),
        json: serde_json::json!({
            "status": "suppressed",
            "sink": &*task.name,
            "suppressed": s.count,
            "max_per_minute": task.delivery.max_per_minute,
            "examples": s.examples,
            "message": text,
        }),
        text,
        details,
        link: None,
    }
}

async fn send_with_retries(task: &Task, p: &Payload) {
    let sink = &*task.name;
    let once = || send_once(task, p);
    let result = once
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(60))
                .with_jitter()
                .with_max_times(task.delivery.retries),
        )
        .notify(|e: &String, wait| {
            tracing::warn!(sink, error = %e, retry_in = ?wait, "notification failed");
        })
        .await;
    match result {
        Ok(()) => (task.count)(sink, "sent"),
        Err(e) => {
            tracing::error!(sink, text = %p.text, error = %e, "notification given up");
            (task.count)(sink, "failed");
        }
    }
}

async fn send_once(task: &Task, p: &Payload) -> Result<(), String> {
    let timeout = task.delivery.timeout;
    let (uri, body) = match &*task.target {
        Target::Slack(uri) => {
            let text = match &p.link {
                Some(url) => format!("{} <{url}|open in pgmon>", p.text),
                None => p.text.clone(),
            };
            (uri, serde_json::json!({ "text": text }).to_string())
        }
        Target::Webhook(uri) => {
            let mut json = p.json.clone();
            if let (Some(url), Some(o)) = (&p.link, json.as_object_mut()) {
                o.insert("url".into(), url.clone().into());
            }
            (uri, json.to_string())
        }
        Target::Email(mailer) => return mailer.send(p).await,
    };
    let Some(client) = &task.client else {
        return Err("no HTTPS client".into());
    };
    let req = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "pgmon-agent")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| crate::util::error_chain(&e))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", resp.status()))
    }
}
