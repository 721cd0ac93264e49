//! Ending a role's sessions once its lock or connection limit has committed, shared by the
//! budget and storage enforcers.
//!
//! `ALTER ROLE … NOLOGIN` and `CONNECTION LIMIT` are seen by logins only from their commit
//! on (PostgreSQL docs, "CREATE ROLE"), so pgmon commits them alone
//! (`pgmon.lock_role(role, holder, 0)`, `pgmon.set_connection_limit(role, limit, 0)`,
//! sql/002_enforcement.sql) and only then ends the sessions, one transaction per batch:
//! a client reconnecting in a loop finds the door already shut.

use tokio_postgres::Client;

/// Sessions ended per transaction when the policy names no batch (sql/002's default).
pub const DEFAULT_BATCH: i32 = 100;

/// Pause between batches when the policy names none.
pub const DEFAULT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Batches after which [`terminate_beyond`] gives up: 1,000 × the batch sessions, far
/// more than `max_connections` allows.
const MAX_BATCHES: usize = 1_000;

/// Terminates `role`'s client backends beyond its `keep` oldest, newest first, `batch` per
/// call of `pgmon.terminate_backends` (each its own transaction, which waits for its
/// backends to exit), `pause` between calls, until a call finds fewer than `batch`.
/// Returns how many were terminated.
///
/// # Errors
/// The first failed call (refused role: SQLSTATE 42501; lost connection); the sessions
/// ended before it stay ended.
pub async fn terminate_beyond(
    client: &Client,
    role: &str,
    keep: i32,
    batch: i32,
    pause: std::time::Duration,
) -> Result<i32, tokio_postgres::Error> {
    let batch = batch.max(1);
    let mut total = 0;
    for i in 0..MAX_BATCHES {
        if i > 0 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let n: i32 = client
            .query_one(
                "SELECT pgmon.terminate_backends($1, $2, $3)",
                &[&role, &keep, &batch],
            )
            .await?
            .get(0);
        total += n;
        if n < batch {
            break;
        }
    }
    Ok(total)
}
