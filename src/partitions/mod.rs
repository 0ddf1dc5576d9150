//! Monthly range partitions: the calendar, bounds as the catalog states them, the
//! creation plan (pure), and catalog access shared with row/partition archival.
//!
//! `ops/partitions.rs` runs the plan; `archival/` reuses the catalog and bounds to
//! decide which partitions are entirely older than a cutoff.

pub mod bounds;
pub mod calendar;
pub mod catalog;
pub mod plan;
pub mod report;
