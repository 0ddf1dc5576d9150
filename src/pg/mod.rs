//! PostgreSQL: connections, server binaries, WAL/LSN arithmetic, SQL quoting and
//! cross-host advisory locks.

pub mod advisory;
pub mod bin;
pub mod conn;
pub mod retry;
pub mod server;
pub mod sql;
pub mod wal;
