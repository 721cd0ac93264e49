//! `cargo xtask test`: setup, release build (agent with its eBPF object), then the whole
//! test suite in one `cargo test` invocation (`--no-fail-fast`: every test binary runs, the
//! failures are summed up at the end), one test at a time (tests share the kernel's probes
//! and the machine's CPUs). It closes with one line that counts every suite together,
//! `summary: N passed, N failed, N skipped`, and names each failed and skipped test.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};

use crate::util::{agent_release_binary, build_release, cargo, describe};

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
    let skip_log = tempfile_path("pgmon-skips");
    let mut cmd = cargo();
    cmd.env("PGMON_AGENT_BIN", &agent)
        .env("PGMON_DEB", &deb)
        .env(pgmon_tests::SKIP_LOG_ENV, &skip_log)
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
        .args(&args.test_args);
    let started = std::time::Instant::now();
    let (status, mut tally) = run_tallying(&mut cmd)?;
    let mut skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    if args.test_args.is_empty() {
        kernel_matrix(&mut tally, &mut skips);
    }
    let _ = std::fs::remove_file(&skip_log);
    let summary = Summary::new(tally, &skips);
    summary.print(started.elapsed());
    if !status.success() || summary.failed > 0 {
        bail!("`{}` failed ({status})", describe(&cmd));
    }
    if summary.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The kernel matrix (issue 25): the capture suite in QEMU guests of the kernels and hook
/// families of [`crate::kernels::test_args`], each kernel × family counted as one test
/// named `kernel_matrix::<kernel>::<family>`: passed when the suite passed in the guest;
/// failed when it failed, the kernel refused the family, the guest did not finish, or the
/// matrix could not run at all. Skipped (with the reason) when not root, as the privileged
/// tests are.
fn kernel_matrix(tally: &mut Tally, skips: &mut String) {
    if !crate::util::is_root() {
        tally.passed += 1;
        skips.push_str("kernel_matrix: needs root (QEMU guests over the host's root)\n");
        return;
    }
    let args = crate::kernels::test_args();
    match crate::kernels::matrix(&args) {
        Ok(results) => {
            print!("{}", crate::kernels::table(&results));
            for r in &results {
                for (family, f) in &r.families {
                    let name = format!("kernel_matrix::{}::{family}", r.kernel);
                    if f.passed() && r.problem.is_none() {
                        println!("test {name} ... ok");
                        tally.passed += 1;
                    } else {
                        println!("test {name} ... FAILED");
                        tally.failed += 1;
                        tally.failed_names.push(name);
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("xtask: the kernel matrix could not run: {e:#}");
            tally.failed += 1;
            tally.failed_names.push("kernel_matrix".to_owned());
        }
    }
}

/// A path in the temporary directory for this run (not created).
fn tempfile_path(stem: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{stem}-{}.txt", std::process::id()))
}

/// What `cargo test`'s output said, summed over its test binaries.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// `test <name> ... FAILED` lines.
    failed_names: Vec<String>,
    /// `test <name> ... ignored[, reason]` lines.
    ignored_names: Vec<String>,
    /// `test result:` lines seen (one per test binary and doc-test run).
    binaries: u64,
}

impl Tally {
    /// Reads one line of `cargo test` output (libtest's format: `test x ... ok`,
    /// `test result: ok. 3 passed; 1 failed; 0 ignored; …`).
    fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, outcome)) = rest.split_once(" ... ")
        {
            if outcome == "FAILED" {
                self.failed_names.push(name.to_string());
            } else if outcome.starts_with("ignored") {
                self.ignored_names.push(rest.to_string());
            }
        }
    }
}

/// The closing count of a run.
#[derive(Debug, PartialEq)]
struct Summary {
    passed: u64,
    failed: u64,
    skipped: u64,
    failed_names: Vec<String>,
    /// `<test>: <reason>` of each skip ([`pgmon_tests::skip`] and `#[ignore]`).
    skipped_lines: Vec<String>,
}

impl Summary {
    /// Tests that returned early through [`pgmon_tests::skip`] passed as far as libtest
    /// knows; they move from passed to skipped here, beside the `#[ignore]`d ones.
    fn new(tally: Tally, skip_log: &str) -> Self {
        let skipped_lines: Vec<String> = skip_log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .chain(tally.ignored_names.iter().cloned())
            .collect();
        let runtime_skips = skipped_lines.len() as u64 - tally.ignored_names.len() as u64;
        Summary {
            passed: tally.passed.saturating_sub(runtime_skips),
            failed: tally.failed,
            skipped: runtime_skips + tally.ignored,
            failed_names: tally.failed_names,
            skipped_lines,
        }
    }

    fn print(&self, took: std::time::Duration) {
        println!();
        for name in &self.failed_names {
            println!("xtask: FAILED {name}");
        }
        for line in &self.skipped_lines {
            println!("xtask: skipped {line}");
        }
        println!("xtask: the tests took {:.0} s", took.as_secs_f64());
        println!(
            "summary: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        );
    }
}

/// Runs `cmd` with stdout piped through us (each line printed as it comes and read into a
/// [`Tally`]) and stderr inherited; stdin closed.
fn run_tallying(cmd: &mut std::process::Command) -> Result<(std::process::ExitStatus, Tally)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    let stdout = child.stdout.take().expect("piped");
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        tally.line(&line);
    }
    Ok((child.wait()?, tally))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
running 3 tests
test a::one ... ok
test a::two ... FAILED
test a::bench ... ignored, a measurement, not a check
test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 2 tests
test capture_pg15 ... ok
test capture_pg18 ... ok
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.50s
";

    #[test]
    fn tallies_libtest_output_and_moves_runtime_skips() {
        let mut tally = Tally::default();
        OUTPUT.lines().for_each(|l| tally.line(l));
        assert_eq!((tally.passed, tally.failed, tally.ignored), (3, 1, 1));
        assert_eq!(tally.binaries, 2);
        assert_eq!(tally.failed_names, ["a::two"]);
        let summary = Summary::new(tally, "capture_pg18: needs root\n");
        assert_eq!((summary.passed, summary.failed, summary.skipped), (2, 1, 2));
        assert_eq!(
            summary.skipped_lines,
            [
                "capture_pg18: needs root",
                "a::bench ... ignored, a measurement, not a check"
            ]
        );
    }
}
