//! `cargo xtask kernels [--kernel 5.10|6.1|6.12|all]`: the agent on other kernels than the
//! host's (issue 25). The host runs one kernel (6.18 here, which refuses fexit), so the hook
//! families that only older or newer kernels load or refuse are never exercised by
//! `cargo xtask test`. This command boots Debian's own kernel images in QEMU and runs the
//! release agent in each:
//!
//! 1. fetches `linux-image-<release>` of the kernel's suite (6.1: bookworm, 5.10: bullseye,
//!    6.12: bookworm-backports) through a private apt configuration under
//!    [`KERNELS_DIR`]`/apt/<suite>` (its own `sources.list`, lists and cache: the host's apt
//!    state is never read for sources nor written), never installing it: `apt-get download`,
//!    `dpkg -x` into [`KERNELS_DIR`]`/<kernel>/`, then `depmod` (Debian's packages ship no
//!    `modules.dep`). A kernel already unpacked is reused;
//! 2. builds a busybox initramfs (Debian's `busybox-static`) holding the virtio, 9p and
//!    overlay modules of that kernel; its `/init` mounts the host's `/` read-only over
//!    virtio-9p under a tmpfs overlay (plain tmpfs on `/tmp`, `/run`, `/var` when overlayfs
//!    refuses the 9p lower layer), mounts proc, sys, dev, debugfs, tracefs and bpffs, runs
//!    the guest script from a second, writable 9p share, writes its output and exit code
//!    there, and reboots (QEMU runs with `-no-reboot`, so that ends it);
//! 3. boots `qemu-system-x86_64 -accel tcg` (never KVM: this machine's /dev/kvm is a
//!    software backend that hangs stock kernels), pinned to one core by `taskset`, bounded by
//!    `timeout`. The guest script starts Debian's PostgreSQL 15 from the host's files
//!    (initdb into tmpfs, socket in the same dir) and runs `pgmon-agent doctor` once per
//!    hook family with `capture.hooks` forced to it; then (unless `--doctor-only`), for
//!    each family whose doctor says it loads, the capture suite itself ([`CAPTURE_TEST`],
//!    the test binary of `tests/tests/capture.rs`) with `PGMON_TEST_HOOKS` set to the
//!    family: the same assertions as on the host, not a second copy of them;
//! 4. prints a table kernel × family: the suite's verdict (passed with its count of exact
//!    runs and the family in use, or its first failure), doctor's verdict (loads with its
//!    cost rank, or refused and why), and each guest's wall time (boot to power-off) with
//!    its uptime at each stage.
//!
//! Emulated guests run 20–100× slower than the host: the matrix proves loading, attaching
//! and exact counts, never cost.
//!
//! Each guest's files stay in `KERNELS_DIR/run/<kernel>/`: `guest.sh`, `output.txt`, `rc`,
//! `console.log` (the serial console) and `capture-<family>.log`. `--report-only` boots
//! nothing and renders the table (and the README's) again from those outputs.
//!
//! Needs root (apt, dpkg, 9p export of `/` with the host's permissions) and the host packages
//! `cargo xtask setup` installs (QEMU, busybox, cpio, kmod: see
//! [`crate::setup::APT_PACKAGES`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

mod guest;
mod image;

use guest::boot;
use image::{build_initramfs, fetch, kernel_release};

use crate::util::{agent_release_binary, cargo, is_root, run_capture, run_streaming, which};

/// Where kernels, the private apt state, the initramfs and each guest's output live.
pub const KERNELS_DIR: &str = "/opt/pgmon-test/kernels";

/// The hook families `capture.hooks` accepts, cheapest first, then `auto` (the agent's own
/// choice: the cheapest that loads). Source: `pgmon-agent/src/capture/hooks.rs`.
pub const FAMILIES: &[&str] = &[
    "fexit",
    "tp_btf_sock",
    "tp_btf",
    "tracepoint",
    "raw_tracepoint",
    "auto",
];

/// Modules the initramfs loads (with their dependencies, per `modules.dep`), those built into
/// the kernel skipped: virtio's PCI transport, 9p over virtio, and overlayfs.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The capture suite's test run in each guest, once per hook family the kernel accepts:
/// `tests/tests/capture.rs`'s PostgreSQL 15 suite (pgbench -S under every protocol and with
/// -C over unix and TCP, pgmon's count = pgbench's = pg_stat_statements', two roles at once,
/// a connection older than the agent, a 100 KiB query, another cluster left alone, nothing
/// dropped or desynced), the family forced by `PGMON_TEST_HOOKS`.
pub const CAPTURE_TEST: &str = "capture_pg15";

/// One kernel of the matrix: the name on the command line and where Debian ships it.
struct Kernel {
    /// `5.10`, `6.1` or `6.12`.
    name: &'static str,
    /// Debian suite whose `linux-image-amd64` depends on this kernel's image package.
    suite: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
    },
    Kernel {
        name: "6.12",
        suite: "bookworm-backports",
    },
];

/// Arguments of `cargo xtask kernels`.
#[derive(clap::Args)]
pub struct KernelsArgs {
    /// Which kernels, comma-separated: 5.10 (bullseye), 6.1 (bookworm), 6.12
    /// (bookworm-backports), or all.
    #[arg(long, value_delimiter = ',', default_value = "6.1")]
    kernel: Vec<String>,
    /// Hook families to try, comma-separated, of fexit, tp_btf_sock, tp_btf, tracepoint,
    /// raw_tracepoint, auto.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fexit,tp_btf_sock,tp_btf,tracepoint,raw_tracepoint,auto"
    )]
    families: Vec<String>,
    /// Only `pgmon-agent doctor` per hook family; not the capture suite.
    #[arg(long)]
    doctor_only: bool,
    /// The host CPU QEMU is pinned to (`taskset -c`).
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Seconds a guest may take from boot to power-off before `timeout` ends it (the
    /// capture suite takes minutes per family under emulation).
    #[arg(long, default_value_t = 3600)]
    timeout: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Seconds the capture suite may take per family in a guest before `timeout` ends it.
    #[arg(long, default_value_t = 900)]
    suite_timeout: u32,
    /// Skip `cargo build --release -p pgmon-agent` (use the binary as it is).
    #[arg(long)]
    no_build: bool,
    /// Boot nothing: read each kernel's last guest output (`KERNELS_DIR/run/<kernel>/
    /// output.txt`) and print its table again (and, for the full matrix, write the README's).
    /// The wall time shown is then the guest's own uptime at its end.
    #[arg(long)]
    report_only: bool,
}

/// What one guest reported about one hook family.
#[derive(Default)]
pub struct FamilyResult {
    /// The doctor's `hooks` line without its name: `ok    fexit loads and attaches (cost
    /// rank 0)` or `FAIL  no hook family could be attached: …`; `None` when none came back.
    doctor: Option<String>,
    /// Why the capture suite did not run for this family (doctor refused it).
    skipped: Option<String>,
    /// The capture suite's exit code in the guest (0: every check passed); `None` when it
    /// did not run or did not finish.
    suite_exit: Option<i32>,
    /// The suite's per-run count lines (`… pgbench N tx, pgmon N, pg_stat_statements N`).
    counts: Vec<String>,
    /// The suite's `FAIL: …` lines.
    failures: Vec<String>,
    /// The hook family the agent used (from the suite's `hook family asked: …, in use: …`).
    in_use: Option<String>,
}

impl FamilyResult {
    /// Whether the capture suite ran and passed.
    pub fn passed(&self) -> bool {
        self.suite_exit == Some(0)
    }
}

/// What one guest reported.
pub struct GuestResult {
    pub kernel: &'static str,
    /// `uname -r` of the guest, e.g. `6.1.0-50-amd64`.
    release: String,
    /// Boot to power-off, as the host measured it.
    wall: Duration,
    /// Guest uptime (s) when the script started, PostgreSQL was up, the doctors were done
    /// and the script ended (`@@ … at uptime` markers; the guest clock runs on TCG's time).
    uptimes: Vec<(String, f64)>,
    /// Per family asked for, in order.
    pub families: Vec<(String, FamilyResult)>,
    /// Why the guest's report is incomplete, if it is.
    pub problem: Option<String>,
}

/// Fetches, boots and reports each kernel asked for; fails if a kernel cannot be fetched or
/// booted, or (after the table) if a guest's script did not finish or the capture suite
/// failed on a family the kernel accepts. A hook family a kernel refuses is a result in the
/// table, not a failure.
pub fn run(args: &KernelsArgs) -> Result<()> {
    if !args.no_build && !args.report_only {
        run_streaming(cargo().args(["build", "--release", "-p", "pgmon-agent"]))?;
    }
    let results = matrix(args)?;
    print!("{}", table(&results));
    let full = (args.kernel.iter().any(|k| k == "all")
        || KERNELS
            .iter()
            .all(|k| args.kernel.iter().any(|a| a == k.name)))
        && FAMILIES
            .iter()
            .all(|f| args.families.iter().any(|a| a == f))
        && !args.doctor_only;
    if full {
        write_readme(&results)?;
    } else {
        println!("(a partial matrix: the README's kernel table is left as it is)");
    }
    let unfinished: Vec<&str> = results
        .iter()
        .filter(|r| r.problem.is_some())
        .map(|r| r.kernel)
        .collect();
    if !unfinished.is_empty() {
        bail!(
            "the guest script did not finish on {} (see {KERNELS_DIR}/run/<kernel>/console.log)",
            unfinished.join(", ")
        );
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.families
                .iter()
                .filter(|(_, f)| f.skipped.is_none() && !f.passed())
                .map(move |(family, _)| format!("{} {family}", r.kernel))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "the capture suite failed on {} (see {KERNELS_DIR}/run/<kernel>/capture-<family>.log)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The arguments `cargo xtask test` runs the matrix with: 6.1 and 5.10, the agent on `auto`
/// (fexit on both) and on `tp_btf` (the family kernels 5.5–6.2 fall back to where fexit is
/// refused); the release agent and test binaries as the test run built them.
pub fn test_args() -> KernelsArgs {
    KernelsArgs {
        kernel: vec!["6.1".into(), "5.10".into()],
        families: vec!["auto".into(), "tp_btf".into()],
        doctor_only: false,
        cpu: 1,
        timeout: 2400,
        memory: 2048,
        suite_timeout: 900,
        no_build: true,
        report_only: false,
    }
}

/// Fetches and boots each kernel of `args` in turn (the release agent must be built);
/// returns what each guest reported.
pub fn matrix(args: &KernelsArgs) -> Result<Vec<GuestResult>> {
    if !is_root() {
        bail!("cargo xtask kernels needs root (apt-get download, dpkg -x, 9p export of /)");
    }
    let names: Vec<&str> = if args.kernel.iter().any(|k| k == "all") {
        KERNELS.iter().map(|k| k.name).collect()
    } else {
        args.kernel.iter().map(String::as_str).collect()
    };
    let kernels = names
        .iter()
        .map(|name| {
            KERNELS
                .iter()
                .find(|k| k.name == *name)
                .with_context(|| format!("unknown kernel {name:?}: 5.10, 6.1, 6.12 or all"))
        })
        .collect::<Result<Vec<&Kernel>>>()?;
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "taskset",
        "timeout",
        "dpkg",
    ] {
        if which(tool).is_none() {
            bail!("{tool} is not on PATH: run `cargo xtask setup` (it installs the host packages)");
        }
    }
    if args.report_only {
        return kernels.iter().map(|k| last_run(args, k)).collect();
    }
    let agent = agent_release_binary();
    if !agent.is_file() {
        bail!(
            "{} is missing (cargo build --release -p pgmon-agent)",
            agent.display()
        );
    }
    if let Some(bad) = args
        .families
        .iter()
        .find(|f| !FAMILIES.contains(&f.as_str()))
    {
        bail!(
            "unknown hook family {bad:?}: one of {}",
            FAMILIES.join(", ")
        );
    }
    let suite = if args.doctor_only {
        None
    } else {
        Some(capture_test_binary()?)
    };
    let mut results = Vec::new();
    for k in kernels {
        let root = fetch(k)?;
        let release = kernel_release(&root)?;
        let initrd = build_initramfs(k, &root, &release)?;
        results.push(boot(
            args,
            k,
            &root,
            &release,
            &initrd,
            &agent,
            suite.as_deref(),
        )?);
    }
    Ok(results)
}

/// The last run of kernel `k` as its guest left it (`--report-only`). Errors: no guest
/// output for `k`.
fn last_run(args: &KernelsArgs, k: &Kernel) -> Result<GuestResult> {
    let path = run_dir(k.name).join("output.txt");
    let output = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no earlier run of kernel {}: {} is unreadable",
            k.name,
            path.display()
        )
    })?;
    let mut res = guest::parse(k.name, &output, Duration::ZERO, &args.families);
    res.wall = Duration::from_secs_f64(res.uptimes.last().map_or(0.0, |(_, t)| *t));
    if !run_dir(k.name).join("rc").is_file() {
        res.problem = Some(format!(
            "guest script did not finish (see {})",
            run_dir(k.name).join("console.log").display()
        ));
    }
    Ok(res)
}

/// Where the guest of kernel `name` writes its files.
pub(super) fn run_dir(name: &str) -> PathBuf {
    PathBuf::from(KERNELS_DIR).join("run").join(name)
}

/// The capture suite's test binary (`cargo test --release -p pgmon-tests --test capture
/// --no-run`, built if it is not), from cargo's JSON messages.
fn capture_test_binary() -> Result<PathBuf> {
    let out = run_capture(cargo().args([
        "test",
        "--release",
        "-p",
        "pgmon-tests",
        "--test",
        "capture",
        "--no-run",
        "--message-format=json",
    ]))?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "capture")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no executable for the capture test")
}

/// One family's capture-suite verdict, for the table: `passed: N runs exact (fexit)`,
/// `FAILED (exit N): first failure`, `refused`, or `-` when it did not run.
fn suite_verdict(f: &FamilyResult) -> String {
    let used = f
        .in_use
        .as_ref()
        .map(|u| format!(" ({u})"))
        .unwrap_or_default();
    match (f.suite_exit, &f.skipped) {
        (_, Some(_)) => "refused (not run)".to_owned(),
        (Some(0), _) => format!("passed: {} runs exact{used}", f.counts.len()),
        (Some(rc), _) => format!(
            "FAILED (exit {rc}){used}: {}",
            f.failures.first().map_or("see its log", String::as_str)
        ),
        (None, None) => "-".to_owned(),
    }
}

/// The report: one row per kernel × family (doctor's verdict, the capture count), then the
/// wall time and guest uptimes per kernel.
pub fn table(results: &[GuestResult]) -> String {
    let mut s = format!(
        "\n{:<7} {:<22} {:<15} {:<40} doctor\n",
        "kernel", "release", "family", "capture suite (counts exact?)"
    );
    for r in results {
        for (family, f) in &r.families {
            let doctor = match &f.doctor {
                None => "no report".to_owned(),
                Some(l) if l.starts_with("ok") => {
                    format!("loads: {}", l.trim_start_matches("ok").trim())
                }
                Some(l) => format!("refused: {}", l.trim_start_matches("FAIL").trim()),
            };
            let _ = writeln!(
                s,
                "{:<7} {:<22} {:<15} {:<40} {doctor}",
                r.kernel,
                r.release,
                family,
                suite_verdict(f)
            );
        }
    }
    s.push_str("\nkernel  wall (boot to power-off)  guest uptime at: ");
    if let Some(r) = results.first() {
        let names: Vec<&str> = r.uptimes.iter().map(|(n, _)| n.as_str()).collect();
        s.push_str(&names.join(" / "));
    }
    s.push('\n');
    for r in results {
        let uptimes: Vec<String> = r.uptimes.iter().map(|(_, t)| format!("{t:.1} s")).collect();
        let _ = writeln!(
            s,
            "{:<7} {:>6.1} s                  {}{}",
            r.kernel,
            r.wall.as_secs_f64(),
            uptimes.join(" / "),
            r.problem
                .as_ref()
                .map(|p| format!("  [{p}]"))
                .unwrap_or_default()
        );
    }
    s
}

/// Markers around the README's kernel table, which a full matrix run rewrites (issue 25: the
/// table is the matrix's last run, never written by hand).
const README_BEGIN: &str =
    "<!-- kernel-matrix: written by `cargo xtask kernels --kernel all`; do not edit -->";
const README_END: &str = "<!-- /kernel-matrix -->";

/// The README's table of `results`: one row per kernel, one column per hook family, each
/// cell the capture suite's verdict or the kernel's refusal; the family `auto` picked last.
fn readme_table(results: &[GuestResult]) -> String {
    let named: Vec<&str> = FAMILIES.iter().copied().filter(|f| *f != "auto").collect();
    let mut s = format!(
        "| kernel | {} | `auto` picks |\n|---|{}---|\n",
        named
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(named.len())
    );
    for r in results {
        let cell = |family: &str| {
            let Some((_, f)) = r.families.iter().find(|(n, _)| n == family) else {
                return "not run".to_owned();
            };
            if f.skipped.is_some() {
                return format!("refused: {}", refusal(f.doctor.as_deref().unwrap_or("")));
            }
            match f.suite_exit {
                Some(0) => format!("loads, counts exact ({} runs)", f.counts.len()),
                Some(rc) => format!("FAILED (exit {rc})"),
                None => "no result".to_owned(),
            }
        };
        let auto = r
            .families
            .iter()
            .find(|(n, _)| n == "auto")
            .and_then(|(_, f)| f.in_use.clone())
            .map_or("?".to_owned(), |u| format!("`{u}`"));
        let _ = writeln!(
            s,
            "| {} (`{}`) | {} | {auto} |",
            r.kernel,
            r.release,
            named
                .iter()
                .map(|f| cell(f))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    s
}

/// The root cause of a doctor's refusal, for a table cell: the text after the last `": "`
/// of its `FAIL …` line (doctor chains the family, the program and the kernel's reason),
/// at most [`REFUSAL_CHARS`] characters; a cut one loses its backticks, so no code span is
/// left open.
fn refusal(doctor: &str) -> String {
    let why = doctor.trim_start_matches("FAIL").trim();
    let cause = why.rsplit(": ").next().unwrap_or(why).trim();
    if cause.is_empty() {
        return "refused by the kernel".to_owned();
    }
    if cause.chars().count() <= REFUSAL_CHARS {
        return cause.to_owned();
    }
    let cut: String = cause
        .chars()
        .filter(|&c| c != '`')
        .take(REFUSAL_CHARS)
        .collect();
    format!("{cut}…")
}

/// Longest refusal in a README cell.
const REFUSAL_CHARS: usize = 100;

/// Rewrites the README's kernel table (between [`README_BEGIN`] and [`README_END`]) from a
/// full matrix run. Errors: the README is unreadable or lacks the markers.
fn write_readme(results: &[GuestResult]) -> Result<()> {
    let path = crate::util::workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(a), Some(b)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!(
            "{} lacks the kernel-matrix markers ({README_BEGIN} … {README_END})",
            path.display()
        );
    };
    // The day of the run (its guests' output), not of this rendering.
    let mut date = Command::new("date");
    date.args(["-u", "+%Y-%m-%d"]);
    if let Some(r) = results.first() {
        date.arg("-r").arg(run_dir(r.kernel).join("output.txt"));
    }
    let date = run_capture(&mut date)?;
    let new = format!(
        "{README_BEGIN}\n{}\nLast run {}, QEMU (TCG) guests of Debian's kernels, PostgreSQL 15; \
         emulated guests run 20–100× slower than a host, so this proves loading, attaching and \
         exact counts, not cost.\n",
        readme_table(results),
        date.trim()
    );
    let text = format!("{}{new}{}", &text[..a], &text[b..]);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote the kernel table into {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refusal;

    /// A README cell names the kernel's reason, not doctor's chain of family and program,
    /// and never leaves a code span open.
    #[test]
    fn refusal_is_the_root_cause() {
        assert_eq!(
            refusal(
                "FAIL  no hook family could be attached: tp_btf_sock: pgmon_sock_recv_length: \
                 unknown BTF type `btf_trace_sock_recv_length`"
            ),
            "unknown BTF type `btf_trace_sock_recv_length`"
        );
        let long = format!("FAIL x: `{}`", "a".repeat(200));
        let cut = refusal(&long);
        assert!(cut.ends_with('…') && !cut.contains('`'), "{cut}");
        assert_eq!(cut.chars().count(), 101);
        assert_eq!(refusal(""), "refused by the kernel");
    }
}
