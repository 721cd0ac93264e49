//! `storage:` in the policy file: per-role soft and hard limits on the bytes a role owns,
//! grace periods, the mode presets, exemptions, notifications and the node_exporter
//! textfile.

use std::path::PathBuf;

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Deserializer};

use crate::budget::policy::always_exempt;

/// A number of bytes. In YAML an integer (bytes) or a string with a unit: `kB`, `MB`,
/// `GB`, `TB` are multiples of 1024 as in PostgreSQL's memory settings (PostgreSQL docs,
/// section 19.1.1 "Parameter Names and Values"); `KiB`, `MiB`, `GiB`, `TiB` say the same
/// unambiguously; `B` is bytes. `"5MB"`, `"10 GiB"`, `1048576`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `text` as described on [`ByteSize`]; the error says what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (t[..split].trim(), t[split..].trim());
        let n: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (e.g. 1048576, \"5MB\", \"10 GiB\")"))?;
        let k: u64 = match unit {
            "" | "B" => 1,
            "kB" | "KB" | "KiB" => 1 << 10,
            "MB" | "MiB" => 1 << 20,
            "GB" | "GiB" => 1 << 30,
            "TB" | "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?} (use B, kB, MB, GB, TB; 1024-based)"
                ));
            }
        };
        let bytes = n * k as f64;
        if !(bytes.is_finite() && bytes >= 0.0 && bytes < 2f64.powi(63)) {
            return Err(format!("{text:?} is out of range"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: bytes, or a string like \"5MB\" or \"10 GiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The two deployments the seed design names, as presets of [`StoragePolicy`]'s tuning
/// fields; `usage_ttl_seconds` and `termination_batch` override them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// A few heavy roles: usage recounted at most every 2 s per role, sessions terminated
    /// in batches of 500.
    EnterpriseDb,
    /// Tens of thousands of light roles: at most every 15 s per role, batches of 100
    /// (default).
    #[default]
    SharedHosting,
}

impl Preset {
    /// Usage cache TTL of the preset, milliseconds (issue 4: 2 s and 15 s).
    pub fn usage_ttl_ms(self) -> u64 {
        match self {
            Preset::EnterpriseDb => 2_000,
            Preset::SharedHosting => 15_000,
        }
    }

    /// Termination batch of the preset (issue 4: 500 and 100).
    pub fn termination_batch(self) -> u32 {
        match self {
            Preset::EnterpriseDb => 500,
            Preset::SharedHosting => 100,
        }
    }
}

/// One role → limits rule; the first rule that matches wins.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLimits {
    /// A role name, or a glob (`tenant_*`, `app_?`, `[ab]*`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Past it (usage > soft_limit): a warning. Required.
    pub soft_limit: ByteSize,
    /// Past it (usage > hard_limit): the grace period starts, then the lock. Required,
    /// ≥ soft_limit.
    pub hard_limit: ByteSize,
    /// Overrides `storage.hard_grace_period` for these roles, seconds.
    #[serde(default)]
    pub hard_grace_period: Option<u64>,
    /// Overrides `storage.unlock_grace_period` for these roles, seconds.
    #[serde(default)]
    pub unlock_grace_period: Option<u64>,
    /// Overrides `storage.manual_unlock` for these roles.
    #[serde(default)]
    pub manual_unlock: Option<bool>,
}

/// `storage.default_limits`: the limits of roles no rule matches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultLimits {
    pub soft_limit: ByteSize,
    pub hard_limit: ByteSize,
    #[serde(default)]
    pub hard_grace_period: Option<u64>,
    #[serde(default)]
    pub unlock_grace_period: Option<u64>,
    #[serde(default)]
    pub manual_unlock: Option<bool>,
}

/// `storage.notifications`: where transitions are sent, besides the log and the audit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// A Slack incoming webhook (`https://hooks.slack.com/services/…`): one message per
    /// transition, `{"text": …}`. None: no Slack (default).
    pub slack_webhook_url: Option<String>,
    /// Any URL (http or https) that takes a JSON POST: one object per transition with
    /// `role, from, to, action, result, usage_bytes, soft_limit_bytes, hard_limit_bytes,
    /// at` (RFC 3339) and `message`. None: none (default).
    pub webhook_url: Option<String>,
    /// Per attempt, milliseconds (default 5000).
    pub timeout_ms: u64,
    /// Attempts after the first, with exponential backoff from 1 s to 60 s (default 5).
    pub retries: usize,
    /// Notifications waiting to be sent at most; beyond, new ones are dropped and counted
    /// (`pgmon_storage_notifications_total{result="dropped"}`), so a failing webhook never
    /// holds up enforcement (default 1000).
    pub queue: usize,
    /// The same (role, transition) is sent once per this many seconds at most (default
    /// 3600): a role flapping around a limit does not flood the channel.
    pub dedup_seconds: u64,
}

impl Default for Notifications {
    fn default() -> Self {
        Self {
            slack_webhook_url: None,
            webhook_url: None,
            timeout_ms: 5_000,
            retries: 5,
            queue: 1_000,
            dedup_seconds: 3_600,
        }
    }
}

/// `storage:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoragePolicy {
    /// Watch and enforce storage quotas at all (default false). Needs
    /// sql/004_storage.sql in every database (the agent reports where it is missing).
    pub enabled: bool,
    /// `shared_hosting` (default) or `enterprise_db`: see [`Preset`].
    pub mode: Preset,
    /// Overrides the preset: a role's usage is recounted at most this often after
    /// notifications, seconds.
    pub usage_ttl_seconds: Option<f64>,
    /// Overrides the preset: sessions terminated per batch when a role is locked.
    pub termination_batch: Option<u32>,
    /// Pause between two batches of terminations, milliseconds (default 100, at most
    /// 10 000): a role with a thousand sessions is ended over a second, not in one spike
    /// of backend exits.
    pub termination_pause_ms: u64,
    /// A role whose last counted usage is within this fraction of its hard limit (at least
    /// `(1 − margin) × hard_limit` bytes) is recounted on every notification, the usage
    /// TTL notwithstanding; the TTL throttles only roles farther away (default 0.2; 0..=1,
    /// 1 recounts every role on every notification).
    pub near_limit_margin: f64,
    /// Decide, audit, log and notify, but neither lock nor unlock (default false).
    pub dry_run: bool,
    /// Role → limits rules, first match wins.
    pub roles: Vec<RoleLimits>,
    /// Limits of roles no rule matches; none (default) = such roles are not limited.
    pub default_limits: Option<DefaultLimits>,
    /// Roles never limited (names or globs). Superusers, replication roles, `pgmon*` and
    /// `pg_*` always are exempt, whatever this list says.
    pub exempt: Vec<String>,
    /// Seconds a role may stay past its hard limit before it is locked (default 600, the
    /// seed design's example; 0 locks at once).
    pub hard_grace_period: u64,
    /// Seconds a locked role must stay under its hard limit before it is unlocked
    /// (default 300, the seed design's example).
    pub unlock_grace_period: u64,
    /// Locked roles stay locked until `pgmon-agent unlock ROLE` (default false).
    pub manual_unlock: bool,
    /// Full recount of every database, seconds (default 60): the safety net for what no
    /// notification tells (VACUUM FULL, growth inside an uncommitted transaction, a
    /// database without sql/004_storage.sql).
    pub recount_interval_seconds: u64,
    /// How often `pg_database` and `pg_roles` are listed, seconds (default 30): new
    /// databases get a listener, new roles their limits.
    pub refresh_interval_seconds: u64,
    pub notifications: Notifications,
    /// Also write the storage metrics to this file (atomically: a temporary file in the
    /// same directory, then rename(2)) for node_exporter's textfile collector. Absolute
    /// path ending in `.prom`; none by default.
    pub textfile: Option<PathBuf>,
}

impl Default for StoragePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: Preset::SharedHosting,
            usage_ttl_seconds: None,
            termination_batch: None,
            termination_pause_ms: 100,
            near_limit_margin: 0.2,
            dry_run: false,
            roles: Vec::new(),
            default_limits: None,
            exempt: Vec::new(),
            hard_grace_period: 600,
            unlock_grace_period: 300,
            manual_unlock: false,
            recount_interval_seconds: 60,
            refresh_interval_seconds: 30,
            notifications: Notifications::default(),
            textfile: None,
        }
    }
}

/// One role's resolved limits (bytes, milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub soft: u64,
    pub hard: u64,
    pub hard_grace_ms: u64,
    pub unlock_grace_ms: u64,
    pub manual_unlock: bool,
}

/// The policy with its globs compiled and its presets resolved.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub policy: StoragePolicy,
    rules: Vec<(GlobMatcher, Limits)>,
    default: Option<Limits>,
    exempt: Vec<GlobMatcher>,
    /// Usage cache TTL, milliseconds.
    pub usage_ttl_ms: u64,
    /// Termination batch.
    pub termination_batch: u32,
}

fn check_url(field: &str, url: &Option<String>) -> Result<(), (String, String)> {
    let Some(u) = url else { return Ok(()) };
    let uri: hyper::Uri = u
        .parse()
        .map_err(|e| (field.to_owned(), format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err((
            field.to_owned(),
            "must be an http:// or https:// URL".into(),
        )),
    }
}

impl StoragePolicy {
    /// Checks ranges and references and compiles the globs; the error is
    /// `(field, message)`, the field's dotted path.
    pub fn compile(&self) -> Result<Compiled, (String, String)> {
        let glob = |field: String, p: &str| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| (field, e.to_string()))
        };
        let resolve = |field: String,
                       soft: ByteSize,
                       hard: ByteSize,
                       hg: Option<u64>,
                       ug: Option<u64>,
                       mu: Option<bool>| {
            if hard.0 == 0 {
                return Err((format!("{field}.hard_limit"), "must be > 0".to_owned()));
            }
            if soft > hard {
                return Err((
                    format!("{field}.soft_limit"),
                    format!("{} is above hard_limit {}", soft.0, hard.0),
                ));
            }
            Ok(Limits {
                soft: soft.0,
                hard: hard.0,
                hard_grace_ms: hg.unwrap_or(self.hard_grace_period).saturating_mul(1000),
                unlock_grace_ms: ug.unwrap_or(self.unlock_grace_period).saturating_mul(1000),
                manual_unlock: mu.unwrap_or(self.manual_unlock),
            })
        };
        let mut rules = Vec::new();
        for (i, r) in self.roles.iter().enumerate() {
            let field = format!("storage.roles[{i}]");
            let limits = resolve(
                field.clone(),
                r.soft_limit,
                r.hard_limit,
                r.hard_grace_period,
                r.unlock_grace_period,
                r.manual_unlock,
            )?;
            rules.push((glob(format!("{field}.match"), &r.pattern)?, limits));
        }
        let default = match &self.default_limits {
            Some(d) => Some(resolve(
                "storage.default_limits".into(),
                d.soft_limit,
                d.hard_limit,
                d.hard_grace_period,
                d.unlock_grace_period,
                d.manual_unlock,
            )?),
            None => None,
        };
        let exempt = self
            .exempt
            .iter()
            .enumerate()
            .map(|(i, p)| glob(format!("storage.exempt[{i}]"), p))
            .collect::<Result<_, _>>()?;
        let usage_ttl_ms = match self.usage_ttl_seconds {
            Some(s) if (0.0..=3600.0).contains(&s) => (s * 1000.0).round() as u64,
            Some(_) => {
                return Err((
                    "storage.usage_ttl_seconds".into(),
                    "must be within 0..=3600".into(),
                ));
            }
            None => self.mode.usage_ttl_ms(),
        };
        if !(0.0..=1.0).contains(&self.near_limit_margin) {
            return Err((
                "storage.near_limit_margin".into(),
                "must be within 0..=1 (a fraction of the hard limit)".into(),
            ));
        }
        let termination_batch = match self.termination_batch {
            Some(b) if (1..=10_000).contains(&b) => b,
            Some(_) => {
                return Err((
                    "storage.termination_batch".into(),
                    "must be within 1..=10000".into(),
                ));
            }
            None => self.mode.termination_batch(),
        };
        if self.termination_pause_ms > 10_000 {
            return Err((
                "storage.termination_pause_ms".into(),
                "must be within 0..=10000".into(),
            ));
        }
        for (field, v) in [
            (
                "storage.recount_interval_seconds",
                self.recount_interval_seconds,
            ),
            (
                "storage.refresh_interval_seconds",
                self.refresh_interval_seconds,
            ),
        ] {
            if !(1..=86_400).contains(&v) {
                return Err((field.into(), "must be within 1..=86400".into()));
            }
        }
        let n = &self.notifications;
        check_url(
            "storage.notifications.slack_webhook_url",
            &n.slack_webhook_url,
        )?;
        check_url("storage.notifications.webhook_url", &n.webhook_url)?;
        if !(100..=60_000).contains(&n.timeout_ms) {
            return Err((
                "storage.notifications.timeout_ms".into(),
                "must be within 100..=60000".into(),
            ));
        }
        if n.queue == 0 {
            return Err(("storage.notifications.queue".into(), "must be ≥ 1".into()));
        }
        if let Some(p) = &self.textfile
            && !(p.is_absolute() && p.extension().is_some_and(|e| e == "prom"))
        {
            return Err((
                "storage.textfile".into(),
                "must be an absolute path ending in .prom (node_exporter reads only those)".into(),
            ));
        }
        Ok(Compiled {
            policy: self.clone(),
            rules,
            default,
            exempt,
            usage_ttl_ms,
            termination_batch,
        })
    }
}

impl Compiled {
    /// The limits of `role`, or `None` when it is not limited: exempt (the list, or
    /// `protected`: the catalog marks it superuser or replication; or `pgmon*`/`pg_*`), or
    /// no rule matches and there are no default limits.
    pub fn limits_of(&self, role: &str, protected: bool) -> Option<Limits> {
        if protected || always_exempt(role) || self.exempt.iter().any(|g| g.is_match(role)) {
            return None;
        }
        self.rules
            .iter()
            .find(|(g, _)| g.is_match(role))
            .map(|(_, l)| *l)
            .or(self.default)
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
