//! Physical backups on disk: what to copy from PGDATA and the tar parts that hold it.

pub mod scan;
pub mod tarpart;
