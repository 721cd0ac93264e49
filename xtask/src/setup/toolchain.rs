//! The Rust pieces the eBPF build needs beyond cargo: `rust-src` (for `-Z build-std`) and
//! `bpf-linker`, built against LLVM 22 (`/usr/lib/llvm-22`,
//! from the `llvm-22-dev` package).

use std::process::Command;

use anyhow::{Result, bail};

use super::ok;
use crate::util::{cargo, run_streaming, try_capture, which};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// `rust-src` for the active toolchain and for `stable` (aya-build builds the kernel crate
/// with `cargo +stable -Z build-std=core`).
pub(super) fn rust_src() -> Result<()> {
    if which("rustup").is_none() {
        bail!("rustup is not on PATH; install Rust with rustup first (https://rustup.rs)");
    }
    let root = crate::util::workspace_root();
    let active = try_capture(
        Command::new("rustup")
            .args(["show", "active-toolchain"])
            .current_dir(&root),
    )
    .and_then(|s| s.split_whitespace().next().map(str::to_string));
    let mut toolchains = vec!["stable".to_string()];
    if let Some(a) = active.filter(|a| !a.starts_with("stable")) {
        toolchains.push(a);
    }
    for tc in toolchains {
        let installed = try_capture(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            &tc,
        ]))
        .unwrap_or_default();
        if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
            ok(&format!("rust-src ({tc})"));
            continue;
        }
        run_streaming(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &tc,
        ]))?;
        println!("installed rust-src ({tc})");
    }
    Ok(())
}

pub(super) fn bpf_linker() -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION}");
    let version = try_capture(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        ok(&what);
        return Ok(());
    }
    run_streaming(
        cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )?;
    println!("installed {what} (LLVM_PREFIX={LLVM_PREFIX})");
    Ok(())
}
