//! The persisted usage: each limited role's bytes per database as last counted, kept in
//! `pgmon.storage_usage` and `pgmon.storage_counted` of the monitor database
//! (sql/004_storage.sql), so a restarted agent judges every role from its first second
//! instead of after its first full recount (issue 27).
//!
//! The coordinator hands the writer its whole table after each full recount; the writer
//! keeps what it last wrote and writes only the rows that moved by at least
//! [`threshold`] of the role's hard limit, on a connection of its own (a large first write
//! never delays a lock behind it). A failed write is retried with the next snapshot.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::DbName;

/// One (role, database) count.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    pub role: String,
    pub db: DbName,
    pub bytes: u64,
    /// When the count started, unix ms.
    pub counted_ms: u64,
    /// The role's hard limit, bytes (0 for a role pgmon holds locked that the policy no
    /// longer limits); sets the write [`threshold`].
    pub hard: u64,
}

/// What the coordinator hands the writer: every known count, the databases counted whole
/// at least once, and the databases that exist.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub rows: Vec<UsageRow>,
    pub covered: Vec<DbName>,
    pub databases: Vec<DbName>,
}

/// The persisted usage read at start.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Per role: (database, bytes, counted at unix ms).
    pub usage: HashMap<String, Vec<(DbName, u64, u64)>>,
    /// Databases whose rows cover every role.
    pub covered: HashSet<DbName>,
}

impl Loaded {
    /// Number of roles with a persisted count.
    pub fn roles(&self) -> usize {
        self.usage.len()
    }

    /// Age of the newest count, ms before `now` (None when nothing was loaded).
    pub fn age_ms(&self, now: u64) -> Option<u64> {
        self.usage
            .values()
            .flatten()
            .map(|(_, _, at)| *at)
            .max()
            .map(|at| now.saturating_sub(at))
    }
}

/// The smallest change of a (role, database) count worth a row write: 1 % of the role's
/// hard limit, and at least one 8 kB page (PostgreSQL's BLCKSZ default). The margin that
/// decides whether a role is recounted at once (`storage.near_limit_margin`, 20 %) is
/// twenty times wider, so a restart never misjudges a role for lack of a write.
pub fn threshold(hard: u64) -> u64 {
    (hard / 100).max(8192)
}

/// Reads the persisted usage; an absent table (sql/004_storage.sql older than the agent)
/// gives nothing.
pub async fn load(client: &Client) -> Result<Loaded, tokio_postgres::Error> {
    let mut out = Loaded::default();
    let mut names: HashMap<String, DbName> = HashMap::new();
    let mut intern = |s: String| names.entry(s.clone()).or_insert_with(|| s.into()).clone();
    for r in client
        .query(
            "SELECT role::text, datname::text, bytes, \
                    (extract(epoch FROM counted_at) * 1000)::int8 \
             FROM pgmon.storage_usage",
            &[],
        )
        .await?
    {
        let db = intern(r.get(1));
        out.usage.entry(r.get(0)).or_default().push((
            db,
            r.get::<_, i64>(2).max(0) as u64,
            r.get::<_, i64>(3).max(0) as u64,
        ));
    }
    for r in client
        .query("SELECT datname::text FROM pgmon.storage_counted", &[])
        .await?
    {
        out.covered.insert(intern(r.get(0)));
    }
    Ok(out)
}

/// What a snapshot changes against what was written: (upserts, deletes).
fn diff(
    written: &HashMap<(String, DbName), u64>,
    snap: &Snapshot,
) -> (Vec<UsageRow>, Vec<(String, DbName)>) {
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    let mut seen = HashSet::new();
    for row in &snap.rows {
        let key = (row.role.clone(), row.db.clone());
        match (written.get(&key), row.bytes) {
            (None, 0) => {}
            (Some(_), 0) => deletes.push(key.clone()),
            (None, _) => upserts.push(row.clone()),
            (Some(old), b) if old.abs_diff(b) >= threshold(row.hard) => upserts.push(row.clone()),
            _ => {}
        }
        seen.insert(key);
    }
    deletes.extend(written.keys().filter(|k| !seen.contains(*k)).cloned());
    (upserts, deletes)
}

async fn write(
    client: &Client,
    upserts: &[UsageRow],
    deletes: &[(String, DbName)],
    snap: &Snapshot,
) -> Result<(), tokio_postgres::Error> {
    let text = |v: &mut dyn Iterator<Item = &str>| v.map(str::to_owned).collect::<Vec<_>>();
    if !upserts.is_empty() {
        let roles = text(&mut upserts.iter().map(|r| r.role.as_str()));
        let dbs = text(&mut upserts.iter().map(|r| &*r.db));
        let bytes: Vec<i64> = upserts
            .iter()
            .map(|r| i64::try_from(r.bytes).unwrap_or(i64::MAX))
            .collect();
        let secs: Vec<f64> = upserts
            .iter()
            .map(|r| r.counted_ms as f64 / 1000.0)
            .collect();
        client
            .execute(
                "INSERT INTO pgmon.storage_usage (role, datname, bytes, counted_at) \
                 SELECT r, d, b, to_timestamp(t) \
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[]) AS u(r, d, b, t) \
                 ON CONFLICT (role, datname) DO UPDATE \
                   SET bytes = EXCLUDED.bytes, counted_at = EXCLUDED.counted_at",
                &[&roles, &dbs, &bytes, &secs],
            )
            .await?;
    }
    if !deletes.is_empty() {
        let roles = text(&mut deletes.iter().map(|(r, _)| r.as_str()));
        let dbs = text(&mut deletes.iter().map(|(_, d)| &**d));
        client
            .execute(
                "DELETE FROM pgmon.storage_usage u \
                 USING unnest($1::text[], $2::text[]) AS g(r, d) \
                 WHERE u.role = g.r AND u.datname = g.d",
                &[&roles, &dbs],
            )
            .await?;
    }
    let covered = text(&mut snap.covered.iter().map(|d| &**d));
    let databases = text(&mut snap.databases.iter().map(|d| &**d));
    client
        .execute(
            "WITH gone AS (DELETE FROM pgmon.storage_counted WHERE datname::text <> ALL($2::text[])) \
             INSERT INTO pgmon.storage_counted (datname) SELECT unnest($1::text[]) \
             ON CONFLICT (datname) DO NOTHING",
            &[&covered, &databases],
        )
        .await?;
    Ok(())
}

/// Starts the writer with what `loaded` says is written; returns the channel the
/// coordinator publishes its snapshots on (only the newest matters).
pub fn spawn_writer(config: crate::db::DbConfig, loaded: &Loaded) -> watch::Sender<Arc<Snapshot>> {
    let mut written: HashMap<(String, DbName), u64> = loaded
        .usage
        .iter()
        .flat_map(|(r, v)| v.iter().map(|(d, b, _)| ((r.clone(), d.clone()), *b)))
        .collect();
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(async move {
        let mut client: Option<Client> = None;
        while rx.changed().await.is_ok() {
            let snap = rx.borrow_and_update().clone();
            let (upserts, deletes) = diff(&written, &snap);
            let c = match client.take() {
                Some(c) if !c.is_closed() => c,
                _ => {
                    crate::db::connect_with_backoff(&config, "storage usage persistence", None)
                        .await
                }
            };
            match write(&c, &upserts, &deletes, &snap).await {
                Ok(()) => {
                    tracing::debug!(
                        upserts = upserts.len(),
                        deletes = deletes.len(),
                        "storage: persisted usage written"
                    );
                    for r in upserts {
                        written.insert((r.role, r.db), r.bytes);
                    }
                    for k in deletes {
                        written.remove(&k);
                    }
                    client = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::util::error_chain(&e), "storage: writing the persisted usage failed; retried with the next full recount");
                }
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(role: &str, db: &str, bytes: u64, hard: u64) -> UsageRow {
        UsageRow {
            role: role.into(),
            db: db.into(),
            bytes,
            counted_ms: 1,
            hard,
        }
    }

    #[test]
    fn threshold_is_a_hundredth_of_the_hard_limit_at_least_a_page() {
        assert_eq!(threshold(0), 8192);
        assert_eq!(threshold(50_000_000), 500_000);
    }

    #[test]
    fn only_rows_that_moved_are_written() {
        let written: HashMap<(String, DbName), u64> = [
            (("a".to_owned(), DbName::from("d")), 10_000_000),
            (("b".to_owned(), DbName::from("d")), 5_000),
            (("gone".to_owned(), DbName::from("d")), 5_000),
        ]
        .into();
        let snap = Snapshot {
            rows: vec![
                // moved by 0.4 % of 50 MB: not written
                row("a", "d", 10_200_000, 50_000_000),
                // emptied: deleted
                row("b", "d", 0, 50_000_000),
                // new
                row("c", "d", 1, 50_000_000),
                // new but empty: nothing
                row("e", "d", 0, 50_000_000),
            ],
            ..Snapshot::default()
        };
        let (up, del) = diff(&written, &snap);
        assert_eq!(up, vec![row("c", "d", 1, 50_000_000)]);
        let mut del: Vec<_> = del.into_iter().map(|(r, _)| r).collect();
        del.sort();
        assert_eq!(del, vec!["b".to_owned(), "gone".to_owned()]);
        let snap = Snapshot {
            rows: vec![row("a", "d", 10_600_000, 50_000_000)],
            ..Snapshot::default()
        };
        assert_eq!(diff(&written, &snap).0.len(), 1);
    }
}
