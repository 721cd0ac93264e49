//! The storage-metadata workload of issue 23 (`sql/workloads/storage_metadata/`): its
//! loader, its weighted pgbench scripts, and the statements those scripts send.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::cluster::{Cluster, Transport};
use crate::pgbench::PgbenchRun;
use crate::proc::run_checked;
use crate::sql::quote_literal;

/// The workload's directory, relative to the workspace root.
pub const STORAGE_METADATA_DIR: &str = "sql/workloads/storage_metadata";

/// The pgbench scripts of the workload and their weights (`-f file@weight`; they sum to
/// 100, so a weight is the percentage of transactions). Also in each script's header and
/// the directory's README.
pub const STORAGE_METADATA_MIX: [(&str, u32); 9] = [
    ("get_object.sql", 35),
    ("list_prefix.sql", 15),
    ("log_access.sql", 15),
    ("record_object.sql", 12),
    ("search_objects.sql", 8),
    ("record_version.sql", 6),
    ("find_by_metadata.sql", 4),
    ("delete_old_objects.sql", 3),
    ("hook_stats.sql", 2),
];

/// The workload's directory, absolute (from this crate's manifest directory).
pub fn storage_metadata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(STORAGE_METADATA_DIR)
}

/// Every script of [`STORAGE_METADATA_MIX`] as (absolute path, weight), for
/// [`PgbenchRun::scripts`].
pub fn storage_metadata_scripts() -> Vec<(PathBuf, u32)> {
    let dir = storage_metadata_dir();
    STORAGE_METADATA_MIX
        .iter()
        .map(|(file, weight)| (dir.join(file), *weight))
        .collect()
}

/// A timed run of the whole mix as `role` in `db`: `clients` clients on `jobs` threads for
/// `duration_s` seconds over `transport`, simple protocol; adjust the rest by struct update.
pub fn storage_metadata_run(
    role: &str,
    db: &str,
    transport: Transport,
    clients: u32,
    jobs: u32,
    duration_s: u64,
) -> PgbenchRun {
    PgbenchRun {
        transport,
        clients,
        jobs,
        transactions: None,
        duration_s: Some(duration_s),
        scripts: storage_metadata_scripts(),
        ..PgbenchRun::new(role, db)
    }
}

/// The SQL statements of a pgbench script, in order, as the server receives them up to
/// constants: meta-commands (`\set`) and comment lines dropped, a statement ends at a `;`
/// that ends a line, and each `:variable` becomes the constant `1` (a fingerprint ignores
/// constants, so the statement fingerprints as any execution of it does). `::` casts and
/// colons inside string literals are kept.
pub fn script_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with("--")) {
            continue;
        }
        if current.is_empty() && trimmed.starts_with('\\') {
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        if trimmed.ends_with(';') {
            let sql = current.trim().trim_end_matches(';').trim().to_string();
            out.push(substitute_variables(&sql));
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(substitute_variables(current.trim()));
    }
    out
}

/// `:name` → `1`, outside string literals and not after another `:` (a cast).
fn substitute_variables(sql: &str) -> String {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut in_string = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            in_string = !in_string;
        }
        let is_var = !in_string
            && c == ':'
            && (i == 0 || chars[i - 1] != ':')
            && chars
                .get(i + 1)
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '_');
        if is_var {
            i += 1;
            while chars
                .get(i)
                .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_')
            {
                i += 1;
            }
            out.push('1');
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The distinct statements of every script of the mix (see [`script_statements`]), each
/// with the script it first appears in (`BEGIN` and `COMMIT` are shared).
pub fn storage_metadata_statements() -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (path, _) in storage_metadata_scripts() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for sql in script_statements(&text) {
            if !out.iter().any(|(s, _)| *s == sql) {
                out.push((sql, name.clone()));
            }
        }
    }
    Ok(out)
}

impl Cluster {
    /// Loads the storage-metadata workload into database `db` owned by `role`: creates the
    /// role (LOGIN) and the database if they are missing, then runs `schema.sql` and
    /// `seed.sql` (default sizes: 50 000 objects) as `role` over the unix socket, stopping at
    /// the first error. Takes about ten seconds on two cores.
    pub fn load_storage_metadata(&self, role: &str, db: &str) -> Result<()> {
        let exists = |sql: String| -> Result<bool> {
            Ok(self.query_value("postgres", "postgres", &sql)? == "t")
        };
        if !exists(format!(
            "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = {})",
            quote_literal(role)
        ))? {
            self.create_role(role)?;
        }
        if !exists(format!(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = {})",
            quote_literal(db)
        ))? {
            self.create_database(db, role)?;
        }
        let dir = storage_metadata_dir();
        for file in ["schema.sql", "seed.sql"] {
            run_checked(
                self.psql_cmd(role, db, Transport::Unix)
                    .arg("-f")
                    .arg(dir.join(file)),
            )
            .with_context(|| format!("{STORAGE_METADATA_DIR}/{file} as {role} in {db}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_of_a_script() {
        let script = "-- header, weight 6\n\\set n random(1, 10)\n\\set size int(exp(:n))\n\
                      BEGIN;\nSELECT a::text, ':x' FROM t\nWHERE k = f(:n) AND s = :size\nFOR UPDATE;\n\
                      COMMIT;\n";
        assert_eq!(
            script_statements(script),
            [
                "BEGIN",
                "SELECT a::text, ':x' FROM t\nWHERE k = f(1) AND s = 1\nFOR UPDATE",
                "COMMIT"
            ]
        );
    }

    #[test]
    fn the_mix_is_on_disk_and_sums_to_100() {
        let scripts = storage_metadata_scripts();
        assert_eq!(scripts.iter().map(|(_, w)| w).sum::<u32>(), 100);
        for (path, weight) in &scripts {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.lines()
                    .take(5)
                    .any(|l| l.contains(&format!("Weight {weight}."))),
                "{} does not state its weight {weight} in its header",
                path.display()
            );
        }
        let statements = storage_metadata_statements().unwrap();
        assert_eq!(statements.len(), 14, "{statements:#?}");
        assert!(
            statements
                .iter()
                .all(|(s, _)| !s.contains(':') || s.contains("::"))
        );
        assert!(storage_metadata_dir().join("schema.sql").exists());
        assert!(storage_metadata_dir().join("seed.sql").exists());
    }
}
