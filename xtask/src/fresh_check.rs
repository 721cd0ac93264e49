//! `cargo xtask fresh-check --yes`: proves the README's two commands on a machine as it
//! comes. CI runs on a machine that earlier sessions set up, so a green CI cannot show that
//! `cargo xtask demo` and `cargo xtask test` work where nothing was installed yet (issue 17:
//! the demo once died on a new machine before set-up could run). This command makes this
//! machine new again and runs both, from a fresh clone, with no standard input:
//!
//! 1. takes away what `cargo xtask setup` installs and a new Debian 12 machine of this kind
//!    lacks: the apt packages of [`crate::setup::APT_PACKAGES`] not in [`NEW_MACHINE_HAS`]
//!    (purged, then `apt-get autoremove --purge` for what they pulled in: libclang, LLVM),
//!    `bpf-linker`, the `rust-src` component, `/opt/pgmon-test` (PostgreSQL from npm,
//!    promtool) and the C storage trigger set-up built into PostgreSQL 15;
//! 2. clones the committed `HEAD` of this workspace into a temporary directory (uncommitted
//!    changes are not part of the check);
//! 3. runs `cargo xtask demo`, then `cargo xtask test` there, each timed, stdin closed;
//! 4. prints both wall times and removes the clone.
//!
//! Destructive by design, so it refuses to run without `--yes`. It keeps the cargo registry
//! cache (a new machine downloads the crates: minutes at most) and set-up's edit of
//! `createcluster.conf` (it only stops Debian's default cluster from being created).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, describe, run_capture, run_streaming, try_capture, workspace_root};

/// Packages of [`crate::setup::APT_PACKAGES`] that a new machine already has (read off a new
/// machine of this kind: the Rust toolchain, gcc and make, Debian's PostgreSQL 15 with
/// contrib and psql, systemd, strace, curl, openssl, xz-utils, zstd, the archive keyring;
/// the last three are listed in `installed-rust.txt` of the workplace's package lists).
/// Every other package set-up installs is purged by the check, so a package added to set-up
/// is covered without editing this list.
pub const NEW_MACHINE_HAS: &[&str] = &[
    "gcc",
    "libc6-dev",
    "pkg-config",
    "curl",
    "zlib1g-dev",
    "postgresql-15",
    "postgresql-contrib-15",
    "postgresql-client-15",
    "make",
    "openssl",
    "systemd",
    "strace",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
];

/// Files set-up's C-trigger step installs into Debian's PostgreSQL 15 (`make install` of
/// `sql/native`).
const PG15_TRIGGER_FILES: &[&str] = &[
    "/usr/lib/postgresql/15/lib/pgmon_storage.so",
    "/usr/lib/postgresql/15/lib/bitcode/pgmon_storage.index.bc",
    "/usr/lib/postgresql/15/lib/bitcode/pgmon_storage",
];

/// Arguments of `cargo xtask fresh-check`.
#[derive(clap::Args)]
pub struct FreshCheckArgs {
    /// Confirm: purge what set-up installed on this machine, then set it up again from a
    /// fresh clone.
    #[arg(long)]
    yes: bool,
    /// Strip the machine and stop (no clone, no demo, no tests).
    #[arg(long)]
    strip_only: bool,
    /// Keep the clone (and its target directory, several GB) for a look afterwards.
    #[arg(long)]
    keep_clone: bool,
}

/// Strips the machine, then runs the two commands in a fresh clone; fails if either fails.
pub fn run(args: &FreshCheckArgs) -> Result<()> {
    if !args.yes {
        bail!(
            "fresh-check purges what `cargo xtask setup` installed ({}, bpf-linker, rust-src, \
             /opt/pgmon-test), then runs `cargo xtask demo` and `cargo xtask test` in a fresh \
             clone to prove they work on a new machine; pass --yes to go ahead",
            setup_only_packages().join(", ")
        );
    }
    if !crate::util::is_root() {
        bail!("`cargo xtask fresh-check` must run as root (apt-get purge, /opt)");
    }
    let dirty = try_capture(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(workspace_root()),
    )
    .unwrap_or_default();
    if !dirty.trim().is_empty() {
        eprintln!("xtask: note: uncommitted changes are not part of the check (it clones HEAD)");
    }
    let started = Instant::now();
    strip()?;
    println!(
        "fresh-check: stripped the machine in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if args.strip_only {
        return Ok(());
    }
    let clone = std::env::temp_dir().join(format!("pgmon-fresh-check-{}", std::process::id()));
    run_streaming(
        Command::new("git")
            .args(["clone", "--quiet", "--no-local"])
            .arg(workspace_root())
            .arg(&clone),
    )?;
    let head = run_capture(
        Command::new("git")
            .args(["log", "-1", "--format=%h %s"])
            .current_dir(&clone),
    )?;
    println!(
        "fresh-check: clone of {} at {}",
        head.trim(),
        clone.display()
    );
    let mut times = Vec::new();
    let mut failure = None;
    for task in ["demo", "test"] {
        let t0 = Instant::now();
        let result = run_streaming(&mut xtask_in(&clone, task));
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "fresh-check: `cargo xtask {task}` {} after {secs:.0} s",
            if result.is_ok() { "passed" } else { "FAILED" }
        );
        times.push((task, secs, result.is_ok()));
        if let Err(e) = result {
            failure = Some(e.context(format!("cargo xtask {task} in the fresh clone")));
            break;
        }
    }
    if args.keep_clone {
        println!("fresh-check: the clone stays at {}", clone.display());
    } else {
        let _ = std::fs::remove_dir_all(&clone);
    }
    println!();
    for (task, secs, ok) in &times {
        println!(
            "fresh-check: cargo xtask {task:<5} {:>6.0} s  {}",
            secs,
            if *ok { "ok" } else { "FAILED" }
        );
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The packages set-up installs that a new machine lacks.
fn setup_only_packages() -> Vec<&'static str> {
    crate::setup::APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !NEW_MACHINE_HAS.contains(p))
        .collect()
}

/// `cargo xtask <task>` in `dir`, as a user would type it there: stdin closed, the target
/// directory the clone's own.
fn xtask_in(dir: &Path, task: &str) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(dir)
        .args(["xtask", task])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("PGMON_AGENT_BIN")
        .env_remove("PGMON_DEB")
        .stdin(Stdio::null());
    cmd
}

/// Takes away what set-up installs (module docs, step 1).
fn strip() -> Result<()> {
    let installed: Vec<&str> = setup_only_packages()
        .into_iter()
        .filter(|p| {
            try_capture(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", p]))
                .is_some_and(|s| s.starts_with("ii"))
        })
        .collect();
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        run_streaming(&mut cmd)
    };
    if installed.is_empty() {
        println!("fresh-check: no set-up package installed");
    } else {
        let mut args = vec!["purge", "-y", "-q"];
        args.extend(&installed);
        apt(&args)?;
        println!("fresh-check: purged {}", installed.join(" "));
    }
    apt(&["autoremove", "--purge", "-y", "-q"])?;

    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let linker = cargo_home.join("bin/bpf-linker");
    if linker.exists() {
        let mut uninstall = cargo();
        uninstall.args(["uninstall", "bpf-linker"]);
        if let Err(e) = run_capture(&mut uninstall) {
            eprintln!(
                "xtask: `{}`: {e:#}; removing the file",
                describe(&uninstall)
            );
            std::fs::remove_file(&linker)
                .with_context(|| format!("cannot remove {}", linker.display()))?;
        }
        println!("fresh-check: removed {}", linker.display());
    }

    let toolchains = run_capture(Command::new("rustup").args(["toolchain", "list"]))?;
    for tc in toolchains
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let components = try_capture(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            tc,
        ]))
        .unwrap_or_default();
        if components.lines().any(|l| l.starts_with("rust-src")) {
            run_streaming(Command::new("rustup").args([
                "component",
                "remove",
                "rust-src",
                "--toolchain",
                tc,
            ]))?;
            println!("fresh-check: removed rust-src ({tc})");
        }
    }

    for path in [Path::new("/opt/pgmon-test")]
        .into_iter()
        .chain(PG15_TRIGGER_FILES.iter().map(Path::new))
    {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else if path.exists() {
            std::fs::remove_file(path)
        } else {
            continue;
        };
        removed.with_context(|| format!("cannot remove {}", path.display()))?;
        println!("fresh-check: removed {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_what_a_new_machine_lacks_and_keeps_what_it_has() {
        let strip = setup_only_packages();
        for p in ["libclang-dev", "llvm-22-dev", "postgresql-server-dev-15"] {
            assert!(strip.contains(&p), "{p} is not stripped: {strip:?}");
        }
        for p in ["postgresql-15", "gcc", "systemd"] {
            assert!(!strip.contains(&p), "{p} would be purged");
        }
        for p in NEW_MACHINE_HAS {
            assert!(
                crate::setup::APT_PACKAGES.contains(p),
                "{p} is listed as on a new machine but set-up does not ask for it"
            );
        }
    }
}
