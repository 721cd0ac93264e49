//! `pgmon-agent unlock ROLE`: asks the running agent to unlock a role its storage quota
//! locked (`POST /api/v1/storage/unlock?role=ROLE`); `pgmon-agent unlock --budget ROLE`
//! asks it to reset the role's query-cost budget, ledger and ladder step, and give back
//! what the step took (`POST /api/v1/budget/unlock?role=ROLE`, [`crate::budget::reset`]).
//! Going through the agent, rather than calling `pgmon.unlock_role` or
//! `pgmon.restore_role` in SQL, keeps its state machines, the audit row, the log and the
//! notifications in step (a budget step undone in SQL alone would be applied again by
//! nobody, and its spend would still count); the agent accepts the request from loopback
//! peers only.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Unlocks `role` through the agent at `addr` (its storage lock, or with `budget` its
/// budget); prints what the agent answered.
pub fn unlock(addr: SocketAddr, role: &str, budget: bool) -> anyhow::Result<()> {
    let what = if budget { "budget" } else { "storage" };
    let text = post(
        addr,
        &format!("/api/v1/{what}/unlock?role={}", percent_encode(role)),
    )
    .with_context(|| role.to_owned())?;
    println!("{role}: {text}");
    Ok(())
}

/// POSTs to `path_and_query` of the agent at `addr` (40 s at most) and returns the answer's
/// text; an error carries the answer of a non-2xx status, or says the agent is not there.
pub(crate) fn post(addr: SocketAddr, path_and_query: &str) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
        let uri: hyper::Uri = format!("http://{addr}{path_and_query}").parse()?;
        let req = hyper::Request::post(uri).body(Empty::new())?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(40), client.request(req))
            .await
            .with_context(|| format!("no answer from the agent at {addr} within 40 s"))?
            .with_context(|| {
                format!("cannot reach the agent at {addr} (is `pgmon-agent run` running?)")
            })?;
        let code = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        if !code.is_success() {
            bail!("{text} (HTTP {code})");
        }
        Ok(text)
    })
}

/// Escapes everything but unreserved characters (RFC 3986, section 2.3).
pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_names_are_escaped() {
        assert_eq!(super::percent_encode("tenant_1"), "tenant_1");
        assert_eq!(super::percent_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
