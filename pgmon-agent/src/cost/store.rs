//! Durable cost estimates: `pgmon.cost_estimates` in the monitor database
//! (sql/002_enforcement.sql), one row per fingerprint, so a restarted agent charges the
//! statements it already costed at once instead of planning them all again.
//!
//! An estimate is only as good as the shape of the relations it was planned over, and DDL
//! while the agent is down is heard by nobody. So each row carries a signature of those
//! relations' catalog rows, taken before the plan ([`signatures`]): for every relation of
//! the name, its `pg_class` oid, row version (`xmin`) and `relfilenode`, its indexes'
//! oids and row versions, and its rewrite rules' (a view's query). `ALTER TABLE`,
//! `CREATE`/`DROP INDEX`, a rewrite (`VACUUM FULL`, `ALTER … TYPE`), `CREATE OR REPLACE
//! VIEW` and drop-and-recreate all change it (PostgreSQL docs, section 53.11 "pg_class",
//! 53.26 "pg_index", 53.45 "pg_rewrite"; `xmin` is the row version, section 5.6 "System
//! Columns"). At start ([`load`]) the signatures are taken again per database and an
//! estimate whose relations changed is discarded (and deleted), as one that outlived
//! `cost.cache_ttl_seconds`; the others enter the cache with what is left of their TTL.
//!
//! Writes are batched ([`FLUSH`]): one multi-row upsert per flush, each new estimate
//! written once. Operators' `pgmon-agent cost forget` deletes rows here as well as in
//! the cache, with an audit row.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::{CostMetrics, Costs, Forget, ResultLabels};

/// How often the batched estimates are written.
pub const FLUSH: Duration = Duration::from_secs(2);

/// Most estimates held for writing while the database is unreachable; beyond, the oldest
/// are not persisted (they stay in the cache).
const MAX_UNWRITTEN: usize = 50_000;

/// One estimate to persist.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub fingerprint: u64,
    pub database: Arc<str>,
    /// Generic-plan total cost, planner units.
    pub cost: f64,
    /// Relation names without schema.
    pub relations: Vec<String>,
    /// [`signature`] of `relations` before the plan.
    pub signature: i64,
}

enum Op {
    Put(Estimate),
    /// What to forget, how many the cache held, where the answer goes.
    Forget(Forget, u64, oneshot::Sender<Result<u64, String>>),
}

/// The writer's handle.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::UnboundedSender<Op>,
}

impl Store {
    /// Starts the writer on the current runtime, connecting with `monitor` (its role
    /// needs `INSERT`, `UPDATE`, `DELETE` on `pgmon.cost_estimates`; sql/002 grants them
    /// to `pgmon`). Rows older than `ttl` are deleted every hour.
    pub fn start(monitor: crate::db::DbConfig, ttl: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(monitor, rx, ttl));
        Self { tx }
    }

    /// Queues `e` for the next flush.
    pub fn put(&self, e: Estimate) {
        let _ = self.tx.send(Op::Put(e));
    }

    /// Deletes the rows `what` names, with an audit row that also says how many the cache
    /// held (`cached`, already forgotten by [`Costs::forget`]); the number of rows deleted,
    /// or why not.
    pub async fn forget(&self, what: Forget, cached: u64) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Forget(what, cached, reply))
            .map_err(|_| "the estimate writer stopped".to_owned())?;
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            _ => Err("pgmon.cost_estimates did not answer within 30 s".into()),
        }
    }
}

async fn serve(monitor: crate::db::DbConfig, mut rx: mpsc::UnboundedReceiver<Op>, ttl: Duration) {
    let mut client: Option<Client> = None;
    let mut unwritten: Vec<Estimate> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            op = rx.recv() => match op {
                Some(Op::Put(e)) => {
                    if unwritten.len() >= MAX_UNWRITTEN {
                        unwritten.remove(0);
                    }
                    unwritten.push(e);
                }
                Some(Op::Forget(what, cached, reply)) => {
                    let c = connected(&mut client, &monitor).await;
                    let r = match c {
                        Some(c) => forget(c, &what, cached).await.map_err(|e| format!("{e}")),
                        None => Err("the monitor database is unreachable".into()),
                    };
                    // A forgotten estimate must not be written back by a pending flush.
                    unwritten.retain(|e| !matches(&what, e));
                    let _ = reply.send(r);
                }
                None => return,
            },
            _ = ticker.tick() => {
                if unwritten.is_empty() && pruned_at.is_some_and(|t| t.elapsed() < Duration::from_secs(3600)) {
                    continue;
                }
                let Some(c) = connected(&mut client, &monitor).await else { continue };
                if !unwritten.is_empty() {
                    match write(c, &unwritten).await {
                        Ok(()) => unwritten.clear(),
                        Err(e) if crate::db::schema_missing(&e) => {
                            tracing::warn!(error = %e, "cost estimates are not persisted: pgmon.cost_estimates is missing or not writable (install sql/002_enforcement.sql in the monitor database)");
                            // From now on: nothing is written, and a forget says why.
                            while let Some(op) = rx.recv().await {
                                if let Op::Forget(_, _, reply) = op {
                                    let _ = reply.send(Err("pgmon.cost_estimates is missing or not writable".into()));
                                }
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, estimates = unwritten.len(), "pgmon.cost_estimates: write failed; retried at the next flush");
                            client = None;
                            continue;
                        }
                    }
                }
                if pruned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                    match c.execute(
                        "DELETE FROM pgmon.cost_estimates WHERE estimated_at < now() - make_interval(secs => $1)",
                        &[&ttl.as_secs_f64()],
                    ).await {
                        Ok(n) => {
                            pruned_at = Some(tokio::time::Instant::now());
                            if n > 0 {
                                tracing::debug!(deleted = n, "pgmon.cost_estimates: expired estimates deleted");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "pgmon.cost_estimates: prune failed"),
                    }
                }
            }
        }
    }
}

/// The client, connecting once when there is none (no wait: a failed connection is
/// retried at the next flush).
async fn connected<'a>(
    client: &'a mut Option<Client>,
    monitor: &crate::db::DbConfig,
) -> Option<&'a Client> {
    if client.as_ref().is_some_and(Client::is_closed) {
        *client = None;
    }
    if client.is_none() {
        match crate::db::connect(monitor).await {
            Ok(c) => *client = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "pgmon.cost_estimates: cannot connect; retried at the next flush");
                return None;
            }
        }
    }
    client.as_ref()
}

fn matches(what: &Forget, e: &Estimate) -> bool {
    match what {
        Forget::Fingerprint(fp) => e.fingerprint == *fp,
        Forget::Relation { relation, database } => {
            database.as_deref().is_none_or(|d| &*e.database == d)
                && e.relations.iter().any(|r| r == relation)
        }
        Forget::All => true,
    }
}

async fn write(c: &Client, rows: &[Estimate]) -> Result<(), tokio_postgres::Error> {
    // One row per fingerprint: the last estimate wins (an upsert cannot touch a row twice).
    let mut last: HashMap<u64, &Estimate> = HashMap::new();
    for e in rows {
        last.insert(e.fingerprint, e);
    }
    let fps: Vec<i64> = last.keys().map(|&f| f as i64).collect();
    let dbs: Vec<&str> = last.values().map(|e| &*e.database).collect();
    let costs: Vec<f64> = last.values().map(|e| e.cost).collect();
    let rels: Vec<String> = last
        .values()
        .map(|e| serde_json::to_string(&e.relations).unwrap_or_else(|_| "[]".into()))
        .collect();
    let sigs: Vec<i64> = last.values().map(|e| e.signature).collect();
    c.execute(
        "INSERT INTO pgmon.cost_estimates (fingerprint, datname, cost, relations, signature) \
         SELECT f, d, c, r::jsonb, s FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::bigint[]) AS u(f, d, c, r, s) \
         ON CONFLICT (fingerprint) DO UPDATE SET datname = excluded.datname, cost = excluded.cost, \
           relations = excluded.relations, signature = excluded.signature, estimated_at = now()",
        &[&fps, &dbs, &costs, &rels, &sigs],
    )
    .await?;
    Ok(())
}

async fn forget(c: &Client, what: &Forget, cached: u64) -> Result<u64, tokio_postgres::Error> {
    let n = match what {
        Forget::Fingerprint(fp) => {
            c.execute(
                "DELETE FROM pgmon.cost_estimates WHERE fingerprint = $1",
                &[&(*fp as i64)],
            )
            .await?
        }
        Forget::Relation { relation, database } => {
            c.execute(
                "DELETE FROM pgmon.cost_estimates WHERE relations ? $1 \
                 AND ($2::text IS NULL OR datname = $2)",
                &[relation, database],
            )
            .await?
        }
        Forget::All => c.execute("DELETE FROM pgmon.cost_estimates", &[]).await?,
    };
    c.execute(
        "INSERT INTO pgmon.audit (role, source, step, action, result) \
         VALUES (current_user, 'cost', 'manual', $1, $2)",
        &[
            &format!("cost forget: {what}"),
            &format!("{cached} estimate(s) forgotten in the cache, {n} persisted row(s) deleted"),
        ],
    )
    .await?;
    Ok(n)
}

/// Each relation named in `names` (without schema; every schema's relation of that name)
/// → its catalog signature text, as seen by `client`'s database. Names with no relation
/// are absent.
pub async fn signatures(
    client: &Client,
    names: &[String],
) -> Result<HashMap<String, String>, tokio_postgres::Error> {
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT c.relname::text, string_agg( \
                c.oid::text || '.' || c.xmin::text || '.' || c.relfilenode::text \
                || '[' || coalesce((SELECT string_agg(i.indexrelid::text || '.' || x.xmin::text, ',' ORDER BY i.indexrelid) \
                                     FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid \
                                     WHERE i.indrelid = c.oid), '') \
                || '|' || coalesce((SELECT string_agg(w.oid::text || '.' || w.xmin::text, ',' ORDER BY w.oid) \
                                     FROM pg_rewrite w WHERE w.ev_class = c.oid), '') || ']', \
                ';' ORDER BY c.oid) \
             FROM pg_class c \
             WHERE c.relname = ANY($1::text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
             GROUP BY c.relname",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// The signature of one estimate's `relations` given the [`signatures`] of its database:
/// FNV-1a (64-bit) over the sorted names and their texts, a missing relation counting as
/// `-`. Stable across builds (it is stored).
pub fn signature(relations: &[String], sigs: &HashMap<String, String>) -> i64 {
    let mut names: Vec<&String> = relations.iter().collect();
    names.sort();
    names.dedup();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for n in names {
        let sig = sigs.get(n).map_or("-", String::as_str);
        for b in n.bytes().chain([0]).chain(sig.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h as i64
}

/// Why [`load`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The monitor database is unreachable.
    #[error("cannot connect to the monitor database: {0}")]
    Connect(#[from] crate::db::DbError),
    /// `pgmon.cost_estimates` is unreadable (sql/002 not up to date?) or a delete failed.
    #[error("pgmon.cost_estimates: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// What [`load`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// Estimates entered into the cache.
    pub kept: u64,
    /// Discarded: a relation they use changed since they were made.
    pub changed: u64,
    /// Discarded: their database is gone or unreachable.
    pub unreachable: u64,
}

/// Reads `pgmon.cost_estimates` (with `monitor`), checks each database's signatures (with
/// `base`, its `dbname` replaced), enters what still holds into `costs` and deletes what
/// does not. Errors: the monitor database or the table is unreadable.
pub async fn load(
    monitor: &crate::db::DbConfig,
    base: &crate::db::DbConfig,
    costs: &Costs,
    metrics: &CostMetrics,
) -> Result<Loaded, LoadError> {
    let ttl = costs.ttl();
    let store = crate::db::connect(monitor).await?;
    let rows = store
        .query(
            "SELECT fingerprint, datname::text, cost, relations::text, signature, \
                    extract(epoch FROM now() - estimated_at)::float8 \
             FROM pgmon.cost_estimates \
             WHERE estimated_at > now() - make_interval(secs => $1)",
            &[&ttl.as_secs_f64()],
        )
        .await?;
    struct Row {
        fingerprint: u64,
        cost: f64,
        relations: Vec<String>,
        signature: i64,
        age: f64,
    }
    let mut by_db: HashMap<String, Vec<Row>> = HashMap::new();
    for r in &rows {
        by_db.entry(r.get(1)).or_default().push(Row {
            fingerprint: r.get::<_, i64>(0) as u64,
            cost: r.get(2),
            relations: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
            signature: r.get(4),
            age: r.get(5),
        });
    }
    let mut out = Loaded::default();
    let mut stale: Vec<i64> = Vec::new();
    for (db, rows) in by_db {
        let mut names: Vec<String> = rows.iter().flat_map(|r| r.relations.clone()).collect();
        names.sort();
        names.dedup();
        let mut config = base.clone();
        config.dbname(&db).application_name("pgmon");
        let sigs = match config.open().await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                signatures(&client, &names).await
            }
            Err(e) => Err(e),
        };
        let Ok(sigs) = sigs else {
            out.unreachable += rows.len() as u64;
            continue;
        };
        let database: Arc<str> = db.as_str().into();
        for r in rows {
            if signature(&r.relations, &sigs) == r.signature {
                let left = ttl.saturating_sub(Duration::from_secs_f64(r.age.max(0.0)));
                costs.insert_for(r.fingerprint, Some(r.cost), &database, &r.relations, left);
                out.kept += 1;
            } else {
                stale.push(r.fingerprint as i64);
                out.changed += 1;
            }
        }
    }
    if !stale.is_empty() {
        store
            .execute(
                "DELETE FROM pgmon.cost_estimates WHERE fingerprint = ANY($1)",
                &[&stale],
            )
            .await?;
    }
    for (result, n) in [
        ("kept", out.kept),
        ("ddl", out.changed),
        ("unreachable", out.unreachable),
    ] {
        metrics
            .restored
            .get_or_create(&ResultLabels { result })
            .inc_by(n);
    }
    metrics.entries.set(costs.entries() as i64);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_follows_the_relations_shape_not_their_order() {
        let mut sigs = HashMap::from([
            ("items".to_owned(), "16384.750.16384[16390.751|]".to_owned()),
            ("orders".to_owned(), "16400.760.16400[|]".to_owned()),
        ]);
        let a = signature(&["items".into(), "orders".into()], &sigs);
        assert_eq!(
            a,
            signature(&["orders".into(), "items".into(), "items".into()], &sigs)
        );
        // A new index on items.
        sigs.insert(
            "items".into(),
            "16384.770.16384[16390.751,16410.771|]".into(),
        );
        assert_ne!(a, signature(&["items".into(), "orders".into()], &sigs));
        // Gone: differs from any shape.
        sigs.remove("orders");
        assert_ne!(a, signature(&["items".into(), "orders".into()], &sigs));
        // Pinned: it is stored, so it must not change between builds.
        let fixed = HashMap::from([("t".to_owned(), "1.2.3[|]".to_owned())]);
        assert_eq!(signature(&["t".into()], &fixed), -6_357_236_335_046_478_143);
    }
}
