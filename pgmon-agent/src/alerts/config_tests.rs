//! Parse tests of `alerts:` with real YAML snippets, good and bad.

use crate::config::Config;
use std::path::Path;

fn parse(alerts: &str) -> Result<Config, String> {
    let text = format!("cluster:\n  data_directory: /d\nalerts:\n{alerts}");
    Config::parse(Path::new("pgmon.yaml"), &text).map_err(|e| e.to_string())
}

#[test]
fn notifiers_and_overrides_parse() {
    let c = parse(
        "  evaluation_interval_seconds: 1\n  notifiers:\n    - slack: {url: 'https://hooks.slack.com/services/T/B/x'}\n    \
         - webhook: {url: 'http://127.0.0.1:9/hook', name: pager}\n    \
         - email: {host: smtp.example.com, from: pgmon@example.com, to: [dba@example.com]}\n  \
         idle_in_transaction_seconds: {warn: 1, crit: 2, for_seconds: 3}\n  wal_surge: {min_samples: 5}\n",
    )
    .unwrap();
    let a = &c.alerts;
    assert_eq!(a.notifiers.len(), 3);
    assert_eq!(a.idle_in_transaction_seconds.for_seconds, Some(3));
    assert_eq!(a.long_transaction_seconds.for_seconds, None);
    assert_eq!(a.wal_surge.min_samples, 5);
    assert_eq!(
        a.wal_surge.window_seconds, 900,
        "the rest keeps its default"
    );
    let c = parse("  temp_surge: {sigma: 4}\n").unwrap();
    assert_eq!(
        c.alerts.temp_surge.window_seconds, 300,
        "the temp rule's own default"
    );
    assert_eq!(c.alerts.temp_surge.for_seconds, 300);
}

#[test]
fn errors_name_the_field() {
    let e = parse("  notifiers:\n    - webhook: {url: 'ftp://x/'}\n").unwrap_err();
    assert_eq!(
        e,
        "pgmon.yaml: alerts.notifiers[0].webhook.url: \"ftp://x/\" is not an http:// or https:// URL"
    );
    let e = parse(
        "  notifiers:\n    - webhook: {url: 'http://a/'}\n    - webhook: {url: 'http://b/'}\n",
    )
    .unwrap_err();
    assert!(
        e.starts_with("pgmon.yaml: alerts.notifiers[1].webhook.name: another notifier"),
        "{e}"
    );
    let e = parse("  notifiers:\n    - email: {host: h, from: me@x, to: [nope]}\n").unwrap_err();
    assert!(
        e.starts_with("pgmon.yaml: alerts.notifiers[0].email.to[0]: \"nope\""),
        "{e}"
    );
    let e = parse("  lock_wait_seconds: {warn: 10, crit: 5}\n").unwrap_err();
    assert_eq!(
        e,
        "pgmon.yaml: alerts.lock_wait_seconds.crit: 5 must be a number at least warn (10)"
    );
    let e = parse("  temp_surge: {window_seconds: 20}\n").unwrap_err();
    assert!(
        e.starts_with("pgmon.yaml: alerts.temp_surge.window_seconds: 20 must be at least twice"),
        "{e}"
    );
    let e = parse("  dead_tuples: {ratio: 0.2, min_tupels: 5}\n").unwrap_err();
    assert!(
        e.starts_with("pgmon.yaml:4:29: alerts.dead_tuples.min_tupels: unknown field"),
        "{e}"
    );
    let e = parse("  notifiers:\n    - pager: {url: 'http://a/'}\n").unwrap_err();
    assert!(
        e.starts_with("pgmon.yaml:5:7: alerts.notifiers[0].pager: unknown variant `pager`, expected one of `slack`"),
        "{e}"
    );
}

#[test]
fn total_locks_parse() {
    let c = parse("  total_locks: {warn: 50, crit: 100, for_seconds: 0}\n").unwrap();
    let t = c.alerts.total_locks;
    assert_eq!(
        (t.warn, t.crit, t.for_seconds),
        (Some(50.0), Some(100.0), 0)
    );
    assert_eq!(t.warn_ratio, 0.5, "the ratios keep their defaults");
    let c = parse("  total_locks: {crit_ratio: 0.9}\n").unwrap();
    let t = c.alerts.total_locks;
    assert_eq!((t.warn, t.crit_ratio, t.for_seconds), (None, 0.9, 60));
    assert_eq!(parse("").unwrap().alerts.total_locks.crit_ratio, 0.8);
    let e = parse("  total_locks: {warn: 100, crit: 50}\n").unwrap_err();
    assert_eq!(
        e,
        "pgmon.yaml: alerts.total_locks.crit: 50 must be at least warn (100)"
    );
    let e = parse("  total_locks: {warn_percent: 50}\n").unwrap_err();
    assert!(
        e.starts_with("pgmon.yaml:4:17: alerts.total_locks.warn_percent: unknown field"),
        "{e}"
    );
}
