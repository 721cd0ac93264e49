//! One task per database: its connection (reopened with backoff), the check that
//! sql/004_storage.sql is installed there, the sync of `pgmon.storage_limits` from the
//! policy followed by the walk that attaches the triggers, `LISTEN pgmon_storage`, and the
//! counts the coordinator asks for. On every reconnect it resyncs and recounts the whole
//! database (notifications sent while it was away are lost).

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_postgres::{AsyncMessage, Client};

use super::{Event, usage};
use crate::util::now_ms;

/// The notification channel of sql/004_storage.sql (003's is `pgmon_ddl`).
pub const CHANNEL: &str = "pgmon_storage";

/// The limited roles as synced: (role, soft bytes, hard bytes), sorted by role.
pub type LimitTable = Vec<(String, i64, i64)>;

/// Which roles a count covers.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every role: roles absent from the result own nothing in this database.
    All,
    /// These roles only.
    Roles(Vec<String>),
}

/// What a database task reports.
#[derive(Debug)]
pub enum DbEvent {
    /// A trigger or the event trigger notified for `role`; `relation` is the written
    /// relation's (oid, bytes as `pg_total_relation_size` said when it notified), when the
    /// payload carries it ([`parse_payload`]).
    Notified {
        db: Arc<str>,
        role: String,
        relation: Option<(u32, u64)>,
    },
    /// Bytes per role in `db`, measured from `started_ms` (unix ms); `epoch` when it was
    /// part of a full recount of every database.
    Counted {
        db: Arc<str>,
        scope: Scope,
        bytes: HashMap<String, u64>,
        started_ms: u64,
        epoch: Option<u64>,
    },
    /// The connection's state changed.
    State { db: Arc<str>, state: DbState },
}

/// A database as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DbState {
    pub connected: bool,
    /// sql/004_storage.sql is installed: triggers attached, notifications heard.
    pub sql_installed: bool,
    /// The last error (connection, sync), if the last attempt failed.
    pub error: Option<String>,
}

/// What the coordinator asks of a database task.
#[derive(Debug)]
pub enum DbCmd {
    /// Count these roles now.
    Count(Vec<String>),
    /// Count every role, as part of full recount `epoch`.
    Full(u64),
}

/// A database's task.
pub struct DbTask {
    pub name: Arc<str>,
    /// The monitor connection's settings with `dbname` set to this database.
    pub config: crate::db::DbConfig,
    pub data_dir: Arc<PathBuf>,
    pub events: mpsc::UnboundedSender<Event>,
    pub cmds: mpsc::UnboundedReceiver<DbCmd>,
    pub limits: watch::Receiver<Arc<LimitTable>>,
    /// Bounds how many full counts run at once across databases (file-system work).
    pub permits: Arc<Semaphore>,
}

/// Why a session ended.
enum End {
    /// The coordinator dropped this database (or is shutting down).
    Stop,
    /// Reconnect, after this error.
    Retry(String),
}

impl DbTask {
    /// Runs until the coordinator drops the command channel.
    pub async fn run(mut self) {
        let mut backoff = crate::db::backoff();
        let mut first = true;
        loop {
            let began = tokio::time::Instant::now();
            let end = self.session(first).await;
            // A session that lasted starts the next outage's delays over (0.5 s).
            if began.elapsed() >= Duration::from_secs(30) {
                backoff = crate::db::backoff();
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(30));
            match end {
                End::Stop => return,
                End::Retry(e) => {
                    tracing::warn!(database = %self.name, error = %e, retry_in = ?delay, "storage: database connection");
                    self.report(DbState {
                        connected: false,
                        sql_installed: false,
                        error: Some(e),
                    });
                }
            }
            first = false;
            // Wait, but keep answering: a full recount asked meanwhile is simply skipped
            // (the coordinator stops waiting for a disconnected database).
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    cmd = self.cmds.recv() => if cmd.is_none() { return },
                }
            }
        }
    }

    fn report(&self, state: DbState) {
        let _ = self.events.send(Event::Db(DbEvent::State {
            db: self.name.clone(),
            state,
        }));
    }

    async fn session(&mut self, first: bool) -> End {
        let (client, mut connection) = match self.config.open().await {
            Ok(c) => c,
            Err(e) => return End::Retry(crate::util::error_chain(&e)),
        };
        let (ntx, mut nrx) = mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                        if ntx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        let _driver = AbortOnDrop(driver);
        let client = Arc::new(client);
        let (installed, large_objects) = match client
            .query_one(
                "SELECT to_regprocedure('pgmon.storage_attach_batch(oid, integer)') IS NOT NULL, \
                        to_regprocedure('pgmon.storage_large_objects(text[])') IS NOT NULL",
                &[],
            )
            .await
        {
            Ok(row) => (row.get::<_, bool>(0), row.get::<_, bool>(1)),
            Err(e) => return End::Retry(crate::util::error_chain(&e)),
        };
        if installed && !large_objects {
            tracing::warn!(database = %self.name, "storage: this database's sql/004_storage.sql predates large-object counting: large objects are not charged here until it is applied again (pgmon-agent install-sql)");
        }
        // The trigger walk runs in the background (it can take a minute over tens of
        // thousands of tables): counts and notifications are served from the start, and
        // the event trigger covers tables made meanwhile. Dropping it (a new walk after a
        // limits change, or the session's end) aborts it.
        let mut _walk: Option<AbortOnDrop> = None;
        if installed {
            let table = self.limits.borrow_and_update().clone();
            if let Err(e) = upsert_limits(&client, &table).await {
                return End::Retry(format!("syncing pgmon.storage_limits: {e}"));
            }
            if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                return End::Retry(crate::util::error_chain(&e));
            }
            _walk = Some(spawn_walk(client.clone(), self.name.clone(), table.len()));
        } else {
            tracing::warn!(database = %self.name, "storage: sql/004_storage.sql is not installed in this database: its usage is counted by the periodic recount only (install it as a superuser: psql -d DB -f sql/004_storage.sql)");
        }
        self.report(DbState {
            connected: true,
            sql_installed: installed,
            error: None,
        });
        if !first {
            self.count(&client, Scope::All, None, large_objects);
        }
        loop {
            tokio::select! {
                n = nrx.recv() => match n {
                    Some(payload) => {
                        let (role, relation) = parse_payload(&payload);
                        let _ = self.events.send(Event::Db(DbEvent::Notified {
                            db: self.name.clone(),
                            role: role.to_owned(),
                            relation,
                        }));
                    }
                    None => return End::Retry("connection lost".into()),
                },
                cmd = self.cmds.recv() => match cmd {
                    None => return End::Stop,
                    Some(DbCmd::Count(roles)) => self.count(&client, Scope::Roles(roles), None, large_objects),
                    Some(DbCmd::Full(epoch)) => {
                        if !installed {
                            // Installed since? A fresh session syncs and listens.
                            if let Ok(row) = client.query_one("SELECT to_regprocedure('pgmon.storage_attach_batch(oid, integer)') IS NOT NULL", &[]).await
                                && row.get::<_, bool>(0)
                            {
                                return End::Retry("sql/004_storage.sql installed meanwhile; reconnecting to listen".into());
                            }
                        }
                        self.count(&client, Scope::All, Some(epoch), large_objects);
                    }
                },
                changed = self.limits.changed(), if installed => {
                    if changed.is_err() { return End::Stop }
                    let table = self.limits.borrow_and_update().clone();
                    if let Err(e) = upsert_limits(&client, &table).await {
                        return End::Retry(format!("syncing pgmon.storage_limits: {e}"));
                    }
                    _walk = Some(spawn_walk(client.clone(), self.name.clone(), table.len()));
                }
            }
        }
    }

    /// Counts `scope` on a task of its own: the query goes on this connection (queued
    /// behind any other), the stat(2) calls on the blocking pool; with `large_objects`, the
    /// owners' large objects are added ([`usage::LARGE_OBJECTS_SQL`]).
    fn count(&self, client: &Arc<Client>, scope: Scope, epoch: Option<u64>, large_objects: bool) {
        let (client, db, events, dir) = (
            client.clone(),
            self.name.clone(),
            self.events.clone(),
            self.data_dir.clone(),
        );
        let permits = self.permits.clone();
        tokio::spawn(async move {
            let _permit = match scope {
                Scope::All => permits.acquire_owned().await.ok(),
                Scope::Roles(_) => None,
            };
            let started_ms = now_ms();
            let rows = match &scope {
                Scope::All => client.query(usage::ALL_SQL, &[]).await,
                Scope::Roles(r) => client.query(usage::ROLES_SQL, &[r]).await,
            };
            let rows = match rows {
                Ok(rows) => rows
                    .into_iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(database = %db, error = %e, "storage: count failed");
                    return;
                }
            };
            let lo_rows = if large_objects {
                let roles: Option<&Vec<String>> = match &scope {
                    Scope::All => None,
                    Scope::Roles(r) => Some(r),
                };
                match client.query(usage::LARGE_OBJECTS_SQL, &[&roles]).await {
                    Ok(rows) => rows
                        .into_iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                        .collect(),
                    Err(e) => {
                        tracing::warn!(database = %db, error = %e, "storage: counting large objects failed");
                        return;
                    }
                }
            } else {
                Vec::new()
            };
            let Ok(mut bytes) =
                tokio::task::spawn_blocking(move || usage::sum_by_owner(&dir, rows)).await
            else {
                return;
            };
            for (owner, b) in lo_rows {
                *bytes.entry(owner).or_default() += u64::try_from(b).unwrap_or(0);
            }
            let _ = events.send(Event::Db(DbEvent::Counted {
                db,
                scope,
                bytes,
                started_ms,
                epoch,
            }));
        });
    }
}

/// The payload of a `pgmon_storage` notification (sql/004_storage.sql): `owner`, or
/// `owner US relid US bytes` (US = the unit separator, 0x1F, which no sane role name
/// holds) when the trigger measured the relation it wrote. A payload whose tail does not
/// parse is all owner.
pub fn parse_payload(payload: &str) -> (&str, Option<(u32, u64)>) {
    let mut parts = payload.rsplitn(3, '\u{1f}');
    let (Some(bytes), Some(relid), Some(owner)) = (parts.next(), parts.next(), parts.next()) else {
        return (payload, None);
    };
    match (relid.parse(), bytes.parse()) {
        (Ok(relid), Ok(bytes)) => (owner, Some((relid, bytes))),
        _ => (payload, None),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Replaces `pgmon.storage_limits` with `table` (one statement). Run at start, on every
/// reconnect and whenever the limited roles change, before [`attach_walk`].
pub async fn upsert_limits(
    client: &Client,
    table: &LimitTable,
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<&str> = table.iter().map(|(r, _, _)| r.as_str()).collect();
    let soft: Vec<i64> = table.iter().map(|(_, s, _)| *s).collect();
    let hard: Vec<i64> = table.iter().map(|(_, _, h)| *h).collect();
    client
        .execute(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(r, s, h)), \
             gone AS (DELETE FROM pgmon.storage_limits l \
                      WHERE NOT EXISTS (SELECT FROM v WHERE v.r = l.rolname::text)) \
             INSERT INTO pgmon.storage_limits (rolname, soft_limit, hard_limit) \
             SELECT r, s, h FROM v \
             ON CONFLICT (rolname) DO UPDATE \
               SET soft_limit = EXCLUDED.soft_limit, hard_limit = EXCLUDED.hard_limit, synced_at = now() \
             WHERE (pgmon.storage_limits.soft_limit, pgmon.storage_limits.hard_limit) \
                   IS DISTINCT FROM (EXCLUDED.soft_limit, EXCLUDED.hard_limit)",
            &[&names, &soft, &hard],
        )
        .await?;
    Ok(())
}

/// [`attach_walk`] on a task of its own, walked again a second later (five times at
/// most) while tables were skipped because a writer held them; a failure is logged (the
/// next sync walks again).
fn spawn_walk(client: Arc<Client>, db: Arc<str>, limited_roles: usize) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        for _ in 0..6 {
            match attach_walk(&client, &db, limited_roles).await {
                Ok(0) => return,
                Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => {
                    tracing::warn!(database = %db, error = %crate::util::error_chain(&e), "storage: the trigger walk failed; the next limits sync or reconnect walks again");
                    return;
                }
            }
        }
    }))
}

/// Walks the tables whose trigger must be attached, corrected or removed with
/// `pgmon.storage_attach_batch`, 50 tables per call, each call its own short transaction
/// (queued on the connection between the counts' queries, never holding them up for longer
/// than one batch). Returns how many tables were skipped as busy.
pub async fn attach_walk(
    client: &Client,
    db: &str,
    limited_roles: usize,
) -> Result<i32, tokio_postgres::Error> {
    let started = std::time::Instant::now();
    let (mut attached, mut detached, mut busy) = (0, 0, 0);
    let mut after: Option<u32> = None;
    loop {
        let row = client
            .query_one(
                "SELECT next_after, attached, detached, busy FROM pgmon.storage_attach_batch($1, 50)",
                &[&after],
            )
            .await?;
        attached += row.get::<_, i32>(1);
        detached += row.get::<_, i32>(2);
        busy += row.get::<_, i32>(3);
        after = row.get(0);
        if after.is_none() {
            break;
        }
    }
    tracing::info!(
        database = db,
        limited_roles,
        attached,
        detached,
        busy,
        seconds = started.elapsed().as_secs_f64(),
        "storage: limits synced, triggers walked"
    );
    Ok(busy)
}

#[cfg(test)]
mod tests {
    use super::parse_payload;

    #[test]
    fn payloads() {
        assert_eq!(parse_payload("alice"), ("alice", None));
        assert_eq!(
            parse_payload("alice\u{1f}16384\u{1f}83886080"),
            ("alice", Some((16384, 83_886_080)))
        );
        // An owner with spaces or digits, and a tail that does not parse.
        assert_eq!(parse_payload("12 x\u{1f}1\u{1f}2"), ("12 x", Some((1, 2))));
        assert_eq!(parse_payload("a\u{1f}b\u{1f}c"), ("a\u{1f}b\u{1f}c", None));
        assert_eq!(parse_payload("a\u{1f}1"), ("a\u{1f}1", None));
    }
}
