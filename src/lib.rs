//! backupctl: backup, archival and point-in-time recovery for PostgreSQL.
//!
//! The binary (`main.rs`) is a thin shell over this library so integration tests can
//! drive the repository, codec and operations directly. See `docs/ARCHITECTURE.md`.

pub mod archival;
pub mod cli;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod failpoint;
pub mod host;
pub mod jobs;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod notify;
pub mod ops;
pub mod partitions;
pub mod pg;
pub mod physical;
pub mod recovery;
pub mod repo;
pub mod retention;
pub mod schedule;
#[cfg(test)]
pub(crate) mod test_fixtures;
pub mod text;
pub mod transfer;
pub mod webhook;
