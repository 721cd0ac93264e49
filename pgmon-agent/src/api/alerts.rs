//! `GET /api/v1/alerts`: the alert engine's last view ([`crate::alerts::View`]: firing and
//! pending alerts, recent transitions, the catalog) in the read API's envelope, whose `sql`
//! lists the health loops' statements the rules read ([`crate::alerts::sql::sources`]).

use super::{Envelope, SqlRun};
use crate::alerts::AlertBook;

/// The envelope as pretty JSON.
pub fn json(book: &AlertBook) -> String {
    let started = std::time::Instant::now();
    let v = book.view();
    let sql = runs(v.rules.iter().map(|r| r.alertname));
    let envelope = Envelope {
        endpoint: "/api/v1/alerts",
        database: None,
        generated_at: crate::util::rfc3339(crate::util::now_ms()),
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        sql,
        data: serde_json::to_value(&v).unwrap_or_default(),
    };
    let mut out = serde_json::to_string_pretty(&envelope).unwrap_or_default();
    out.push('\n');
    out
}

/// The statements behind every rule of `alertnames`, each once, in first-use order (the
/// per-database ones ran in every database the slow and hourly loops visit).
pub fn runs<'a>(alertnames: impl IntoIterator<Item = &'a str>) -> Vec<SqlRun> {
    let mut out: Vec<SqlRun> = Vec::new();
    for name in alertnames {
        for (n, by, text) in crate::alerts::sql::sources(name) {
            if !out.iter().any(|r| r.name == *n) {
                out.push(SqlRun {
                    name: n,
                    by,
                    database: None,
                    text: (*text).into(),
                });
            }
        }
    }
    out
}
