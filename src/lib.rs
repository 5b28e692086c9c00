//! udstil: exposes DFDG extracts as per-authority Parquet trees over SFTP.
//! See ARCHITECTURE.md for the code map.

pub mod access;
pub mod announce;
pub mod app;
pub mod audit;
pub mod authority;
pub mod config;
pub mod fixtures;
pub mod http;
pub mod ledger;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod schedule;
pub mod sftp;
pub mod source;
pub mod state;
pub mod status;
pub mod tree;
