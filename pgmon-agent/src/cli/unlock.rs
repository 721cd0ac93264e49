//! `pgmon-agent unlock ROLE`: asks the running agent to unlock a role its storage quota
//! locked (`POST /api/v1/storage/unlock?role=ROLE`); `pgmon-agent unlock --budget ROLE`
//! asks it to reset the role's query-cost budget, ledger and ladder step, and give back
//! what the step took (`POST /api/v1/budget/unlock?role=ROLE`, [`crate::budget::reset`]).
//! Going through the agent, rather than calling `pgmon.unlock_role` or
//! `pgmon.restore_role` in SQL, keeps its state machines, the audit row, the log and the
//! notifications in step (a budget step undone in SQL alone would be applied again by
//! nobody, and its spend would still count); the agent accepts the request from loopback
//! peers only.

use anyhow::Context as _;

use super::client::AgentArgs;

/// Unlocks `role` through the agent (its storage lock, or with `budget` its budget);
/// prints what the agent answered.
pub fn unlock(agent: &AgentArgs, role: &str, budget: bool) -> anyhow::Result<()> {
    let what = if budget { "budget" } else { "storage" };
    let text = post(
        agent,
        &format!("/api/v1/{what}/unlock?{}", query(&[("role", role)])),
    )
    .with_context(|| role.to_owned())?;
    println!("{role}: {text}");
    Ok(())
}

/// POSTs to `path_and_query` of the agent (40 s at most) and returns the answer's text
/// ([`AgentArgs::request`]).
pub(crate) fn post(agent: &AgentArgs, path_and_query: &str) -> anyhow::Result<String> {
    agent.request(
        hyper::Method::POST,
        path_and_query,
        std::time::Duration::from_secs(40),
    )
}

/// `pairs` as a query string (`application/x-www-form-urlencoded`, what the agent's
/// router decodes).
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn role_names_reach_the_agent_as_they_are() {
        let q = super::query(&[("role", "a b/é&x=1")]);
        assert!(!q.contains(' ') && !q.contains('/'), "{q}");
        let back: Vec<(String, String)> =
            form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        assert_eq!(back, [("role".to_owned(), "a b/é&x=1".to_owned())]);
    }
}
