//! Builds the kernel programs (`pgmon-ebpf`, target bpfel-unknown-none) with aya-build; `main`
//! embeds the object with `include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgmon"))`.
//!
//! Needs `bpf-linker` on PATH and the `rust-src` component (`cargo xtask setup` installs
//! both). The kernel crate is built with `-Z build-std=core` on the stable toolchain, which
//! needs `RUSTC_BOOTSTRAP=1`: it is set here, for that child build only.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("pgmon-agent has no parent directory"))?
        .join("pgmon-ebpf");
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
