//! Probe families, one per file. The agent loads the cheapest family that the kernel
//! accepts (see `pgmon-agent/src/capture/hooks.rs` for the registry and its cost ranks).
pub mod btf_tp;
pub mod fexit;
pub mod lifecycle;
pub mod raw_tp;
pub mod syscall_tp;
