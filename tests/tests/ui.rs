//! Privileged test of the web UI in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver, through fantoccini), against the real agent on PostgreSQL 15
//! and 18 with traffic from two roles (`shop` running `pgbench -S`, `heavy` running a
//! sequential scan until its budget's `warn` step is taken):
//!
//! - every page loads with live numbers and no script or console error, and gets a
//!   screenshot under `target/ui-screenshots/`;
//! - the numbers are the API's: the Roles page's statement count for `shop` is the one
//!   `/api/v1/status` gives, the Budgets page shows `heavy` on `warn`, what an unlock
//!   would do and the step in the audit trail; the Top queries page ranks pgbench's
//!   statement first by calls with the same count on both sides;
//! - the Overview's SQL toggle shows the statements behind it;
//! - a refresh after more traffic shows a larger count.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Transport, agent_binary,
    budget::{HEAVY_SQL, agent_config, budget, create_big_table, install_sql, wait_until},
    free_port, require_root, skip,
};

/// The pages, by hash route, and the heading each must show.
const PAGES: &[(&str, &str)] = &[
    ("overview", "Overview"),
    ("roles", "Roles"),
    ("role/shop", "Role shop"),
    ("budgets", "Budgets"),
    ("quotas", "Storage quotas"),
    ("autovacuum", "Autovacuum"),
    ("top-queries", "Top queries"),
    ("storage", "Storage and indexes"),
    ("partitions", "Partitions"),
    ("replication", "Replication"),
    ("alerts", "Alerts"),
    ("capture", "Capture health"),
];

/// chromedriver on a free port, ended when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by `cargo xtask setup`)");
        let d = Driver { child, port };
        wait_until("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", d.port)).is_ok()
        });
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: `target/ui-screenshots/` of the workspace.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Opens `route` and waits until the page has drawn it (its `data-page` and heading).
async fn open(c: &Client, base: &str, route: &str, heading: &str) {
    c.goto(&format!("{base}/#/{route}")).await.expect("goto");
    // A hash change on the same document redraws without a load: wait for the heading.
    let page = route.split('/').next().unwrap_or(route);
    let started = Instant::now();
    loop {
        let drawn: bool = c
            .execute(
                "return document.body.dataset.page === arguments[0] && \
                 !!document.querySelector('main h1') && \
                 document.querySelector('main h1').textContent.startsWith(arguments[1])",
                vec![page.into(), heading.into()],
            )
            .await
            .expect("execute")
            .as_bool()
            .unwrap_or(false);
        if drawn {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "#/{route} never showed {heading:?}: {}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The errors the page collected (`window.__pgmonErrors`, set up in index.html).
async fn errors(c: &Client) -> Vec<String> {
    let v = c
        .execute("return window.__pgmonErrors || []", vec![])
        .await
        .expect("execute");
    serde_json::from_value(v).unwrap_or_default()
}

/// The text of the cell of `table` in the row for `role`, column `col` (0-based).
async fn cell(c: &Client, table: &str, role: &str, col: usize) -> String {
    c.find(Locator::Css(&format!(
        "table#{table} tr[data-role='{role}'] td:nth-child({})",
        col + 1
    )))
    .await
    .unwrap_or_else(|e| panic!("{table}: no row for {role}: {e}"))
    .text()
    .await
    .expect("text")
}

fn count(text: &str) -> u64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a count: {text:?}"))
}

async fn browse(version: PgVersion, base: String, agent: &Agent, cluster: &Cluster) {
    let driver = Driver::start();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"]
        }),
    );
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with chromedriver");
    let shots = screenshot_dir();
    for (route, heading) in PAGES {
        open(&c, &base, route, heading).await;
        let png = c.screenshot().await.expect("screenshot");
        let name = format!("pg{}-{}.png", version.major(), route.replace('/', "-"));
        std::fs::write(shots.join(&name), png).expect("write screenshot");
        let errs = errors(&c).await;
        assert!(errs.is_empty(), "#/{route}: page errors {errs:?}");
        let shown_errors = c.find_all(Locator::Css("main .error")).await.expect("find");
        let mut texts = Vec::new();
        for e in shown_errors {
            texts.push(e.text().await.unwrap_or_default());
        }
        assert!(texts.is_empty(), "#/{route} shows errors: {texts:?}");
    }

    // Overview: live figures, and the SQL behind them.
    open(&c, &base, "overview", "Overview").await;
    let qps = c
        .find(Locator::Css("[data-figure='qps'] .value"))
        .await
        .expect("the statements/s card")
        .text()
        .await
        .unwrap();
    assert_ne!(qps, "—", "statements/s after two history samples");
    let toggle = c
        .find(Locator::Css("details.sql summary"))
        .await
        .expect("a SQL toggle");
    toggle.click().await.expect("open the SQL toggle");
    let sql = c
        .find(Locator::Css("details.sql[open] pre"))
        .await
        .expect("the SQL shown")
        .text()
        .await
        .unwrap();
    assert!(sql.contains("SELECT") && sql.contains("pg_"), "{sql}");

    // Roles: the count is the status document's (shop's traffic has stopped).
    open(&c, &base, "roles", "Roles").await;
    let shown = count(&cell(&c, "roles", "shop", 1).await);
    let status = agent.status_json().expect("status");
    let queries = status["roles"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["role"] == "shop"))
        .and_then(|r| r["queries"].as_u64())
        .expect("shop in status");
    assert_eq!(shown, queries, "the Roles page and /api/v1/status");
    assert!(shown > 100, "pgbench's statements: {shown}");

    // Budgets: heavy on warn, with the reason.
    open(&c, &base, "budgets", "Budgets").await;
    assert_eq!(cell(&c, "budgets", "heavy", 5).await, "warn");
    assert!(
        cell(&c, "budgets", "heavy", 6)
            .await
            .contains("utilisation ≥")
    );

    let unlock = cell(&c, "budgets", "heavy", 8).await;
    assert!(
        unlock.contains("takes it off step warn") && unlock.contains("forgets"),
        "what an unlock would do: {unlock}"
    );
    // The audit trail: the step pgmon took (observe mode audits it too).
    let audit = c
        .find(Locator::Css("table.audit tbody"))
        .await
        .expect("the audit trail")
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains("heavy") && audit.contains("warn"),
        "audit trail: {audit}"
    );

    // Top queries: pgbench's statement ranked by calls, both sides counting the same.
    open(&c, &base, "top-queries", "Top queries").await;
    let first = c
        .find(Locator::Css(".tri section:nth-child(2) table.top tbody tr"))
        .await
        .expect("a statement ranked by calls");
    let text = first.text().await.unwrap();
    assert!(text.contains("pgbench_accounts"), "{text}");
    let mut calls = Vec::new();
    for col in [3, 4] {
        let td = first
            .find(Locator::Css(&format!("td:nth-child({col})")))
            .await
            .expect("a calls cell");
        calls.push(count(&td.text().await.unwrap()));
    }
    assert_eq!(calls[0], calls[1], "pg_stat_statements and pgmon: {text}");
    assert!(calls[0] >= 2000, "{text}");

    // More traffic, a refresh: a larger count.
    cluster
        .pgbench(&PgbenchRun {
            transactions: Some(500),
            select_only: true,
            no_vacuum: true,
            ..PgbenchRun::new("shop", "shop")
        })
        .expect("pgbench");
    wait_until("the new statements", Duration::from_secs(10), || {
        agent
            .status_json()
            .ok()
            .and_then(|s| {
                s["roles"]
                    .as_array()?
                    .iter()
                    .find(|r| r["role"] == "shop")?["queries"]
                    .as_u64()
            })
            .is_some_and(|q| q >= queries + 500)
    });
    // The reader leaves a slow page (top queries, loading after the refresh) for Roles at
    // once: the slow page's late answers must not draw over the page the address names.
    c.refresh().await.expect("refresh");
    open(&c, &base, "roles", "Roles").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let page = c
        .execute("return document.body.dataset.page", vec![])
        .await
        .expect("execute");
    assert_eq!(page, "roles", "a late draw of the page left replaced Roles");
    let after = count(&cell(&c, "roles", "shop", 1).await);
    assert!(after >= shown + 500, "{after} after {shown}");
    c.close().await.expect("close the session");
}

fn ui(version: PgVersion) {
    let test = format!("ui_pg{}", version.major());
    if !require_root(&test) {
        return;
    }
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !std::path::Path::new(tool).exists() {
            skip(
                &test,
                &format!("{tool} is missing (run `cargo xtask setup`)"),
            );
            return;
        }
    }
    let cluster = Cluster::start(
        version,
        ClusterOptions {
            pg_stat_statements: true,
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    install_sql(&cluster);
    for role in ["shop", "heavy"] {
        cluster.create_role_with_db(role).expect("role");
    }
    cluster.pgbench_init("shop", "shop", 1).expect("pgbench -i");
    create_big_table(&cluster, "heavy");
    let port = free_port();
    let budgets = "budgets:\n  enabled: true\n  mode: observe\n\
                   \x20 tiers:\n    t: {budget: 5000, window_seconds: 3600}\n\
                   \x20 roles: [{match: heavy, tier: t}]\n\
                   \x20 ladder:\n    - {at: 0.5, action: warn}\n";
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &agent_config(&cluster, port, budgets),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    cluster
        .pgbench(&PgbenchRun {
            transactions: Some(2000),
            select_only: true,
            no_vacuum: true,
            ..PgbenchRun::new("shop", "shop")
        })
        .expect("pgbench");
    wait_until("heavy on warn", Duration::from_secs(30), || {
        let _ = cluster.psql("heavy", "heavy", Transport::Unix, HEAVY_SQL);
        budget(&agent, "heavy").is_some_and(|b| b["step"] == "warn")
    });
    // Two history samples (one every 10 s) so the rates and charts have points.
    wait_until("two history samples", Duration::from_secs(30), || {
        agent
            .get("/api/v1/history")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["samples"].as_array().map(Vec::len))
            .is_some_and(|n| n >= 2)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(browse(
        version,
        format!("http://127.0.0.1:{port}"),
        &agent,
        &cluster,
    ));
}

#[test]
fn ui_pg15() {
    ui(PgVersion::Pg15);
}

#[test]
fn ui_pg18() {
    ui(PgVersion::Pg18);
}
