//! The YAML policy file (`pgmon-agent run --config FILE`, `pgmon-agent check-config FILE`).
//!
//! Every field's doc comment is its user documentation; `pgmon.example.yaml` at the
//! repository root shows each one with its default. Unknown fields are refused, and every
//! error names the file, the line and column, and the field's path.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The PostgreSQL cluster to watch.
    pub cluster: ClusterConfig,
    /// Kernel capture settings.
    #[serde(default)]
    pub capture: crate::capture::config::CaptureConfig,
    /// Normalization and per-statement statistics.
    #[serde(default)]
    pub query: crate::query::config::QueryConfig,
    /// What pgmon shows of statement texts.
    #[serde(default)]
    pub security: crate::query::config::SecurityConfig,
    /// The HTTP endpoint (`/metrics`, `/healthz`, `/api/v1/*`, the web UI); `http:` is
    /// accepted for the same section.
    #[serde(default, alias = "http")]
    pub metrics: crate::http::MetricsConfig,
    /// Generic-plan cost estimates (the cost worker).
    #[serde(default)]
    pub cost: crate::cost::CostConfig,
    /// Per-role query-cost budgets and the escalation ladder.
    #[serde(default)]
    pub budgets: crate::budget::policy::BudgetPolicy,
    /// The health pollers.
    #[serde(default)]
    pub health: crate::health::HealthConfig,
    /// Opt-in session cleanup (idle in transaction, long statements, lock blockers, idle
    /// sessions past a connection threshold).
    #[serde(default)]
    pub cleanup: crate::cleanup::CleanupConfig,
    /// The alert engine, its notifiers and the catalog's thresholds (which
    /// `pgmon-agent check` uses too).
    #[serde(default)]
    pub alerts: crate::alerts::AlertsConfig,
    /// Per-role storage quotas (soft and hard limits on the bytes each role owns).
    #[serde(default)]
    pub storage: crate::storage::policy::StoragePolicy,
    /// How long `pgmon.audit` keeps its rows.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
}

/// Which cluster pgmon watches, and how it reaches it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's data directory. Its `postmaster.pid` names the postmaster whose
    /// children (the backends) are captured; every other process, other clusters on the
    /// same host included, is ignored. Required.
    pub data_directory: PathBuf,
    /// libpq keyword/value connection string of the monitor connection, used to attribute
    /// connections that were open before the agent started (`pg_stat_activity`). The role
    /// needs `pg_monitor` (or `pg_read_all_stats`). `application_name` is forced to
    /// `pgmon`, so the agent's own sessions are never counted as traffic.
    /// Default: `host=/var/run/postgresql user=pgmon dbname=postgres`.
    #[serde(default = "default_connection")]
    pub connection: String,
    /// A file holding the monitor role's password (the whole file, a trailing newline
    /// aside), read at each connect so a rotated secret is picked up; used when
    /// `connection` has no `password`. Without either, libpq's password file is read
    /// (`passfile` in `connection`, else `PGPASSFILE`, else `~/.pgpass`: PostgreSQL docs
    /// 34.16). Default: none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A name for the cluster, put on every series of `/metrics` as `cluster="NAME"`, to
    /// tell clusters apart in one Prometheus (1 to 128 printable characters; read at
    /// start, a reload does not change it). None by default: no `cluster` label.
    #[serde(default)]
    pub name: Option<String>,
}

impl ClusterConfig {
    /// The monitor connection: `connection` parsed ([`crate::db::monitor_config`]), with
    /// `password_file`.
    pub fn monitor(&self) -> Result<crate::db::DbConfig, crate::db::DbError> {
        Ok(crate::db::monitor_config(&self.connection)?
            .with_password_file(self.password_file.clone()))
    }
}

fn default_connection() -> String {
    "host=/var/run/postgresql user=pgmon dbname=postgres".to_owned()
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax error, or a field of the wrong type, unknown, or missing.
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Parse {
        path: PathBuf,
        /// 1-based line, 0 when the parser gave none.
        line: usize,
        /// 1-based column, 0 when the parser gave none.
        column: usize,
        /// Dotted path of the field, `(top level)` for the document itself.
        field: String,
        message: String,
    },
    /// Parsed, but a value is out of range.
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Config {
    /// Reads the policy file at `path`, applies the [`ENV_OVERRIDES`] set in the
    /// environment, and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with_env(path, &text, |name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(path, text, |_| None)
    }

    /// [`Config::parse`], with the [`ENV_OVERRIDES`] that `env` gives replacing the file's
    /// values (an error in one names the variable).
    fn parse_with_env(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let de = yaml_serde::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." || p.is_empty() => "(top level)".to_owned(),
                p => p,
            };
            let inner = e.into_inner();
            let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
            let message = strip_path(&strip_location(&inner.to_string()), &field);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                field,
                message,
            }
        })?;
        let mut config = config;
        for (name, field) in ENV_OVERRIDES {
            let Some(value) = env(name) else { continue };
            match field {
                "cluster.connection" => config.cluster.connection = value,
                "cluster.password_file" => config.cluster.password_file = Some(value.into()),
                _ => config.cost.connection = Some(value),
            }
            tracing::info!(
                variable = name,
                field,
                "policy value taken from the environment"
            );
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        let c = &self.capture;
        if !c.ring_buffer_bytes.is_power_of_two() || c.ring_buffer_bytes < (1 << 20) {
            return Err(invalid(
                "capture.ring_buffer_bytes",
                format!("{} is not a power of two ≥ 1048576", c.ring_buffer_bytes),
            ));
        }
        let per_call = pgmon_common::MIN_BYTES_PER_CALL..=pgmon_common::MAX_BYTES_PER_CALL;
        if !per_call.contains(&c.max_bytes_per_call) {
            return Err(invalid(
                "capture.max_bytes_per_call",
                format!(
                    "{} is outside {}..={}",
                    c.max_bytes_per_call,
                    per_call.start(),
                    per_call.end()
                ),
            ));
        }
        if !(1..=1000).contains(&c.drain_interval_ms) {
            return Err(invalid(
                "capture.drain_interval_ms",
                format!("{} is outside 1..=1000", c.drain_interval_ms),
            ));
        }
        if c.max_message_bytes < 8192 {
            return Err(invalid(
                "capture.max_message_bytes",
                format!("{} is below 8192", c.max_message_bytes),
            ));
        }
        if self.query.top_k_fingerprints > self.query.max_fingerprints {
            return Err(invalid(
                "query.top_k_fingerprints",
                "is larger than query.max_fingerprints".to_owned(),
            ));
        }
        if let Err((field, message)) = self.cleanup.compile().map(|_| ()) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            });
        }
        if let Err((field, message)) = self.metrics.validate() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            });
        }
        if let Err((field, message)) = self.health.validate() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            });
        }
        if let Err((field, message)) = self.alerts.validate(&self.health) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            });
        }
        if let Err((field, message)) = self.budgets.compile() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            });
        }
        if let Err((field, message)) = self.storage.compile() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message,
            });
        }
        if self.audit.retention_days == 0 {
            return Err(invalid("audit.retention_days", "must be ≥ 1".to_owned()));
        }
        if !(self.cost.default_cost >= 0.0 && self.cost.default_cost.is_finite()) {
            return Err(invalid("cost.default_cost", "must be ≥ 0".to_owned()));
        }
        let from = |field: &str| {
            ENV_OVERRIDES
                .iter()
                .find(|(name, f)| *f == field && std::env::var_os(name).is_some())
                .map_or(field.to_owned(), |(name, _)| {
                    format!("{field} (from {name})")
                })
        };
        if let Err(e) = crate::db::monitor_config(&self.cluster.connection) {
            return Err(invalid(
                &from("cluster.connection"),
                crate::util::error_chain(&e),
            ));
        }
        if let Some(conninfo) = &self.cost.connection
            && let Err(e) = crate::db::monitor_config(conninfo)
        {
            return Err(invalid(
                &from("cost.connection"),
                crate::util::error_chain(&e),
            ));
        }
        if self.cluster.data_directory.as_os_str().is_empty() {
            return Err(invalid("cluster.data_directory", "is empty".to_owned()));
        }
        if let Some(name) = &self.cluster.name
            && (name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control))
        {
            return Err(invalid(
                "cluster.name",
                format!("{name:?} is not 1 to 128 printable characters"),
            ));
        }
        Ok(())
    }
}

/// Environment variables that replace a policy value, for containers whose policy file
/// is baked into the image: (variable, field). Read by [`Config::load`] (start-up and
/// each reload); the log names each one used.
pub const ENV_OVERRIDES: [(&str, &str); 3] = [
    ("PGMON_CLUSTER_CONNECTION", "cluster.connection"),
    ("PGMON_CLUSTER_PASSWORD_FILE", "cluster.password_file"),
    ("PGMON_COST_CONNECTION", "cost.connection"),
];

/// yaml_serde starts some messages with the enclosing mapping's path (`capture: unknown
/// field …`); the error already names the field, so drop a leading path that is a prefix
/// of it.
fn strip_path(message: &str, field: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && field.starts_with(head) => rest.to_owned(),
        _ => message.to_owned(),
    }
}

/// yaml_serde appends " at line L column C" to its messages; the error already leads with
/// `file:line:column`, so drop the duplicate.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::config::HookChoice;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("pgmon.yaml"), text)
    }

    #[test]
    fn environment_variables_replace_the_connection_settings() {
        let text = "cluster:\n  data_directory: /d\n  connection: \"host=/tmp user=pgmon\"\n";
        let env = |name: &str| match name {
            "PGMON_CLUSTER_CONNECTION" => {
                Some("host=db.example.com user=pgmon sslmode=require".to_owned())
            }
            "PGMON_CLUSTER_PASSWORD_FILE" => Some("/run/secrets/pgmon".to_owned()),
            _ => None,
        };
        let c = Config::parse_with_env(Path::new("pgmon.yaml"), text, env).unwrap();
        assert!(c.cluster.connection.starts_with("host=db.example.com"));
        assert_eq!(
            c.cluster.password_file.as_deref(),
            Some(Path::new("/run/secrets/pgmon"))
        );
        assert_eq!(c.cost.connection, None);
        let bad = |name: &str| {
            (name == "PGMON_CLUSTER_CONNECTION").then(|| "sslmode=sometimes".to_owned())
        };
        let e = Config::parse_with_env(Path::new("pgmon.yaml"), text, bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster.connection") && e.contains("sometimes"),
            "{e}"
        );
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let c = parse("cluster:\n  data_directory: /var/lib/postgresql/15/main\n").unwrap();
        assert_eq!(c.capture.hooks, HookChoice::Auto);
        assert_eq!(c.capture.ring_buffer_bytes, 16 << 20);
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:8181");
        assert!(c.cluster.connection.contains("user=pgmon"));
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../pgmon.example.yaml");
        let c = parse(text).unwrap();
        assert_eq!(c.capture.hooks, HookChoice::Auto);
        assert!(c.security.read_only_enforce);
    }

    #[test]
    fn read_only_enforce_is_on_unless_turned_off() {
        let base = "cluster:\n  data_directory: /d\n";
        assert!(parse(base).unwrap().security.read_only_enforce);
        let off = parse(&format!("{base}security:\n  read_only_enforce: false\n")).unwrap();
        assert!(!off.security.read_only_enforce);
        assert!(!off.security.redact_sql_text);
        let e = parse(&format!("{base}security:\n  read_only_enforce: maybe\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("pgmon.yaml:4:22: security.read_only_enforce: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text =
            "cluster:\n  data_directory: /d\ncapture:\n  hooks: auto\n  ring_bufer_bytes: 4\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.starts_with("pgmon.yaml:5:3: capture.ring_bufer_bytes: unknown field `ring_bufer_bytes`, expected one of `hooks`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = "cluster:\n  data_directory: /d\ncapture:\n  drain_interval_ms: soon\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.starts_with("pgmon.yaml:4:22: capture.drain_interval_ms: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn each_hook_choice_is_named_as_written() {
        for name in [
            "auto",
            "fexit",
            "tp_btf_sock",
            "tp_btf",
            "tracepoint",
            "raw_tracepoint",
        ] {
            let text = format!("cluster:\n  data_directory: /d\ncapture:\n  hooks: {name}\n");
            assert_eq!(parse(&text).unwrap().capture.hooks.as_str(), name);
        }
    }

    #[test]
    fn bad_enum_value_lists_the_choices() {
        let text = "cluster:\n  data_directory: /d\ncapture:\n  hooks: kprobe\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains("capture.hooks"), "{e}");
        assert!(e.contains("raw_tracepoint"), "{e}");
    }

    #[test]
    fn missing_required_field() {
        let e = parse("cluster:\n  connection: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `data_directory`"), "{e}");
        assert!(
            e.starts_with("pgmon.yaml:2:3: cluster: missing field"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_value() {
        let text = "cluster:\n  data_directory: /d\ncapture:\n  ring_buffer_bytes: 3000000\n";
        let e = parse(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "pgmon.yaml: capture.ring_buffer_bytes: 3000000 is not a power of two ≥ 1048576"
        );
    }

    #[test]
    fn storage_errors_name_the_field() {
        let text = "cluster:\n  data_directory: /d\nstorage:\n  enabled: true\n  roles:\n    \
                    - {match: 'a*', soft_limit: 2MB, hard_limit: 1MB}\n";
        let e = parse(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "pgmon.yaml: storage.roles[0].soft_limit: 2097152 is above hard_limit 1048576"
        );
        let text = "cluster:\n  data_directory: /d\nstorage:\n  default_limits: {soft_limit: 1 MiBs, hard_limit: 2MB}\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.starts_with("pgmon.yaml:4:"), "line of the bad size: {e}");
        assert!(
            e.contains("storage.default_limits.soft_limit: unknown unit"),
            "{e}"
        );
    }

    #[test]
    fn a_calendar_reset_and_a_window_exclude_each_other() {
        let text = "cluster:\n  data_directory: /d\nbudgets:\n  tiers:\n    \
                    free: {budget: 10, reset: daily}\n    \
                    paid: {budget: 10, reset: hourly, window_seconds: 600}\n";
        let e = parse(text).unwrap_err().to_string();
        assert!(e.starts_with("pgmon.yaml:6:"), "line of the tier: {e}");
        assert!(
            e.contains(
                "budgets.tiers.paid.window_seconds: `window_seconds: 600` and `reset: hourly` exclude each other"
            ),
            "{e}"
        );
        // Refused at whichever of the two comes second, on the tier's line.
        let swapped = text.replace(
            "reset: hourly, window_seconds: 600",
            "window_seconds: 600, reset: hourly",
        );
        let e = parse(&swapped).unwrap_err().to_string();
        assert!(
            e.starts_with("pgmon.yaml:6:") && e.contains("budgets.tiers.paid.reset: "),
            "{e}"
        );
        let ok = parse(&text.replace(", window_seconds: 600", "")).expect("valid");
        assert_eq!(
            ok.budgets.tiers["paid"].reset,
            Some(crate::budget::policy::Reset::Hourly)
        );
    }

    #[test]
    fn a_cluster_name_is_printable() {
        let ok = parse("cluster:\n  data_directory: /d\n  name: main-eu\n").expect("valid");
        assert_eq!(ok.cluster.name.as_deref(), Some("main-eu"));
        let e = parse("cluster:\n  data_directory: /d\n  name: \"\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "pgmon.yaml: cluster.name: \"\" is not 1 to 128 printable characters"
        );
    }

    #[test]
    fn yaml_syntax_error_has_a_position() {
        let e = parse("cluster: [\n").unwrap_err();
        match e {
            ConfigError::Parse { line, .. } => assert!(line >= 1),
            other => panic!("unexpected {other}"),
        }
    }
}
