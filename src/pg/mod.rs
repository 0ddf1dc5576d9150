//! PostgreSQL: connections, server binaries, and WAL/LSN arithmetic.

pub mod bin;
pub mod conn;
pub mod server;
pub mod wal;
