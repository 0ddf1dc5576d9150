//! The use cases, one module each: `fn(&Config, Request) -> Result<Report>`. An
//! operation takes its own job lock (with a [`crate::lock::Wait`] its caller chooses),
//! does the work through the domain and infrastructure modules below it, and returns
//! what it did. It never prints to stdout, knows nothing of clap or `--json`, and never
//! picks an exit code: `cli/` renders reports and `error::classify` maps errors to codes.

pub mod across;
pub mod archival;
pub mod backup;
pub mod check;
pub mod export;
pub mod info;
pub mod list;
pub mod migrate;
pub mod partitions;
pub mod restore;
pub mod retention;
pub mod status;
pub mod verify;
pub mod wal;
pub mod workdir;
