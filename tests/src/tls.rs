//! TLS for a test cluster: a self-signed certificate made with `openssl req`, and
//! `ssl = on`, as Debian's packages set up (snakeoil certificate, `ssl = on`).

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::Cluster;

/// Writes a self-signed RSA certificate for `localhost` and `127.0.0.1` (one day; an end
/// entity, `CA:FALSE`, so that a client may trust it as its own anchor, as
/// `pgmon-agent status --ca-file` does) to `crt` and its key to `key`, both PEM, with
/// `openssl req`.
pub fn self_signed_certificate(crt: &std::path::Path, key: &std::path::Path) -> Result<()> {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(crt)
        .output()
        .context("running openssl req")?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Cluster {
    /// Makes a self-signed RSA certificate for `localhost` in the cluster's base directory,
    /// owned by `postgres` (key mode 0600, which the server requires), and turns `ssl` on
    /// with it (`ALTER SYSTEM`, then a reload). TCP clients with `sslmode=prefer` (libpq's
    /// default) or `require` then speak TLS; unix-socket clients never do.
    pub fn enable_ssl(&self) -> Result<()> {
        let dir = self.base_dir();
        let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
        self_signed_certificate(&crt, &key)?;
        let pg = crate::postgres_user()?;
        for f in [&crt, &key] {
            std::os::unix::fs::chown(f, Some(pg.uid), Some(pg.gid))
                .with_context(|| format!("chown {}", f.display()))?;
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .context("chmod 600 on the key")?;
        // ALTER SYSTEM cannot run in the transaction block that one -c with several
        // statements makes: one call each.
        for setting in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", crt.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".to_owned(),
        ] {
            self.psql_admin(&setting)?;
        }
        self.psql_admin("SELECT pg_reload_conf()")?;
        // The postmaster applies the reload asynchronously; a new TLS session tells.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = Command::new(crate::PSQL)
                .args([
                    "-X",
                    "-At",
                    "-c",
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                ])
                .arg(format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
                    self.port()
                ))
                .output()
                .context("psql")?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "t" {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "ssl = on did not take effect within 10 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
