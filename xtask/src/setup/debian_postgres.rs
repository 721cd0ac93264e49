//! Debian's PostgreSQL 15: no `main` cluster of Debian's own (none created, an old one
//! stopped), the OS user `postgres`, and the C storage trigger built into each Debian
//! PostgreSQL that has server headers.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use super::ok;
use crate::util::{run_capture, try_capture};

const CREATECLUSTER_CONF: &str = "/etc/postgresql-common/createcluster.conf";

/// `create_main_cluster = false` in createcluster.conf, written before postgresql is
/// installed so Debian never creates (and starts) a `main` cluster of its own.
pub(super) fn no_default_cluster_conf() -> Result<()> {
    let what = format!("{CREATECLUSTER_CONF}: create_main_cluster = false");
    let text = std::fs::read_to_string(CREATECLUSTER_CONF).unwrap_or_default();
    let mut found = false;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if key == "create_main_cluster" {
            let value = line.split('=').nth(1).unwrap_or("").trim();
            if value == "false" && !found {
                found = true;
                lines.push(line.to_string());
            }
            continue;
        }
        lines.push(line.to_string());
    }
    if found && lines.len() == text.lines().count() {
        ok(&what);
        return Ok(());
    }
    if !found {
        lines.push("create_main_cluster = false".into());
    }
    std::fs::create_dir_all(
        Path::new(CREATECLUSTER_CONF)
            .parent()
            .expect("absolute path"),
    )?;
    std::fs::write(CREATECLUSTER_CONF, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {CREATECLUSTER_CONF}"))?;
    println!("changed {what}");
    Ok(())
}

/// Debian's own `15/main` cluster (if an older install created it) is stopped and not
/// started at boot (`start.conf` = `manual`).
pub(super) fn default_cluster_stopped() -> Result<()> {
    let what = "Debian's default cluster 15/main stopped, start.conf manual";
    let start_conf = Path::new("/etc/postgresql/15/main/start.conf");
    if !start_conf.exists() {
        ok("no Debian default cluster 15/main");
        return Ok(());
    }
    let mut changed = false;
    let clusters = try_capture(Command::new("pg_lsclusters").arg("-h")).unwrap_or_default();
    let online = clusters.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[0] == "15" && f[1] == "main" && f[3].starts_with("online")
    });
    if online {
        run_capture(Command::new("pg_ctlcluster").args(["15", "main", "stop", "-m", "fast"]))?;
        changed = true;
    }
    let conf = std::fs::read_to_string(start_conf)?;
    let mode = conf
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    if mode == Some("auto") {
        let new: Vec<&str> = conf
            .lines()
            .map(|l| if l.trim() == "auto" { "manual" } else { l })
            .collect();
        std::fs::write(start_conf, new.join("\n") + "\n")?;
        changed = true;
    }
    if changed {
        println!("changed {what}");
    } else {
        ok(what);
    }
    Ok(())
}

pub(super) fn postgres_user() -> Result<()> {
    if pgmon_tests::postgres_user().is_ok() {
        ok("OS user postgres");
        return Ok(());
    }
    run_capture(Command::new("useradd").args([
        "--system",
        "--user-group",
        "--home-dir",
        "/var/lib/postgresql",
        "--shell",
        "/bin/bash",
        "postgres",
    ]))?;
    println!("installed OS user postgres");
    Ok(())
}

/// The C storage trigger (`sql/native`, PGXS) built and installed into the `$libdir` of
/// each PostgreSQL under /usr/lib/postgresql that has its server headers (here 15; the npm
/// PostgreSQL 18 has none, so its databases use the PL/pgSQL version). Built out of tree
/// in `target/pgext/<major>`; installed only when the installed file differs.
pub(super) fn native_trigger() -> Result<()> {
    let src = crate::util::workspace_root().join("sql/native");
    let mut configs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin/pg_config"))
                .collect()
        })
        .unwrap_or_default();
    configs.retain(|c| c.exists());
    configs.sort();
    for pg_config in configs {
        let ask = |what: &str| -> Result<String> {
            Ok(run_capture(Command::new(&pg_config).arg(what))?
                .trim()
                .to_string())
        };
        let version = ask("--version")?;
        if !Path::new(&ask("--includedir-server")?)
            .join("postgres.h")
            .exists()
        {
            println!("skipped C storage trigger for {version}: no server headers");
            continue;
        }
        let major = version
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.split('.').next())
            .unwrap_or("unknown");
        let build = crate::util::target_dir().join("pgext").join(major);
        std::fs::create_dir_all(&build)?;
        let make = |target: Option<&str>| -> Result<String> {
            let mut cmd = Command::new("make");
            cmd.current_dir(&build)
                .arg("-f")
                .arg(src.join("Makefile"))
                .arg(format!("VPATH={}", src.display()))
                .arg(format!("PG_CONFIG={}", pg_config.display()));
            cmd.args(target);
            run_capture(&mut cmd)
        };
        make(None)?;
        let installed = Path::new(&ask("--pkglibdir")?).join("pgmon_storage.so");
        let what = format!("C storage trigger {}", installed.display());
        if std::fs::read(&installed).ok() == std::fs::read(build.join("pgmon_storage.so")).ok() {
            ok(&what);
        } else {
            make(Some("install"))?;
            println!("installed {what}");
        }
    }
    Ok(())
}
