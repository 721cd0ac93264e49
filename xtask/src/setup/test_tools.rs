//! Tools only the tests use, each in its own place rather than installed system-wide:
//! `promtool` (checks the alert rules and the /metrics exposition) unpacked from Debian's
//! `prometheus` package, and psycopg 3 in a virtual environment (a PostgreSQL driver not
//! written here).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{PROMTOOL, PSYCOPG_PYTHON, PSYCOPG_VERSION};

use super::ok;
use crate::util::{run_capture, run_streaming, try_capture};

/// psycopg [`PSYCOPG_VERSION`] with its binary wheel (which bundles libpq) in a virtual
/// environment of Debian's python3 whose interpreter is [`PSYCOPG_PYTHON`]: a driver not
/// written here, for the TLS tests (pipeline mode, `sslnegotiation=direct`).
pub(super) fn psycopg() -> Result<()> {
    let python = Path::new(PSYCOPG_PYTHON);
    let version = || {
        try_capture(Command::new(python).args(["-c", "import psycopg; print(psycopg.__version__)"]))
            .map(|v| v.trim().to_owned())
    };
    if version().as_deref() == Some(PSYCOPG_VERSION) {
        ok(&format!("psycopg {PSYCOPG_VERSION} ({PSYCOPG_PYTHON})"));
        return Ok(());
    }
    let venv = python.ancestors().nth(2).expect("venv/bin/python");
    run_capture(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg("--clear")
            .arg(venv),
    )?;
    run_capture(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .arg(format!("psycopg[binary]=={PSYCOPG_VERSION}")),
    )?;
    match version() {
        Some(v) if v == PSYCOPG_VERSION => {
            println!("installed psycopg {v} in {}", venv.display());
            Ok(())
        }
        other => bail!(
            "psycopg installed in {} but reports {other:?}",
            venv.display()
        ),
    }
}

/// `promtool` at [`PROMTOOL`], and the `prometheus` server beside it (tests/prometheus.rs
/// starts it on loopback): Debian's `prometheus` package downloaded and unpacked with
/// `dpkg-deb -x` (not installed, so no Prometheus service is set up or started).
pub(super) fn promtool() -> Result<()> {
    let bin = Path::new(PROMTOOL);
    if let Some(v) = try_capture(Command::new(bin).arg("--version")) {
        ok(v.lines().next().unwrap_or("promtool"));
        return Ok(());
    }
    let root = bin
        .ancestors()
        .nth(3)
        .expect("PROMTOOL is <root>/usr/bin/promtool");
    let download = std::env::temp_dir().join(format!("pgmon-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&download)?;
    // apt's sandbox user must be able to write the download directory.
    std::fs::set_permissions(&download, std::fs::Permissions::from_mode(0o777))?;
    run_streaming(
        Command::new("apt-get")
            .current_dir(&download)
            .args(["download", "prometheus"]),
    )?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download prometheus left no .deb")?;
    std::fs::create_dir_all(root)?;
    run_streaming(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root))?;
    let _ = std::fs::remove_dir_all(&download);
    let v = run_capture(Command::new(bin).arg("--version"))?;
    ok(&format!(
        "{} (unpacked)",
        v.lines().next().unwrap_or("promtool")
    ));
    Ok(())
}
