//! `pgmon-agent release-all`, the seed's self-destruct for the moment the monitor itself is
//! the problem: stop the agent ([`process`]) and give back every role pgmon changed.
//!
//! What pgmon changes in the catalog is recorded in its tables (`sql/002_enforcement.sql`,
//! `sql/004_storage.sql`): `pgmon.role_original` (a role's connection limit and LOGIN
//! before pgmon's first change), `pgmon.role_locks` (who holds it NOLOGIN: `budget`,
//! `storage`), `pgmon.budget_state` (ladder steps) and `pgmon.storage_state` (quota
//! states). For each role any of them names, [`release`] takes the storage lock off
//! (`pgmon.unlock_role(role, 'storage')`), then the budget's and restores the saved
//! settings (`pgmon.restore_role`, as `sql/uninstall.sql` does), forgets the role's
//! ladder step, ledger and quota state so that the next start judges it afresh, writes an
//! audit row (`source = 'release-all'`) and logs a line under `pgmon::enforcement`.
//! Sessions pgmon ended are not brought back.

pub mod process;

use tokio_postgres::Client;

/// What became of one role.
#[derive(Clone, Debug)]
pub struct Released {
    pub role: String,
    /// What `pgmon.unlock_role(role, 'storage')` said, when storage held a lock.
    pub storage: Option<String>,
    /// What `pgmon.restore_role(role)` said.
    pub budget: String,
    /// LOGIN and connection limit now.
    pub settings: String,
    /// Neither call was refused or failed.
    pub ok: bool,
}

impl Released {
    /// The audited result: what each holder's undo said, then the role's settings.
    pub fn result(&self) -> String {
        match &self.storage {
            Some(s) => format!("storage: {s}; budget: {}; {}", self.budget, self.settings),
            None => format!("budget: {}; {}", self.budget, self.settings),
        }
    }
}

/// Whether `sql/004_storage.sql` (its `pgmon.storage_state`) is installed.
async fn has_storage(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('pgmon.storage_state') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// Every role pgmon's tables say it changed or may have changed, by name.
pub async fn changed_roles(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let storage = if has_storage(client).await? {
        " UNION SELECT role::text FROM pgmon.storage_state WHERE state = 'locked'"
    } else {
        ""
    };
    let rows = client
        .query(
            &format!(
                "SELECT rolname::text FROM pgmon.role_original \
                 UNION SELECT rolname::text FROM pgmon.role_locks \
                 UNION SELECT role::text FROM pgmon.budget_state{storage} ORDER BY 1"
            ),
            &[],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// A database refusal or failure as text (`refused: …` for insufficient_privilege,
/// `failed: …` otherwise); a lost connection stays an error.
fn outcome(
    r: Result<tokio_postgres::Row, tokio_postgres::Error>,
) -> Result<(String, bool), tokio_postgres::Error> {
    match r {
        Ok(row) => Ok((row.get::<_, Option<String>>(0).unwrap_or_default(), true)),
        Err(e) if e.as_db_error().is_some() => {
            let refused = e.code().is_some_and(|c| c.code() == "42501");
            Ok((
                format!("{}: {e}", if refused { "refused" } else { "failed" }),
                false,
            ))
        }
        Err(e) => Err(e),
    }
}

/// Gives `role` back (see the module doc).
pub async fn release(client: &Client, role: &str) -> Result<Released, tokio_postgres::Error> {
    let storage_locked = client
        .query_opt(
            "SELECT 1 FROM pgmon.role_locks WHERE rolname = $1 AND holder = 'storage'",
            &[&role],
        )
        .await?
        .is_some();
    let mut ok = true;
    let storage = if storage_locked {
        let (text, fine) = outcome(
            client
                .query_one("SELECT pgmon.unlock_role($1, 'storage')", &[&role])
                .await,
        )?;
        ok &= fine;
        Some(text)
    } else {
        None
    };
    let (budget, fine) = outcome(
        client
            .query_one("SELECT pgmon.restore_role($1)::text", &[&role])
            .await,
    )?;
    ok &= fine;
    client
        .execute("DELETE FROM pgmon.budget_state WHERE role = $1", &[&role])
        .await?;
    client
        .execute("DELETE FROM pgmon.budget_ledgers WHERE role = $1", &[&role])
        .await?;
    if has_storage(client).await? {
        client
            .execute("DELETE FROM pgmon.storage_state WHERE role = $1", &[&role])
            .await?;
    }
    let settings = match client
        .query_opt(
            "SELECT rolcanlogin, rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?
    {
        None => "the role no longer exists".to_owned(),
        Some(r) => format!(
            "role now {}, connection limit {}",
            if r.get::<_, bool>(0) {
                "LOGIN"
            } else {
                "NOLOGIN"
            },
            r.get::<_, i32>(1)
        ),
    };
    let released = Released {
        role: role.to_owned(),
        storage,
        budget,
        settings,
        ok,
    };
    let result = released.result();
    tracing::warn!(target: "pgmon::enforcement", role, result = %result, "release-all");
    client
        .execute(
            "INSERT INTO pgmon.audit (role, source, step, utilisation, action, result) \
             VALUES ($1, 'release-all', 'none', NULL, 'release', $2)",
            &[&role, &result],
        )
        .await?;
    Ok(released)
}
