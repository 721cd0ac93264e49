//! `pgmon-agent fingerprint SQL`: the fingerprint and normalized text the agent gives each
//! statement of `SQL`, so a DBA can find a query of theirs under the `fingerprint` label of
//! `/metrics` and in `status --role` (and scripts need not link libpg_query themselves).

use std::io::Read as _;

use anyhow::{Context as _, Result};

use crate::query::{Normalizer, fingerprint_hex};

/// Prints one line per statement of `sql` (`-` reads standard input): 16 hex digits of
/// libpg_query's fingerprint, two spaces, the normalized text. The text goes through the
/// same [`Normalizer`] as captured `Q` messages, so the output is what the agent reports.
/// A text libpg_query cannot parse prints fingerprint `0000000000000000` and a note, as in
/// the agent's status; that is not an error.
///
/// # Errors
/// Standard input cannot be read, or is not UTF-8.
pub fn fingerprint(sql: &str) -> Result<()> {
    let text = if sql == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the statements from standard input")?;
        s
    } else {
        sql.to_string()
    };
    let mut normalizer = Normalizer::new(16, usize::MAX);
    let mut stmts = Vec::new();
    normalizer.prepare(text.as_bytes(), true, &mut stmts);
    for s in stmts {
        println!("{}  {}", fingerprint_hex(s.fingerprint), s.normalized);
    }
    Ok(())
}
