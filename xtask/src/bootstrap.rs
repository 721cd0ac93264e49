//! What `cargo xtask` itself may depend on. `cargo xtask setup` is the step that installs
//! libclang, LLVM, `bpf-linker`, `rust-src` and the server headers, and every `cargo xtask`
//! command runs it first; so the xtask binary must build on a machine as it comes (the Rust
//! toolchain, gcc, Debian's PostgreSQL 15) or no command can ever reach set-up. Issue 17:
//! `pg_query` in xtask's tree made `cargo xtask demo` die on a new machine for want of
//! libclang, before set-up ran.
//!
//! The guard is the unit test below: it resolves xtask's build the way cargo does and fails
//! naming any crate that needs what set-up installs.

/// Crates that need something only set-up installs, with what that is. A crate of this list
/// in xtask's normal or build dependencies breaks the first command on a new machine.
pub const NEEDS_SETUP: &[(&str, &str)] = &[
    ("pg_query", "libclang (bindgen in its build script)"),
    ("bindgen", "libclang"),
    ("clang-sys", "libclang"),
    ("llvm-sys", "LLVM's development files"),
    (
        "aya-build",
        "rust-src, bpf-linker and LLVM (builds the eBPF crate)",
    ),
    ("bpf-linker", "LLVM's development files"),
    (
        "pgmon-agent",
        "the eBPF object, built by aya-build (rust-src, bpf-linker)",
    ),
    ("pgmon-ebpf", "rust-src and bpf-linker"),
    ("pq-sys", "libpq's development files"),
    ("prost-build", "protoc"),
];

/// `links` keys (native libraries a crate declares it links, `package.links` in its
/// manifest) that build from what a new machine has: the crate compiles bundled C with gcc,
/// or links nothing outside Rust.
pub const LINKS_WITHOUT_SETUP: &[&str] = &["ring_core_", "prettyplease", "wasm_bindgen"];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{LINKS_WITHOUT_SETUP, NEEDS_SETUP};
    use crate::util::{cargo, run_capture};

    /// Names of the crates in `cargo tree -p <package> -e normal,build`: cargo's own
    /// resolution of what `cargo build -p <package>` compiles (features unified as the
    /// resolver does for that one package, dev-dependencies out). `cargo metadata` cannot
    /// answer this: its resolve unifies the features of the whole workspace, dev-dependencies
    /// included.
    fn build_tree(package: &str) -> BTreeSet<String> {
        let out = run_capture(cargo().args([
            "tree",
            "--package",
            package,
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ]))
        .unwrap_or_else(|e| panic!("cargo tree -p {package}: {e:#}"));
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// `package.links` of every package in `cargo metadata`, by name.
    fn links_by_package() -> BTreeMap<String, String> {
        let out = run_capture(cargo().args(["metadata", "--format-version", "1"]))
            .expect("cargo metadata");
        let meta: serde_json::Value = serde_json::from_str(&out).expect("cargo metadata JSON");
        meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .filter_map(|p| {
                Some((
                    p["name"].as_str()?.to_string(),
                    p["links"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    #[test]
    fn xtask_builds_before_setup() {
        let tree = build_tree("xtask");
        assert!(
            tree.contains("xtask") && tree.contains("clap"),
            "cargo tree gave an unexpected answer: {tree:?}"
        );
        let mut problems = Vec::new();
        for (name, needs) in NEEDS_SETUP {
            if tree.contains(*name) {
                problems.push(format!("{name} (needs {needs})"));
            }
        }
        for (name, links) in links_by_package() {
            if tree.contains(&name) && !LINKS_WITHOUT_SETUP.iter().any(|ok| links.starts_with(ok)) {
                problems.push(format!("{name} (links the native library `{links}`)"));
            }
        }
        assert!(
            problems.is_empty(),
            "xtask must build before `cargo xtask setup` has run, but its normal/build \
             dependencies include: {}. Move the dependency behind a feature xtask does not \
             enable, or have xtask run a binary built after set-up.",
            problems.join(", ")
        );
    }

    #[test]
    fn the_guard_sees_the_crates_it_names() {
        // The agent's tree holds pg_query and aya-build: the same reading finds them there,
        // so an empty answer for xtask is not a blind spot of the method.
        let names = build_tree("pgmon-agent");
        for needed in ["pg_query", "clang-sys", "aya-build"] {
            assert!(names.contains(needed), "{needed} not found in {names:?}");
        }
        assert_eq!(
            links_by_package().get("clang-sys").map(String::as_str),
            Some("clang")
        );
    }
}
