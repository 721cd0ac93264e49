//! What an attached agent costs the processes that are not backends of its cluster
//! (`cargo xtask bench`, with the CPU-time section): the socket hooks run for every socket
//! call on the host and turn these away after one pid-state load. A loop in this process
//! writes 64 bytes into one end of a unix socketpair and reads them from the other (two
//! socket calls), and its thread's CPU time per call (`CLOCK_THREAD_CPUTIME_ID`) is
//! taken with no agent and with an agent attached to the bench cluster, alternating, for
//! [`ROUNDS`] rounds. CPU time, not wall time, so a loop descheduled by host noise is not
//! charged for it.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::Result;
use pgmon_tests::{Agent, Cluster, free_port};

use crate::bench::agent_config;
use crate::bench_stats::{median, median_interval};

/// Rounds of the comparison: one detached and one attached loop each, the order
/// alternating.
pub const ROUNDS: usize = 10;

/// Socket calls per loop (half writes, half reads): ~1 s of CPU here.
const CALLS: u64 = 1_000_000;

/// The measured loops, nanoseconds of CPU time per socket call.
pub struct HostCost {
    pub detached: Vec<f64>,
    pub attached: Vec<f64>,
}

impl HostCost {
    /// The rounds' differences, attached − detached, nanoseconds per call.
    fn differences(&self) -> Vec<f64> {
        self.attached
            .iter()
            .zip(&self.detached)
            .map(|(a, d)| a - d)
            .collect()
    }
}

/// This thread's CPU time, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One loop: CPU nanoseconds per socket call.
fn loop_ns_per_call() -> Result<f64> {
    let (mut tx, mut rx) = UnixStream::pair()?;
    let out = [0x5au8; 64];
    let mut back = [0u8; 64];
    let start = thread_cpu_ns();
    for _ in 0..CALLS / 2 {
        tx.write_all(&out)?;
        rx.read_exact(&mut back)?;
    }
    Ok((thread_cpu_ns() - start) as f64 / CALLS as f64)
}

/// Runs the rounds against an agent attached to `cluster`.
pub fn measure(binary: &Path, cluster: &Cluster) -> Result<HostCost> {
    let mut cost = HostCost {
        detached: Vec::new(),
        attached: Vec::new(),
    };
    for round in 0..ROUNDS {
        let attached = || -> Result<f64> {
            let port = free_port();
            let agent = Agent::start(
                binary,
                &agent_config(cluster, port, "auto"),
                format!("127.0.0.1:{port}"),
            )?;
            std::thread::sleep(crate::bench_overhead::SETTLE);
            let ns = loop_ns_per_call()?;
            drop(agent);
            Ok(ns)
        };
        let (d, a) = if round % 2 == 0 {
            let d = loop_ns_per_call()?;
            (d, attached()?)
        } else {
            let a = attached()?;
            (loop_ns_per_call()?, a)
        };
        eprintln!("bench: socket call of another process: detached {d:.0} ns, attached {a:.0} ns");
        cost.detached.push(d);
        cost.attached.push(a);
    }
    Ok(cost)
}

/// The report section (Markdown) and its JSON.
pub fn section(c: &HostCost) -> (String, serde_json::Value) {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (d, a, diff) = (
        median(c.detached.clone()),
        median(c.attached.clone()),
        median(c.differences()),
    );
    let interval = median_interval(c.differences())
        .map_or(String::new(), |(lo, hi)| format!("{lo:.0} to {hi:.0}"));
    let md = format!(
        "\n## What other processes pay (CPU time per socket call)\n\n\
         A socketpair loop in another process (64-byte write, then read), its thread's CPU \
         time per socket call, with no agent and with the agent attached to the bench cluster \
         ({ROUNDS} rounds, the order alternating). The agent's hooks run for every socket call \
         on the host and turn this one away after one pid-state load.\n\n\
         | | median ns per call | 95 % interval | rounds (ns) |\n|---|---|---|---|\n\
         | detached | {d:.0} | | {} |\n| attached | {a:.0} | | {} |\n\
         | difference (median of the rounds') | {diff:.0} | {interval} | {} |\n",
        list(&c.detached),
        list(&c.attached),
        list(&c.differences()),
    );
    let json = serde_json::json!({
        "detached_ns_per_call": d, "attached_ns_per_call": a, "difference_ns_per_call": diff,
        "difference_interval_95": median_interval(c.differences()).map(|(lo, hi)| [lo, hi]),
        "detached": c.detached, "attached": c.attached,
    });
    (md, json)
}
