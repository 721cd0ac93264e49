use super::*;

#[test]
fn traffic_families_follow_prometheus_conventions() {
    let mut registry = Registry::default();
    let m = TrafficMetrics::register(&mut registry, "tracepoint", 2);
    let h = m.role_db("alice", "shop");
    h.queries.inc();
    h.duration.observe(0.001);
    m.query_error("alice", "shop", *b"22");
    m.connection_error("alice", *b"28");
    *m.shared.top_statements.lock().unwrap() = vec![TopStatement {
        fingerprint: "00ff00ff00ff00ff".into(),
        calls: 7,
        exec_seconds: 0.5,
        plan_cost: Some(35.0),
        cost_per_second: Some(490.0),
    }];
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        "pgmon_queries_total{role=\"alice\",database=\"shop\"} 1",
        "pgmon_query_duration_seconds_count{role=\"alice\",database=\"shop\"} 1",
        "pgmon_query_errors_total{role=\"alice\",database=\"shop\",sqlstate_class=\"22\"} 1",
        "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"28\"} 1",
        "pgmon_statement_calls_total{fingerprint=\"00ff00ff00ff00ff\"} 7",
        "pgmon_statement_exec_seconds_total{fingerprint=\"00ff00ff00ff00ff\"} 0.5",
        "pgmon_statement_plan_cost{fingerprint=\"00ff00ff00ff00ff\"} 35.0",
        "pgmon_statement_cost_per_second{fingerprint=\"00ff00ff00ff00ff\"} 490.0",
        "pgmon_probe_info{hook=\"tracepoint\",cost_rank=\"2\"} 1",
        "pgmon_capture_dropped_total 0",
        "pgmon_encrypted_sessions{readable=\"false\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
