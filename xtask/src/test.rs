//! `cargo xtask test`: setup, release build (agent with its eBPF object), then the whole
//! test suite in one `cargo test` invocation (`--no-fail-fast`: every test binary runs, the
//! failures are summed up at the end), one test at a time (tests share the kernel's probes
//! and the machine's CPUs).

use anyhow::Result;

use crate::util::{agent_release_binary, build_release, cargo, run_streaming};

/// Arguments of `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (the machine is known to be ready).
    #[arg(long)]
    no_setup: bool,
    /// Passed to the test binaries after `--test-threads=1` (e.g. a test name filter,
    /// `--nocapture`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    test_args: Vec<String>,
}

/// Runs setup, the build and the tests; fails if any of them fails.
pub fn run(args: &TestArgs) -> Result<()> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    build_release()?;
    let agent = agent_release_binary();
    eprintln!("xtask: PGMON_AGENT_BIN={}", agent.display());
    let deb = crate::package::build()?;
    eprintln!("xtask: PGMON_DEB={}", deb.display());
    run_streaming(
        cargo()
            .env("PGMON_AGENT_BIN", &agent)
            .env("PGMON_DEB", &deb)
            .args([
                "test",
                "--release",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "pgmon-ebpf",
                "--",
                "--test-threads=1",
            ])
            .args(&args.test_args),
    )
}
