//! Privileged test of the agent's HTTP surface as a client meets it, with the real agent
//! binary on a PostgreSQL 15 cluster, spoken to in raw HTTP/1.1 over TCP so every method,
//! status line, `Content-Type` and body is the server's own:
//!
//! - `/metrics` answers OpenMetrics to a client that asks for it (Prometheus' `Accept`) and
//!   the text format 0.0.4 to any other;
//! - `/healthz`, `/api/v1/status` and `/api/v1/alerts` answer with their content types;
//!   the read API refuses an unknown parameter with 400 in its JSON envelope;
//! - `HEAD` is answered as `GET` without the body; an unknown path is a 404 naming the
//!   endpoints, any other method a 405 `GET only` (a GET on a lever's path is an unknown
//!   path);
//! - the manual levers (`POST /api/v1/storage/unlock`, `/api/v1/budget/unlock`,
//!   `/api/v1/cost/forget`) answer 403 to a peer that is not loopback — the agent listens on
//!   `0.0.0.0` and the test connects through the host's first non-loopback IPv4 address —
//!   and from loopback answer 400 on a bad request, 409 for a role without a budget, 200
//!   when done, and 404 for a lever whose feature is off.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, agent_binary,
    budget::{agent_config, install_sql},
    free_port, require_root, skip,
};

/// One answer: status code, `Content-Type`, body.
#[derive(Debug)]
struct Answer {
    code: u16,
    content_type: String,
    body: String,
}

/// `METHOD path` to `addr` with these extra header lines, over a fresh connection.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {raw:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: status line of {head:?}"));
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Answer {
        code,
        content_type,
        body: body.to_owned(),
    }
}

/// The address this host reaches others from (its first non-loopback IPv4 address), if
/// any: a UDP socket "connected" to a documentation address sends nothing.
fn outward_address() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn assert_answer(a: &Answer, code: u16, content_type: &str, body: &str) {
    assert_eq!(
        (a.code, a.content_type.as_str()),
        (code, content_type),
        "{a:?}"
    );
    assert!(a.body.contains(body), "{body:?} not in {a:?}");
}

fn surface(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    let port = free_port();
    // Budgets in observe mode (so the budget and cost levers are on); storage quotas off.
    let budgets = "budgets:\n  enabled: true\n  mode: observe\n\
                   \x20 tiers:\n    t: {budget: 2000, window_seconds: 3600}\n\
                   \x20 roles: [{match: heavy, tier: t}]\n\
                   \x20 ladder:\n    - {at: 0.5, action: warn}\n";
    let config =
        agent_config(&cluster, port, budgets).replace("listen: 127.0.0.1:", "listen: 0.0.0.0:");
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let get = |path: &str| request(local, "GET", path, "");
    let post = |path: &str| request(local, "POST", path, "");

    // /metrics: content negotiation.
    let m = get("/metrics");
    assert_answer(
        &m,
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        "pgmon_",
    );
    assert!(!m.body.contains("# EOF"), "text format 0.0.4 has no # EOF");
    let prometheus = "Accept: application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n";
    let om = request(local, "GET", "/metrics", prometheus);
    assert_answer(
        &om,
        200,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "pgmon_",
    );
    assert!(
        om.body.ends_with("# EOF\n"),
        "{:?}",
        &om.body[om.body.len() - 40..]
    );

    // The other GET endpoints.
    assert_answer(&get("/healthz"), 200, "text/plain", "ok");
    assert_answer(
        &get("/api/v1/status"),
        200,
        "application/json",
        "\"capture\"",
    );
    assert_answer(&get("/api/v1/alerts"), 200, "application/json", "{");
    let bad = get("/api/v1/overview?databse=app");
    assert_answer(
        &bad,
        400,
        "application/json",
        "\"endpoint\": \"/api/v1/overview\"",
    );
    assert!(bad.body.contains("databse"), "{bad:?}");

    // HEAD is GET without the body.
    let head = request(local, "HEAD", "/healthz", "");
    assert_eq!(
        (head.code, head.content_type.as_str()),
        (200, "text/plain"),
        "{head:?}"
    );
    assert!(head.body.is_empty(), "{head:?}");

    // Unknown paths and methods.
    let try_these = "try /metrics, /healthz, /api/v1/status, /api/v1/overview\n";
    assert_answer(&get("/nope"), 404, "text/plain", try_these);
    assert_answer(
        &get("/api/v1/budget/unlock?role=heavy"),
        404,
        "text/plain",
        try_these,
    );
    for (method, path) in [
        ("PUT", "/metrics"),
        ("POST", "/healthz"),
        ("DELETE", "/nope"),
    ] {
        let a = request(local, method, path, "");
        assert_answer(&a, 405, "text/plain", "GET only\n");
    }

    // The levers from loopback.
    assert_answer(
        &post("/api/v1/budget/unlock"),
        400,
        "text/plain",
        "need ?role=NAME\n",
    );
    assert_answer(
        &post("/api/v1/budget/unlock?role="),
        400,
        "text/plain",
        "need ?role=NAME\n",
    );
    let none = post("/api/v1/budget/unlock?role=nobody");
    assert_eq!(
        (none.code, none.content_type.as_str()),
        (409, "text/plain"),
        "{none:?}"
    );
    assert_answer(
        &post("/api/v1/cost/forget?relaton=t"),
        400,
        "text/plain",
        "unknown parameter(s): relaton\n",
    );
    assert_answer(
        &post("/api/v1/cost/forget?all=true&relation=t"),
        400,
        "text/plain",
        "need exactly one of",
    );
    assert_answer(
        &post("/api/v1/cost/forget?fingerprint=xyz"),
        400,
        "text/plain",
        "need 16 hex digits",
    );
    let done = post("/api/v1/cost/forget?fingerprint=00000000000000ff");
    assert_eq!(
        (done.code, done.content_type.as_str()),
        (200, "text/plain"),
        "{done:?}"
    );
    assert_answer(
        &post("/api/v1/storage/unlock?role=heavy"),
        404,
        "text/plain",
        "storage quotas are off (storage.enabled: false)\n",
    );

    // The levers from another address: refused before anything else is looked at.
    match outward_address() {
        None => skip(
            "http_pg15 (non-loopback levers)",
            "this host has no non-loopback IPv4 address",
        ),
        Some(ip) => {
            let outside = SocketAddr::new(ip, port);
            for (path, name) in [
                ("/api/v1/storage/unlock?role=heavy", "unlock"),
                ("/api/v1/budget/unlock?role=heavy", "unlock"),
                ("/api/v1/budget/unlock", "unlock"),
                ("/api/v1/cost/forget?all=true", "cost forget"),
            ] {
                assert_answer(
                    &request(outside, "POST", path, ""),
                    403,
                    "text/plain",
                    &format!("{name} is accepted from the agent's host only\n"),
                );
            }
            // Reading is open to any peer.
            assert_answer(
                &request(outside, "GET", "/healthz", ""),
                200,
                "text/plain",
                "ok",
            );
        }
    }
    assert!(!agent.log().contains("panicked"));
    drop(agent);

    // Budgets off: their levers are 404 (from loopback).
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &agent_config(&cluster, port, ""),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    assert_answer(
        &request(local, "POST", "/api/v1/budget/unlock?role=heavy", ""),
        404,
        "text/plain",
        "budgets are off (budgets.enabled: false)\n",
    );
    assert_answer(
        &request(local, "POST", "/api/v1/cost/forget?all=true", ""),
        404,
        "text/plain",
        "cost estimates are off",
    );
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn http_pg15() {
    if !require_root("http_pg15") {
        return;
    }
    surface(PgVersion::Pg15);
}
