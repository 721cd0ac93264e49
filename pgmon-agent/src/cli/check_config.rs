//! `pgmon-agent check-config FILE`.

use std::path::Path;

use crate::config::Config;

/// Prints a summary of a valid file, or returns its first error (file, line, field).
pub fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!(
        "{}: ok (cluster {}, hooks {}, metrics on {})",
        file.display(),
        config.cluster.data_directory.display(),
        config.capture.hooks.as_str(),
        config.metrics.listen
    );
    Ok(())
}
