//! Builds the kernel programs (`pgmon-ebpf`, target bpfel-unknown-none) with aya-build; `main`
//! embeds the object with `include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgmon"))`.
//!
//! Needs `bpf-linker` on PATH and the `rust-src` component (`cargo xtask setup` installs
//! both). The kernel crate is built with `-Z build-std=core` on the stable toolchain, which
//! needs `RUSTC_BOOTSTRAP=1`: it is set here, for that child build only.
//!
//! The web UI's charting library comes from npm (`ui/package-lock.json`): when
//! `ui/node_modules` lacks it, `npm ci` is run there first (`src/ui.rs` embeds it).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("pgmon-agent has no parent directory"))?;
    ui_dependencies(&workspace.join("ui"))?;
    let root = workspace.join("pgmon-ebpf");
    let root = root.to_str().context("non-UTF-8 path to pgmon-ebpf")?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "pgmon-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}

/// Runs `npm ci` in `ui` when the charting library is not installed there.
fn ui_dependencies(ui: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "cargo::rerun-if-changed={}",
        ui.join("package-lock.json").display()
    );
    let wanted = ui.join("node_modules/uplot/dist/uPlot.iife.min.js");
    println!("cargo::rerun-if-changed={}", wanted.display());
    if wanted.exists() {
        return Ok(());
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(ui)
        .stdin(std::process::Stdio::null())
        .status()
        .context("running `npm ci` in ui/ for the web UI's charting library (is npm installed? `cargo xtask setup` installs it)")?;
    anyhow::ensure!(
        status.success() && wanted.exists(),
        "`npm ci` in {} failed ({status}): the web UI needs {}",
        ui.display(),
        wanted.display()
    );
    Ok(())
}
