//! The API's monitor session (opened lazily, reopened when closed) and the short-lived
//! sessions in other databases that `?database=` asks for.

use tokio_postgres::Client;

use super::{Api, ApiError, Params, Recorder};

/// The API monitor session and what it learnt when it opened.
pub struct Session {
    /// The session (its settings: [`crate::health::session_setup`]).
    pub client: Client,
    /// `current_database()`: the default of `?database=`.
    pub database: String,
    /// `server_version_num` (e.g. 150007).
    pub version: u32,
}

/// Which database accepts connections (PostgreSQL docs, "pg_database").
const DATABASE_EXISTS: &str =
    "SELECT datallowconn AND NOT datistemplate FROM pg_catalog.pg_database WHERE datname = $1";

/// Opens a session with `monitor` and runs `setup` on it.
async fn open(monitor: &crate::db::DbConfig, setup: &str) -> Result<Client, ApiError> {
    let client = crate::db::connect(monitor)
        .await
        .map_err(ApiError::Unreachable)?;
    client
        .batch_execute(setup)
        .await
        .map_err(|source| ApiError::Query {
            name: "session_setup",
            source,
        })?;
    Ok(client)
}

/// The API session in `slot`, opened when there is none or the last one closed.
pub async fn ensure<'a>(
    slot: &'a mut Option<Session>,
    monitor: &crate::db::DbConfig,
    setup: &str,
) -> Result<&'a Session, ApiError> {
    if slot.as_ref().is_none_or(|s| s.client.is_closed()) {
        *slot = None;
        let client = open(monitor, setup).await?;
        let row = client
            .query_one(
                "SELECT current_database()::text, current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|source| ApiError::Query {
                name: "session_setup",
                source,
            })?;
        *slot = Some(Session {
            database: row.get(0),
            version: row.get::<_, i32>(1) as u32,
            client,
        });
    }
    Ok(slot.as_ref().expect("set above"))
}

/// The database `params` asks for and, when it is not the API session's own, a session
/// in it (closed when dropped). An unknown database, or one that refuses connections, is
/// [`ApiError::UnknownDatabase`].
pub async fn database(
    s: &Session,
    rec: &mut Recorder,
    api: &Api,
    params: &Params,
) -> Result<(String, Option<Client>), ApiError> {
    let Some(db) = params.database.as_ref().filter(|d| **d != s.database) else {
        return Ok((s.database.clone(), None));
    };
    let rows = rec
        .raw(
            &s.client,
            &s.database,
            ("database_exists", DATABASE_EXISTS),
            &[db],
        )
        .await?;
    if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
        return Err(ApiError::UnknownDatabase(db.clone()));
    }
    Ok((db.clone(), other(api, s, db).await?))
}

/// A session in `db` when it is not the API session's own (`None`: use that one).
pub async fn other(api: &Api, s: &Session, db: &str) -> Result<Option<Client>, ApiError> {
    if db == s.database {
        return Ok(None);
    }
    let mut config = api.monitor.clone();
    config.dbname(db);
    Ok(Some(open(&config, &api.setup).await?))
}
