//! Point-in-time recovery planning: targets, the WAL inventory with timelines, and the
//! choice of backup. Pure code (the inventory's `load` aside), shared by `restore`,
//! `list`/`info` and verification.

pub mod inventory;
pub mod lease;
pub mod plan;
pub mod target;
