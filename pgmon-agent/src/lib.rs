//! pgmon's host agent as a library: the pure parts (wire, query) and the parts that touch
//! the kernel or the database (capture, attribution), wired together by `cli::run`.
pub mod capture;
pub mod config;
pub mod metrics;
pub mod query;
pub mod wire;
pub mod attribution;
pub mod cli;
pub mod http;
pub mod pipeline;
pub mod status;
