//! Physical backups on disk: what to copy from PGDATA, the tar parts that hold it, and
//! writing a restore beneath its directory without following links.

pub mod beneath;
pub mod incremental;
pub mod scan;
pub mod tarpart;
