//! Pipeline throughput without a kernel (section 3 of [`crate::bench`]): capture records
//! taken with `pgmon-agent record`, replayed with `pgmon-agent replay`, the corpus of
//! distinct statements that misses the statement cache, and the scratch directory they
//! are written to.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{Cluster, free_port};

use crate::bench::agent_config;

/// Records the capture of `workload` into `out` with `pgmon-agent record`.
pub(crate) fn record(
    binary: &Path,
    cluster: &Cluster,
    out: &Path,
    workload: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let dir = tempdir()?;
    let config = dir.join("record.yaml");
    std::fs::write(&config, agent_config(cluster, free_port(), "auto"))?;
    let mut child = Command::new(binary)
        .args(["record", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(out)
        .args(["--seconds", "15"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    if !first.starts_with("recording") {
        let _ = child.kill();
        bail!("pgmon-agent record did not start: {first}");
    }
    let result = workload();
    let summary: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait()?;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    if !status.success() {
        bail!("pgmon-agent record failed: {status}");
    }
    eprintln!("bench: {}", summary.join(" "));
    Ok(())
}

pub(crate) fn replay(binary: &Path, file: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(binary)
        .arg("replay")
        .arg(file)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "pgmon-agent replay failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `n` statements of distinct shapes (distinct aliases), mixing joins, aggregates, CTEs,
/// window functions and DML that touches no row.
pub(crate) fn miss_corpus(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let q = match i % 6 {
            0 => format!(
                "SELECT a.aid AS c{i}, a.abalance FROM pgbench_accounts a WHERE a.aid = {i};"
            ),
            1 => format!(
                "SELECT b.bid AS c{i}, count(*) FROM pgbench_branches b JOIN pgbench_accounts a ON a.bid = b.bid WHERE a.aid < {} GROUP BY b.bid;",
                i % 50
            ),
            2 => format!(
                "WITH t{i} AS (SELECT tid, tbalance FROM pgbench_tellers WHERE bid = 1) SELECT sum(tbalance) FROM t{i};"
            ),
            3 => format!(
                "SELECT aid, rank() OVER (ORDER BY abalance DESC) AS r{i} FROM pgbench_accounts WHERE aid BETWEEN {i} AND {};",
                i + 5
            ),
            4 => {
                format!("UPDATE pgbench_tellers AS u{i} SET tbalance = tbalance WHERE tid = -{i};")
            }
            _ => format!("DELETE FROM pgbench_history AS h{i} WHERE tid = -{i} AND mtime < now();"),
        };
        s.push_str(&q);
        s.push('\n');
    }
    s
}

pub(crate) fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "pgmon-bench-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
