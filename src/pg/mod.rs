//! PostgreSQL: connections, server binaries and the child processes run from them
//! (pg_dump, pg_restore, psql), dump tables of contents, SQL quoting, SQL scripts from
//! the repository split without psql, cross-host advisory locks, and WAL/LSN arithmetic.

pub mod advisory;
pub mod bin;
pub mod conn;
pub mod copy;
pub mod proc;
pub mod retry;
pub mod script;
pub mod server;
pub mod sql;
pub mod tls;
pub mod toc;
pub mod wal;
pub mod walpage;
pub mod walsummary;
