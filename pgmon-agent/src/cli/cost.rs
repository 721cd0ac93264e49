//! `pgmon-agent cost forget (--fingerprint F | --relation R [--database D] | --all)`: asks
//! the running agent to forget cost estimates, in its cache and in `pgmon.cost_estimates`
//! (`POST /api/v1/cost/forget`, accepted from loopback peers only), with an audit row. The
//! next execution of each forgotten statement is estimated anew (an EXPLAIN); until then
//! it is charged `cost.default_cost`.

use anyhow::bail;

use super::{
    client::AgentArgs,
    unlock::{post, query},
};

/// Which estimates to forget (exactly one).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// One fingerprint: 16 hex digits, the `fingerprint` label of /metrics and of
    /// `pgmon-agent status --role`.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Every estimate that uses a relation of this name (schema ignored).
    #[arg(long)]
    pub relation: Option<String>,
    /// Every estimate.
    #[arg(long)]
    pub all: bool,
}

/// Forgets what `target` names through `agent`; prints what it said.
pub fn forget(agent: &AgentArgs, target: &Target, database: Option<&str>) -> anyhow::Result<()> {
    let q = match (&target.fingerprint, &target.relation, target.all) {
        (Some(f), None, false) => query(&[("fingerprint", f)]),
        (None, Some(r), false) => match database {
            Some(d) => query(&[("relation", r), ("database", d)]),
            None => query(&[("relation", r)]),
        },
        (None, None, true) => query(&[("all", "true")]),
        _ => bail!("need exactly one of --fingerprint, --relation, --all"),
    };
    if database.is_some() && target.relation.is_none() {
        bail!("--database goes with --relation only");
    }
    println!("{}", post(agent, &format!("/api/v1/cost/forget?{q}"))?);
    Ok(())
}
