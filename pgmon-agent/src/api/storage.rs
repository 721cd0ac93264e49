//! `/api/v1/storage`: bytes per role, per database, and the largest relations and indexes
//! of one database (each index with its access method, size and usage since the statistics
//! reset: [`databases::INDEX_USAGE`]).
//!
//! Per role: with storage quotas on, the storage coordinator's figures (usage, limits,
//! state; [`crate::storage::StorageStatus`]), which it counts with
//! [`crate::storage::usage::ALL_SQL`] in every database and `stat(2)` of the files; with
//! quotas off, the same count done live for this request in every database (at most
//! `health.max_databases`, largest first).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Api, ApiError, Params, Recorder, session};
use crate::{health::databases, storage::usage};

/// The answer: (database of `relations`, data).
pub async fn answer(
    api: &Api,
    s: &session::Session,
    rec: &mut Recorder,
    params: &Params,
    limit: i64,
) -> Result<(String, Value), ApiError> {
    let (db, other) = session::database(s, rec, api, params).await?;
    let sizes = rec
        .raw(
            &s.client,
            &s.database,
            ("databases", databases::DATABASES),
            &[],
        )
        .await?;
    let names: Vec<String> = sizes.iter().map(|r| r.get(0)).collect();
    // Largest first (the SQL's order); the first `limit`.
    let database_sizes: Vec<Value> = sizes
        .iter()
        .take(limit as usize)
        .map(|r| json!({"datname": r.get::<_, String>(0), "bytes": r.get::<_, f64>(1)}))
        .collect();
    let relations = rec
        .rows(
            other.as_ref().unwrap_or(&s.client),
            &db,
            ("relations", databases::RELATIONS),
            &[&limit],
            &["relation", "bytes"],
        )
        .await?;
    let indexes = rec
        .rows(
            other.as_ref().unwrap_or(&s.client),
            &db,
            ("index_usage", databases::INDEX_USAGE),
            &[&limit],
            &[],
        )
        .await?;
    drop(other);

    let coordinator = match &api.storage {
        Some(h) => h.status().await,
        None => None,
    };
    let mut data = json!({
        "databases": database_sizes,
        "relations": relations,
        "indexes": indexes,
    });
    if let Some(st) = coordinator {
        rec.note(
            "usage_by_owner",
            "storage coordinator",
            None,
            usage::ALL_SQL,
        );
        data["source"] = "storage coordinator".into();
        data["roles"] = serde_json::to_value(&st.roles).unwrap_or_default();
        data["quotas"] = json!({
            "dry_run": st.dry_run, "usage_ttl_seconds": st.usage_ttl_seconds,
            "last_recount_seconds": st.last_recount_seconds,
            "last_recount_age_seconds": st.last_recount_age_seconds,
            "databases": st.databases,
        });
        return Ok((db, data));
    }

    // Live: the owner and file of every relation in each database, then stat(2) here.
    rec.note("usage_by_owner", "api", None, usage::ALL_SQL);
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for name in names.iter().take(api.max_databases) {
        let conn = match session::other(api, s, name).await {
            Ok(c) => c,
            Err(e) => {
                skipped.push(json!({"datname": name, "error": crate::util::error_chain(&e)}));
                continue;
            }
        };
        let found = conn
            .as_ref()
            .unwrap_or(&s.client)
            .query(usage::ALL_SQL, &[])
            .await
            .map_err(|source| ApiError::Query {
                name: "usage_by_owner",
                source,
            })?;
        rows.extend(
            found
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))),
        );
    }
    let data_dir = api.data_directory.clone();
    let by_owner: HashMap<String, u64> =
        tokio::task::spawn_blocking(move || usage::sum_by_owner(&data_dir, rows))
            .await
            .unwrap_or_default();
    let mut roles: Vec<(String, u64)> = by_owner.into_iter().collect();
    roles.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    roles.truncate(limit as usize);
    data["source"] = "live".into();
    data["roles"] = roles
        .into_iter()
        .map(|(role, bytes)| json!({"role": role, "usage_bytes": bytes}))
        .collect();
    data["skipped_databases"] = skipped.into();
    Ok((db, data))
}
