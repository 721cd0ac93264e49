//! `cargo xtask package`: the Debian package, built with `dpkg-deb` (part of dpkg, on every
//! Debian host; nothing to install) from a staged tree:
//!
//! - `/usr/bin/pgmon-agent` (release build, probes embedded, debug info stripped)
//! - `/lib/systemd/system/pgmon-agent.service`
//! - `/etc/pgmon/pgmon.yaml` (the commented default policy) and `/etc/default/pgmon-agent`,
//!   both conffiles (an upgrade keeps local edits)
//! - `/usr/share/pgmon/sql/*.sql`, `/usr/share/pgmon/native/` (the C storage trigger's
//!   source and PGXS Makefile, built on the host against its PostgreSQL's headers),
//!   `/usr/share/pgmon/alerts/pgmon-rules.yml`,
//!   `/usr/share/pgmon/grafana/pgmon.json`, `/usr/share/doc/pgmon/README.md`
//!
//! The postinst creates the system user `pgmon` and `/var/lib/pgmon`, reloads systemd if it
//! runs, and starts nothing: the unit is enabled by hand once the policy is written and
//! `pgmon-agent doctor` is happy. Removal stops the unit if it runs; purge removes
//! `/var/lib/pgmon` (the user stays, as Debian's policy advises for system users).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::util::{agent_release_binary, build_release, run_capture, target_dir, workspace_root};

/// Arguments of `cargo xtask package`.
#[derive(clap::Args)]
pub struct PackageArgs {
    /// Use the release binary already built (skip `cargo build --release`).
    #[arg(long)]
    no_build: bool,
}

/// The package's path: `target/debian/pgmon_<version>_amd64.deb`.
pub fn deb_path() -> PathBuf {
    target_dir().join(format!(
        "debian/pgmon_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Builds (unless `no_build`), stages and packs; prints the package's path.
pub fn run(args: &PackageArgs) -> Result<()> {
    if !args.no_build {
        build_release()?;
    }
    let deb = build()?;
    println!("{}", deb.display());
    Ok(())
}

const CONTROL: &str = "Package: pgmon
Version: {version}
Architecture: amd64
Maintainer: pgmon developers <pgmon@localhost>
Section: database
Priority: optional
Depends: libc6 (>= 2.36), adduser
Recommends: postgresql-client
Installed-Size: {size_kib}
Homepage: file:///usr/share/doc/pgmon/README.md
Description: PostgreSQL query, quota and health agent (eBPF)
 pgmon watches every query a PostgreSQL cluster's backends receive through eBPF
 probes on their client sockets, attributes it to its role, keeps per-role budgets
 and storage quotas, polls the server's health, alerts, and exports everything to
 Prometheus. Configure /etc/pgmon/pgmon.yaml, run `pgmon-agent install-sql` and
 `pgmon-agent doctor`, then `systemctl enable --now pgmon-agent`.
";

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd pgmon >/dev/null; then
        adduser --system --group --home /var/lib/pgmon --no-create-home \
            --gecos "pgmon agent" pgmon >/dev/null
    fi
    install -d -o pgmon -g pgmon -m 0750 /var/lib/pgmon
    chgrp pgmon /etc/pgmon/pgmon.yaml && chmod 0640 /etc/pgmon/pgmon.yaml
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
    echo "pgmon installed; nothing started. Next: edit /etc/pgmon/pgmon.yaml," \
         "pgmon-agent install-sql --dsn 'host=/var/run/postgresql user=postgres'," \
         "pgmon-agent doctor, systemctl enable --now pgmon-agent"
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop pgmon-agent.service >/dev/null 2>&1 || true
    systemctl disable pgmon-agent.service >/dev/null 2>&1 || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/pgmon
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
"#;

/// Stages and packs the release binary already built; returns the package's path.
pub fn build() -> Result<PathBuf> {
    let root = workspace_root();
    let stage = target_dir().join("debian/stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().expect("has a parent"))?;
        fs::copy(from, &dest).with_context(|| format!("{} -> {}", from.display(), to))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let write = |to: &str, text: &str, mode: u32| -> Result<()> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().expect("has a parent"))?;
        fs::write(&dest, text)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };

    put(&agent_release_binary(), "usr/bin/pgmon-agent", 0o755)?;
    run_capture(
        Command::new("strip")
            .args(["--strip-debug"])
            .arg(stage.join("usr/bin/pgmon-agent")),
    )?;
    put(
        &root.join("systemd/pgmon-agent.service"),
        "lib/systemd/system/pgmon-agent.service",
        0o644,
    )?;
    put(
        &root.join("pgmon.example.yaml"),
        "etc/pgmon/pgmon.yaml",
        0o640,
    )?;
    put(
        &root.join("systemd/pgmon-agent.env"),
        "etc/default/pgmon-agent",
        0o644,
    )?;
    for entry in fs::read_dir(root.join("sql"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            put(&path, &format!("usr/share/pgmon/sql/{name}"), 0o644)?;
        }
    }
    for name in ["Makefile", "pgmon_storage.c"] {
        put(
            &root.join("sql/native").join(name),
            &format!("usr/share/pgmon/native/{name}"),
            0o644,
        )?;
    }
    put(
        &root.join("alerts/pgmon-rules.yml"),
        "usr/share/pgmon/alerts/pgmon-rules.yml",
        0o644,
    )?;
    let dashboard = root.join("dashboards/pgmon.json");
    if dashboard.exists() {
        put(&dashboard, "usr/share/pgmon/grafana/pgmon.json", 0o644)?;
    }
    put(
        &root.join("README.md"),
        "usr/share/doc/pgmon/README.md",
        0o644,
    )?;

    let size_kib = du_bytes(&stage)?.div_ceil(1024);
    write(
        "DEBIAN/control",
        &CONTROL
            .replace("{version}", env!("CARGO_PKG_VERSION"))
            .replace("{size_kib}", &size_kib.to_string()),
        0o644,
    )?;
    write(
        "DEBIAN/conffiles",
        "/etc/pgmon/pgmon.yaml\n/etc/default/pgmon-agent\n",
        0o644,
    )?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;

    let deb = deb_path();
    run_capture(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Size of the files under `dir`, bytes (for the control file's `Installed-Size`).
fn du_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let m = entry.metadata()?;
        total += if m.is_dir() {
            du_bytes(&entry.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
