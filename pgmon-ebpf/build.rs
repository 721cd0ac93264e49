//! Rebuild the kernel programs when bpf-linker changes (as aya-template does).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run `cargo xtask setup` (it installs bpf-linker 0.13.0 \
         built against Debian's llvm-22-dev)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
