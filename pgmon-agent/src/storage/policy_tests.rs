//! Parsing and compiling `storage:` snippets, good and bad.

use super::*;

fn policy(yaml: &str) -> StoragePolicy {
    yaml_serde::from_str(yaml).unwrap()
}

#[test]
fn sizes_parse_with_postgres_units() {
    assert_eq!(ByteSize::parse("5MB"), Ok(ByteSize(5 << 20)));
    assert_eq!(ByteSize::parse("10 GiB"), Ok(ByteSize(10 << 30)));
    assert_eq!(ByteSize::parse("1.5kB"), Ok(ByteSize(1536)));
    assert_eq!(ByteSize::parse("42"), Ok(ByteSize(42)));
    assert!(
        ByteSize::parse("5 MiBs")
            .unwrap_err()
            .contains("unknown unit")
    );
    assert!(ByteSize::parse("lots").is_err());
    let p = policy("roles:\n  - {match: a, soft_limit: 1048576, hard_limit: '2MB'}\n");
    assert_eq!(p.roles[0].hard_limit, ByteSize(2 << 20));
}

#[test]
fn first_rule_wins_then_default_and_exemptions() {
    let p = policy(
        "enabled: true\nmode: enterprise_db\nhard_grace_period: 60\n\
         roles:\n  - {match: 'big_*', soft_limit: 10GB, hard_limit: 20GB, manual_unlock: true}\n\
         \x20 - {match: 'big_x', soft_limit: 1MB, hard_limit: 2MB}\n\
         default_limits: {soft_limit: 5MB, hard_limit: 10MB, unlock_grace_period: 7}\n\
         exempt: [admin, 'ops_*']\n",
    );
    let c = p.compile().unwrap();
    let big = c.limits_of("big_x", false).unwrap();
    assert_eq!((big.soft, big.hard), (10 << 30, 20 << 30));
    assert!(big.manual_unlock);
    assert_eq!(big.hard_grace_ms, 60_000);
    assert_eq!(big.unlock_grace_ms, 300_000, "the default unlock grace");
    let other = c.limits_of("bob", false).unwrap();
    assert_eq!((other.soft, other.hard), (5 << 20, 10 << 20));
    assert_eq!(other.unlock_grace_ms, 7_000);
    assert!(!other.manual_unlock);
    for exempt in ["admin", "ops_1", "pgmon", "pg_monitor"] {
        assert_eq!(c.limits_of(exempt, false), None, "{exempt}");
    }
    assert_eq!(c.limits_of("bob", true), None, "superusers are exempt");
    assert_eq!((c.usage_ttl_ms, c.termination_batch), (2_000, 500));
}

#[test]
fn presets_and_overrides() {
    let c = StoragePolicy::default().compile().unwrap();
    assert_eq!((c.usage_ttl_ms, c.termination_batch), (15_000, 100));
    assert_eq!(c.limits_of("anyone", false), None, "no rule, no default");
    let c = policy("mode: shared_hosting\nusage_ttl_seconds: 0.5\ntermination_batch: 7\n")
        .compile()
        .unwrap();
    assert_eq!((c.usage_ttl_ms, c.termination_batch), (500, 7));
}

#[test]
fn bad_policies_name_the_field() {
    let field = |yaml: &str| policy(yaml).compile().unwrap_err().0;
    assert_eq!(
        field("roles:\n  - {match: a, soft_limit: 2MB, hard_limit: 1MB}\n"),
        "storage.roles[0].soft_limit"
    );
    assert_eq!(
        field("default_limits: {soft_limit: 0, hard_limit: 0}\n"),
        "storage.default_limits.hard_limit"
    );
    assert_eq!(
        field("roles:\n  - {match: '[a', soft_limit: 1, hard_limit: 2}\n"),
        "storage.roles[0].match"
    );
    assert_eq!(field("termination_batch: 0\n"), "storage.termination_batch");
    assert_eq!(
        field("notifications: {webhook_url: 'ftp://x/y'}\n"),
        "storage.notifications.webhook_url"
    );
    assert_eq!(field("textfile: relative.prom\n"), "storage.textfile");
    assert_eq!(
        field("recount_interval_seconds: 0\n"),
        "storage.recount_interval_seconds"
    );
}

#[test]
fn unknown_fields_and_bad_modes_are_refused() {
    let e = yaml_serde::from_str::<StoragePolicy>("soft_limt: 5\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `soft_limt`"), "{e}");
    let e = yaml_serde::from_str::<StoragePolicy>("mode: huge\n").unwrap_err();
    assert!(e.to_string().contains("enterprise_db"), "{e}");
}
