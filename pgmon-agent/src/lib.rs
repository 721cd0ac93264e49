//! pgmon's host agent as a library: the pure parts (query; the protocol parser is the crate
//! `pgmon-wire`) and the parts that touch the kernel or the database (capture, attribution),
//! wired together by `cli::run`.
pub mod alerts;
pub mod api;
pub mod attribution;
pub mod audit;
pub mod budget;
pub mod capture;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod cost;
pub mod daemon;
pub mod db;
pub mod enforcement;
pub mod health;
pub mod history;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod privileges;
pub mod query;
pub mod release;
pub mod status;
pub mod storage;
pub mod ui;
pub mod util;
