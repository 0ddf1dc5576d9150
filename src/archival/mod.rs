//! Old-row and old-partition archival into an archive schema (`[[archive]]` policies).
//!
//! `plan` is pure (SQL text, column and partition decisions); `inspect` reads the
//! catalog; `rows` and `partmode` move data; `log` keeps `archive_log` and runs the
//! `audit` hook with it; `export` describes what cold storage holds. The command glue
//! is `ops/archival.rs` (and `ops/export.rs` for exports).

pub mod audit;
pub mod count;
pub mod export;
pub mod inspect;
pub mod log;
pub mod partmode;
pub mod plan;
pub mod report;
pub mod rows;
