//! `alerts.notifiers` and `alerts.delivery`: where notifications go and how they are
//! delivered.

use serde::Deserialize;

use crate::notify::email::EmailConfig;

/// One notifier.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierConfig {
    /// A Slack incoming webhook (`https://hooks.slack.com/services/…`): `{"text": …}`.
    Slack(WebhookConfig),
    /// Any http(s) URL taking a JSON POST: one object per firing or resolved alert.
    Webhook(WebhookConfig),
    /// Email over SMTP.
    Email(EmailConfig),
}

/// `slack:` or `webhook:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// http:// or https:// URL.
    pub url: String,
    /// The `sink` label (default `slack` or `webhook`).
    #[serde(default)]
    pub name: Option<String>,
}

/// `alerts.delivery`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Per attempt, milliseconds (default 5000).
    pub timeout_ms: u64,
    /// Attempts after the first, with exponential backoff from 1 s to 60 s (default 5).
    pub retries: usize,
    /// Notifications waiting per notifier at most; beyond, new ones are dropped and
    /// counted (`pgmon_alert_notifications_total{result="dropped"}`) (default 100).
    pub queue: usize,
    /// Notifications per notifier and minute at most; the excess is counted
    /// (`result="rate_limited"`) and summed up in one message when the minute ends
    /// (default 20; 0: no limit).
    pub max_per_minute: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            retries: 5,
            queue: 100,
            max_per_minute: 20,
        }
    }
}
