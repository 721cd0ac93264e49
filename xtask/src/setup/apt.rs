//! The Debian packages setup installs: the list (also what `fresh-check` purges) and one
//! `apt-get install` of those `dpkg-query` does not report installed.

use std::collections::HashSet;
use std::process::Command;

use anyhow::{Context as _, Result};

use super::ok;
use crate::util::{run_streaming, which};

/// Debian packages the build, the tests and the demo need. `clang` is not needed (bindgen
/// uses libclang; C is compiled by gcc). `postgresql-contrib-15` is provided by
/// `postgresql-15` on Debian 12 (pg_stat_statements).
pub(crate) const APT_PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "pkg-config",
    "curl",
    "llvm-22-dev",
    "libclang-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "postgresql-15",
    "postgresql-contrib-15",
    "postgresql-client-15",
    // Server headers, PGXS and make, for the C storage trigger (sql/native).
    "make",
    "postgresql-server-dev-15",
    // The TLS test makes a self-signed certificate for its cluster.
    "openssl",
    // The install tests: `systemd-analyze verify` and `security` on the unit (PID 1 need
    // not be systemd), strace for the unit's system-call filter.
    "systemd",
    "strace",
    // The alert tests receive the agent's email on a loopback SMTP server (run with
    // Debian's /usr/bin/python3 -m aiosmtpd).
    "python3-aiosmtpd",
    // The driver tests run psycopg 3 from PyPI in a virtual environment of Debian's python3.
    "python3-venv",
    // The web UI's browser test drives Debian's Chromium over WebDriver (chromedriver).
    "chromium",
    "chromium-driver",
    // The bench's proxy reference: pgbench through PgBouncer (run from its own directory as
    // the cluster's user; the package's own service is never started here).
    "pgbouncer",
    // The kernel matrix (`cargo xtask kernels`, issue 25): QEMU's x86 system emulator, a
    // static busybox, cpio and kmod's depmod for the guests' initramfs; xz-utils and zstd
    // for compressed kernel modules; the archive keyring for the bullseye and
    // bookworm-backports suites the guest kernels come from.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
];

/// Installed packages and the virtual packages they provide (`dpkg-query`, one call).
fn installed_packages() -> Result<HashSet<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package}\t${db:Status-Abbrev}\t${Provides}\n"])
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    let mut set = HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split('\t');
        let (Some(pkg), Some(status)) = (f.next(), f.next()) else {
            continue;
        };
        if !status.starts_with("ii") {
            continue;
        }
        set.insert(pkg.to_string());
        for provided in f.next().unwrap_or("").split(',') {
            if let Some(name) = provided.split_whitespace().next() {
                set.insert(name.to_string());
            }
        }
    }
    Ok(set)
}

pub(super) fn apt_packages() -> Result<()> {
    let installed = installed_packages()?;
    let mut wanted: Vec<&str> = APT_PACKAGES.to_vec();
    if which("npm").is_none() {
        wanted.push("npm");
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(*p))
        .collect();
    if missing.is_empty() {
        ok(&format!("apt packages ({})", wanted.join(" ")));
        return Ok(());
    }
    let apt = |args: &[&str]| -> Result<()> {
        run_streaming(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "-o",
                    "Dpkg::Options::=--force-confdef",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                ])
                .args(args),
        )
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    println!("installed apt packages ({})", missing.join(" "));
    Ok(())
}
