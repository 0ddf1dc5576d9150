//! PostgreSQL's archive_command and restore_command: `wal-push %p` stores a WAL file
//! (and the `.ready` files after it, ahead of their calls), `wal-fetch %f %p` restores one
//! (and prefetches the segments that follow into a spool).

pub mod backlog;
pub mod fetch;
pub mod fetch_ahead;
pub mod push;
pub mod push_ahead;
