//! A role's usage: the bytes of every relation it owns in every database (tables, their
//! TOAST tables, indexes, materialized views, sequences; temporary tables too), every fork
//! (main with all its 1 GB segments, free space map, visibility map, init), and of the
//! large objects it owns ([`LARGE_OBJECTS_SQL`]).
//!
//! One query per database lists each such relation's owner and file path
//! (`pg_relation_filepath`, which reads the catalog and takes no lock; PostgreSQL docs,
//! section 9.28.7 "Database Object Management Functions"); the agent, which runs on the
//! database host, then stats the files under `cluster.data_directory` itself. That gives
//! the same bytes as `pg_relation_size` per fork (which stats the same files) without its
//! cost to the database: `pg_relation_size` takes an AccessShareLock on every relation,
//! so a recount would wait behind any tenant's long ALTER TABLE or TRUNCATE, and it opens
//! every relation in the recounting backend's relcache (hundreds of MB for 100 000
//! relations, kept for the session's life).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// Relations with storage owned by non-superusers: (owner, path relative to the data
/// directory). relkind r = table, i = index, t = TOAST table, m = materialized view,
/// S = sequence (docs, "pg_class"); partitioned tables and indexes have no storage.
pub const ALL_SQL: &str = "SELECT o.rolname::text, pg_catalog.pg_relation_filepath(c.oid) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner \
     WHERE c.relkind IN ('r', 'i', 't', 'm', 'S') AND NOT o.rolsuper";

/// [`ALL_SQL`] for the roles in `$1` (`text[]`) only.
pub const ROLES_SQL: &str = "SELECT o.rolname::text, pg_catalog.pg_relation_filepath(c.oid) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner \
     WHERE c.relkind IN ('r', 'i', 't', 'm', 'S') AND NOT o.rolsuper \
       AND o.rolname::text = ANY ($1)";

/// Bytes of the large objects of each non-superuser owner, `$1` (`text[]`) naming the
/// owners or NULL for all: `pgmon.storage_large_objects` of sql/004_storage.sql (pages of
/// `pg_largeobject` × 2 KB, by `pg_largeobject_metadata.lomowner`), rows (owner, bytes).
pub const LARGE_OBJECTS_SQL: &str =
    "SELECT owner, bytes FROM pgmon.storage_large_objects($1::text[])";

/// Size of one file, 0 when it does not exist (a relation dropped meanwhile, a fork it
/// never had).
fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Bytes of the relation whose main fork is `main` (absolute): the main fork's segments
/// `main`, `main.1`, `main.2`, … (storage layout: docs, section 73.1 "Database File
/// Layout") up to the first missing one, then `main_fsm`, `main_vm`, `main_init`.
pub fn relation_bytes(main: &Path) -> u64 {
    let mut total = file_bytes(main);
    let name = main.as_os_str().to_owned();
    let with = |suffix: &str| {
        let mut p = name.clone();
        p.push(suffix);
        PathBuf::from(p)
    };
    for seg in 1.. {
        match std::fs::metadata(with(&format!(".{seg}"))) {
            Ok(m) => total += m.len(),
            Err(_) => break,
        }
    }
    for fork in ["_fsm", "_vm", "_init"] {
        total += file_bytes(&with(fork));
    }
    total
}

/// A directory's regular files and their sizes, from one listing.
type Listing = HashMap<std::ffi::OsString, u64>;

fn list(dir: &Path) -> Listing {
    let mut out = Listing::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata() {
                out.insert(e.file_name(), m.len());
            }
        }
    }
    out
}

/// [`relation_bytes`] from a listing of the relation's directory instead of a `stat` per
/// candidate file: most candidates (segments past the first, `_init`, often `_fsm` and
/// `_vm`) do not exist, and a failed lookup costs as much as a found one.
fn relation_bytes_listed(listing: &Listing, main: &str) -> u64 {
    let get = |suffix: &str| listing.get(std::ffi::OsStr::new(&format!("{main}{suffix}")));
    let mut total = get("").copied().unwrap_or(0);
    for seg in 1.. {
        match get(&format!(".{seg}")) {
            Some(b) => total += b,
            None => break,
        }
    }
    for fork in ["_fsm", "_vm", "_init"] {
        total += get(fork).copied().unwrap_or(0);
    }
    total
}

/// A directory holding at least this many of the relations asked about is listed once
/// rather than probed file by file (a full recount: every relation of a database is in
/// `base/<database oid>/`).
const LIST_AT: usize = 64;

/// Sums the relations of each owner; rows whose path is NULL (no storage) count 0.
/// Blocking (file system): call from `spawn_blocking`.
pub fn sum_by_owner(data_dir: &Path, rows: Vec<(String, Option<String>)>) -> HashMap<String, u64> {
    let mut per_dir: HashMap<&Path, usize> = HashMap::new();
    for (_, path) in &rows {
        if let Some(parent) = path.as_deref().and_then(|p| Path::new(p).parent()) {
            *per_dir.entry(parent).or_default() += 1;
        }
    }
    let listings: HashMap<PathBuf, Listing> = per_dir
        .into_iter()
        .filter(|(_, n)| *n >= LIST_AT)
        .map(|(dir, _)| (dir.to_owned(), list(&data_dir.join(dir))))
        .collect();
    let mut out: HashMap<String, u64> = HashMap::new();
    for (owner, path) in &rows {
        let bytes = path.as_deref().map_or(0, |p| {
            let p = Path::new(p);
            match (p.parent().and_then(|d| listings.get(d)), p.file_name()) {
                (Some(listing), Some(name)) => {
                    relation_bytes_listed(listing, &name.to_string_lossy())
                }
                _ => relation_bytes(&data_dir.join(p)),
            }
        });
        *out.entry(owner.clone()).or_default() += bytes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segment_and_fork_counts() {
        let dir = tempfile_dir();
        let base = dir.join("base/5");
        std::fs::create_dir_all(&base).unwrap();
        for (name, len) in [
            ("16384", 1000),
            ("16384.1", 200),
            ("16384.2", 30),
            ("16384.4", 99999), // after a gap: not a segment of this relation
            ("16384_fsm", 4),
            ("16384_vm", 5),
            ("16385", 7),
        ] {
            std::fs::write(base.join(name), vec![0u8; len]).unwrap();
        }
        assert_eq!(relation_bytes(&base.join("16384")), 1239);
        let sums = sum_by_owner(
            &dir,
            vec![
                ("a".into(), Some("base/5/16384".into())),
                ("a".into(), Some("base/5/16385".into())),
                ("a".into(), None),
                ("b".into(), Some("base/5/gone".into())),
            ],
        );
        assert_eq!(sums["a"], 1246);
        assert_eq!(
            sums["b"], 0,
            "a missing file is 0, the owner is still there"
        );
        // Enough relations in one directory: counted from one listing, same bytes.
        let mut rows: Vec<(String, Option<String>)> = (0..LIST_AT)
            .map(|i| ("c".to_owned(), Some(format!("base/5/{}", 20000 + i))))
            .collect();
        rows.push(("a".into(), Some("base/5/16384".into())));
        rows.push(("a".into(), Some("base/5/16385".into())));
        let listed = sum_by_owner(&dir, rows);
        assert_eq!(listed["a"], 1246);
        assert_eq!(listed["c"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pgmon-usage-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
