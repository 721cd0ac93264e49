//! `pgmon-agent install-sql --dsn …`: applies pgmon's SQL (embedded in the binary, the same
//! files as `sql/` in the repository and `/usr/share/pgmon/sql` in the package) to a
//! cluster, as a superuser: `001_roles.sql` once (the cluster-wide role `pgmon`, its
//! `pg_monitor` membership), then `002`…`005` in every database that allows connections
//! (templates excluded; `--database` narrows the list). Every file is idempotent, so running
//! it again upgrades or does nothing. `--uninstall` runs `uninstall.sql` in the same
//! databases instead (the role is left, as that file explains).

use anyhow::Context as _;

/// The embedded files, in the order they are applied.
pub const CLUSTER_FILES: [(&str, &str); 1] =
    [("001_roles.sql", include_str!("../../../sql/001_roles.sql"))];

/// Applied in each database, in this order.
pub const DATABASE_FILES: [(&str, &str); 4] = [
    (
        "002_enforcement.sql",
        include_str!("../../../sql/002_enforcement.sql"),
    ),
    (
        "003_ddl_notify.sql",
        include_str!("../../../sql/003_ddl_notify.sql"),
    ),
    (
        "004_storage.sql",
        include_str!("../../../sql/004_storage.sql"),
    ),
    (
        "005_sessions.sql",
        include_str!("../../../sql/005_sessions.sql"),
    ),
];

/// `uninstall.sql`.
pub const UNINSTALL: &str = include_str!("../../../sql/uninstall.sql");

/// The highest `pgmon.schema_version` these files install.
pub const SCHEMA_VERSION: i32 = 5;

/// Runs the subcommand; prints one line per database and file.
pub fn install_sql(dsn: &str, databases: &[String], uninstall: bool) -> anyhow::Result<()> {
    let mut base = crate::db::monitor_config(dsn).context("--dsn")?;
    base.application_name("pgmon-install-sql");
    base.connect_timeout(std::time::Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = crate::db::connect(&base)
            .await
            .context("connecting with --dsn")?;
        let superuser: bool = client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .get(0);
        if !superuser {
            anyhow::bail!(
                "the --dsn role is not a superuser: event triggers and SECURITY DEFINER \
                 functions need one (connect as postgres)"
            );
        }
        let mut targets: Vec<String> = client
            .query(
                "SELECT datname::text FROM pg_database \
                 WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !databases.is_empty() {
            for d in databases {
                if !targets.contains(d) {
                    anyhow::bail!("database {d:?} does not exist or does not allow connections");
                }
            }
            targets.retain(|d| databases.contains(d));
        }
        if !uninstall {
            for (name, sql) in CLUSTER_FILES {
                client
                    .batch_execute(sql)
                    .await
                    .with_context(|| format!("{name} (cluster-wide)"))?;
                println!("cluster: {name} applied");
            }
        }
        for db in &targets {
            let mut config = base.clone();
            config.dbname(db);
            let c = crate::db::connect(&config)
                .await
                .with_context(|| format!("connecting to database {db:?}"))?;
            if uninstall {
                c.batch_execute(UNINSTALL)
                    .await
                    .with_context(|| format!("uninstall.sql in {db:?}"))?;
                println!("{db}: uninstall.sql applied");
                continue;
            }
            for (name, sql) in DATABASE_FILES {
                c.batch_execute(sql)
                    .await
                    .with_context(|| format!("{name} in database {db:?}"))?;
            }
            let version: Option<i32> = c
                .query_one("SELECT max(version) FROM pgmon.schema_version", &[])
                .await?
                .get(0);
            println!(
                "{db}: 002-005 applied, schema version {}",
                version.unwrap_or(0)
            );
        }
        Ok(())
    })
}
