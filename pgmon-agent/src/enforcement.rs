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

/// Batches after which [`terminate_beyond`] gives up: 1,000 × the batch sessions, far
/// more than `max_connections` allows.
const MAX_BATCHES: usize = 1_000;

/// Terminates `role`'s client backends beyond its `keep` oldest, newest first, `batch` per
/// call of `pgmon.terminate_backends` (each its own transaction), until a call finds fewer
/// than `batch`. Returns how many were terminated.
///
/// # Errors
/// The first failed call (refused role: SQLSTATE 42501; lost connection); the sessions
/// ended before it stay ended.
pub async fn terminate_beyond(
    client: &Client,
    role: &str,
    keep: i32,
    batch: i32,
) -> Result<i32, tokio_postgres::Error> {
    let batch = batch.max(1);
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
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
