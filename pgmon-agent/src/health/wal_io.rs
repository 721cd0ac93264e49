//! WAL and I/O statistics of the 60-second loop, from the views that exist only on newer
//! servers: `pg_stat_wal` (PostgreSQL 14+; docs, section 27.2 "The Cumulative Statistics
//! System", view `pg_stat_wal`) and `pg_stat_io` (16+; same section, view `pg_stat_io`).
//! Each view is read only where the server (`server_version_num`) has it; on an older
//! server its families are absent from the scrape, never zeros.
//!
//! `pg_stat_io` has a row per (backend type, object, context); the loop sums over the
//! context, so a family has at most one sample per backend type and object (about 15 × 3).
//! Its unit changed in 18: counts of `op_bytes`-sized operations before, bytes
//! (`read_bytes`, `write_bytes`, `extend_bytes`) from 18 on; both become bytes here.

use tokio_postgres::{Client, Statement};

use super::board::{Family, Kind};

/// `pg_stat_wal` (PostgreSQL 14+): WAL records, full-page images, bytes, and the times a
/// backend found the WAL buffers full and wrote them itself. These four columns are in
/// every version from 14 to 18 (18 moved the write and sync timings to `pg_stat_io`).
pub(crate) const WAL_STATS: &str = "SELECT wal_records::float8, wal_fpi::float8, wal_bytes::float8, \
     wal_buffers_full::float8 FROM pg_stat_wal";

/// `pg_stat_io` of PostgreSQL 16 and 17: operations × `op_bytes`, summed over the context.
/// A cell is NULL where the operation cannot happen for its row; a sum of NULLs stays NULL.
pub(crate) const IO_16: &str = "SELECT backend_type, object, \
     sum(reads::float8 * op_bytes), sum(writes::float8 * op_bytes), sum(extends::float8 * op_bytes) \
     FROM pg_stat_io GROUP BY 1, 2 ORDER BY 1, 2";

/// `pg_stat_io` of PostgreSQL 18+, which counts bytes itself (and has no `op_bytes`).
pub(crate) const IO_18: &str = "SELECT backend_type, object, \
     sum(read_bytes)::float8, sum(write_bytes)::float8, sum(extend_bytes)::float8 \
     FROM pg_stat_io GROUP BY 1, 2 ORDER BY 1, 2";

/// The `pg_stat_wal` statement, where the server `version` has the view.
pub(crate) fn wal_stats_sql(version: u32) -> Option<&'static str> {
    (version >= super::PG14).then_some(WAL_STATS)
}

/// The `pg_stat_io` statement for the server `version`, where it has the view.
pub(crate) fn io_sql(version: u32) -> Option<&'static str> {
    match version {
        v if v >= super::PG18 => Some(IO_18),
        v if v >= super::PG16 => Some(IO_16),
        _ => None,
    }
}

/// The prepared statements of the views this server has.
pub struct WalIo {
    wal: Option<Statement>,
    io: Option<Statement>,
}

impl WalIo {
    /// Prepares what the server `version` (`server_version_num`) can answer.
    pub async fn prepare(client: &Client, version: u32) -> Result<Self, tokio_postgres::Error> {
        let wal = match wal_stats_sql(version) {
            Some(sql) => Some(client.prepare(sql).await?),
            None => None,
        };
        let io = match io_sql(version) {
            Some(sql) => Some(client.prepare(sql).await?),
            None => None,
        };
        Ok(Self { wal, io })
    }

    /// One run: the families of the views this server has (none before 14).
    pub async fn run(&self, client: &Client) -> Result<Vec<Family>, tokio_postgres::Error> {
        let mut out = Vec::new();
        if let Some(st) = &self.wal {
            let w = client.query_one(st, &[]).await?;
            out.push(Family::single(
                "pgmon_wal_records",
                "WAL records generated (pg_stat_wal.wal_records, PostgreSQL 14+).",
                Kind::Counter,
                w.get(0),
            ));
            out.push(Family::single(
                "pgmon_wal_full_page_images",
                "Full-page images written to WAL (pg_stat_wal.wal_fpi, PostgreSQL 14+).",
                Kind::Counter,
                w.get(1),
            ));
            out.push(Family::single(
                "pgmon_wal_bytes",
                "WAL generated, bytes (pg_stat_wal.wal_bytes, PostgreSQL 14+).",
                Kind::Counter,
                w.get(2),
            ));
            out.push(Family::single(
                "pgmon_wal_buffers_full",
                "Times a backend wrote WAL because the WAL buffers were full (pg_stat_wal.wal_buffers_full, PostgreSQL 14+; rising: wal_buffers is too small).",
                Kind::Counter,
                w.get(3),
            ));
        }
        if let Some(st) = &self.io {
            let mut families = [
                Family::new(
                    "pgmon_io_read_bytes",
                    "Bytes read, by backend type and object, over all contexts (pg_stat_io, PostgreSQL 16+).",
                    Kind::Counter,
                ),
                Family::new(
                    "pgmon_io_write_bytes",
                    "Bytes written, by backend type and object, over all contexts (pg_stat_io, PostgreSQL 16+).",
                    Kind::Counter,
                ),
                Family::new(
                    "pgmon_io_extend_bytes",
                    "Bytes by which relations were extended, by backend type and object (pg_stat_io, PostgreSQL 16+).",
                    Kind::Counter,
                ),
            ];
            for r in client.query(st, &[]).await? {
                let (backend_type, object): (String, String) = (r.get(0), r.get(1));
                for (i, family) in families.iter_mut().enumerate() {
                    // NULL: this backend type never does this to this object.
                    if let Some(v) = r.get::<_, Option<f64>>(i + 2) {
                        family.push(
                            vec![
                                ("backend_type", backend_type.clone()),
                                ("object", object.clone()),
                            ],
                            v,
                        );
                    }
                }
            }
            out.extend(families);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_view_is_read_where_it_exists() {
        // 13.23, 14.23, 15.14, 16.14, 17.10, 18.4 as server_version_num.
        let versions = [130_023, 140_023, 150_014, 160_014, 170_010, 180_004];
        let wal: Vec<bool> = versions
            .iter()
            .map(|&v| wal_stats_sql(v).is_some())
            .collect();
        assert_eq!(wal, [false, true, true, true, true, true]);
        let io: Vec<Option<&str>> = versions.iter().map(|&v| io_sql(v)).collect();
        assert_eq!(
            io,
            [None, None, None, Some(IO_16), Some(IO_16), Some(IO_18)]
        );
        // 18 dropped op_bytes; 16 and 17 have no *_bytes columns.
        assert!(!IO_18.contains("op_bytes"));
        assert!(!IO_16.contains("read_bytes"));
        assert!(io_sql(190_000) == Some(IO_18));
    }
}
