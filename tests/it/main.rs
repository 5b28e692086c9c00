//! The integration tests, as one binary: each test binary links the whole
//! crate again, so one binary keeps `cargo test` fast to build. Each module
//! tests udstil as its users use it (real clients, real databases, the real
//! binary); `common` holds the shared set-up.

mod common;

mod access_cli;
mod announcements;
mod audit;
mod balancer;
mod config_check;
mod deploy;
mod front_door;
mod gluster;
mod ledger;
mod lifecycle;
mod notify;
mod operations;
mod postgres_source;
mod reload;
mod replay;
mod replicas;
mod schedules;
mod sftp_library;
mod sftp_openssh;
mod state;
mod status_page;
mod versions;
