//! Retention: which backups and WAL to delete, and proof that nothing a restore of a kept
//! backup needs goes with them. Pure policy code; `ops::retention` does the I/O.
//!
//! - [`policy`]: which complete backups the rules keep (per kind and label, tiers, the
//!   newest and newest-verified invariants);
//! - [`wal`]: which WAL files the kept physical backups (and `retention.wal`) keep;
//! - [`plan`]: both together with backups lacking a manifest, the exact keys to delete in
//!   execution order, and the recoverable-window check that refuses a harmful plan.

pub mod plan;
pub mod policy;
pub mod wal;
