//! Error kinds that decide the process exit code.
//!
//! Exit codes: 0 success; 1 the operation failed (I/O, PostgreSQL, repository, corruption);
//! 2 the request itself is wrong or refused (bad config or flags, unsafe target directory,
//! target outside the recoverable window); 3 another run of the same job holds its lock; wal-fetch also uses 126
//! ([`STOP_RECOVERY_EXIT`]); `migrate` exits with its COMMAND's own code when that failed
//! and the database was restored, and [`MIGRATION_RESTORE_FAILED_EXIT`] when the restore
//! after it failed too ([`MigrationFailed`]). Operations return `anyhow` errors; wrapping one of these
//! types anywhere in the chain selects the code. This is the only place that maps errors
//! to exit codes: no operation or domain module names a number.

use std::fmt;

/// The caller's input is wrong or the request is refused: exit code 2.
#[derive(Debug)]
pub struct UserError {
    msg: String,
}

impl UserError {
    pub fn new(msg: impl Into<String>) -> Self {
        UserError { msg: msg.into() }
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for UserError {}

/// Another run of the same job holds its lock (the host-wide job lock, or the
/// PostgreSQL advisory lock another host holds): exit code 3. The daemon's runner skips
/// the run instead of failing it: the work is being done.
#[derive(Debug)]
pub struct LockHeld {
    /// The lock: a job lock's name (`backup-physical`), or what else is held.
    pub lock: String,
    /// Who holds it, as far as known (`pid 123, backupctl backup, since …`).
    pub holder: String,
    /// The whole message for the operator, with what to do.
    pub message: String,
    /// The holder is this process (known from the process's own record of the locks it
    /// holds, not from the lock file, which a releasing holder empties first).
    pub by_this_process: bool,
}

impl fmt::Display for LockHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LockHeld {}

impl LockHeld {
    /// Whether the holder is this very process (another job of the same daemon).
    pub fn held_by_this_process(&self) -> bool {
        self.by_this_process
    }
}

/// The operation failed and what went wrong is already in front of the operator (a
/// rendered report, or nothing to say): exit code 1 with `summary` as the one-line
/// message, or silently when it is `None` (wal-fetch of a segment that is not archived).
#[derive(Debug)]
pub struct Reported {
    pub summary: Option<String>,
}

impl Reported {
    pub fn quiet() -> Self {
        Reported { summary: None }
    }
    pub fn new(summary: impl Into<String>) -> Self {
        Reported {
            summary: Some(summary.into()),
        }
    }
}

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.summary.as_deref().unwrap_or("failed (reported above)"))
    }
}

impl std::error::Error for Reported {}

/// restore_command must stop recovery instead of letting PostgreSQL take the failure
/// for the end of the archive: exit code 126 (see `ops::wal::fetch`).
#[derive(Debug)]
pub struct StopRecovery {
    pub message: String,
}

/// The exit code PostgreSQL treats as "stop recovery": above 125.
pub const STOP_RECOVERY_EXIT: i32 = 126;

impl fmt::Display for StopRecovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StopRecovery {}

/// `migrate`: the migration COMMAND failed (`code` is its own exit code, or 128 + the
/// signal that killed it, when the database was restored; or
/// [`MIGRATION_RESTORE_FAILED_EXIT`] when restoring failed too).
#[derive(Debug)]
pub struct MigrationFailed {
    pub code: i32,
    pub message: String,
}

/// `migrate`'s exit code when the migration failed and the database could not be
/// restored (it is as the migration left it).
pub const MIGRATION_RESTORE_FAILED_EXIT: i32 = 4;

impl fmt::Display for MigrationFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MigrationFailed {}

/// Whether another run holds the job's lock somewhere in `err`'s chain.
pub fn is_lock_held(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.is::<LockHeld>())
}

/// Whether the request itself is refused (bad input): retrying cannot help.
pub fn is_refused(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.is::<UserError>())
}

/// Shorthand for `Err(UserError::new(..).into())`.
#[macro_export]
macro_rules! user_error {
    ($($arg:tt)*) => {
        ::anyhow::Error::from($crate::error::UserError::new(format!($($arg)*)))
    };
}

/// The exit code and the one-line message for an error chain (`None` = print nothing).
pub fn classify(err: &anyhow::Error) -> (i32, Option<String>) {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<StopRecovery>() {
            return (STOP_RECOVERY_EXIT, Some(e.message.clone()));
        }
        if let Some(e) = cause.downcast_ref::<LockHeld>() {
            return (3, Some(e.message.clone()));
        }
        if let Some(e) = cause.downcast_ref::<Reported>() {
            return (1, e.summary.clone());
        }
        if let Some(e) = cause.downcast_ref::<MigrationFailed>() {
            // A COMMAND that "failed" with 0 must still fail the process.
            return (
                if e.code == 0 { 1 } else { e.code },
                Some(e.message.clone()),
            );
        }
    }
    let code = if err.chain().any(|c| c.is::<UserError>()) {
        2
    } else {
        1
    };
    let mut message = format!("{err:#}");
    let denied = err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    });
    if denied {
        message.push_str(&format!(
            ". Fix: give the user backupctl runs as (uid {}; as archive_command or \
             restore_command, the PostgreSQL server's user) access to that path",
            rustix::process::getuid().as_raw()
        ));
    }
    (code, Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn user_error_anywhere_in_chain_exits_2() {
        let e = anyhow::Error::from(UserError::new("bad key")).context("load config");
        assert_eq!(classify(&e), (2, Some("load config: bad key".into())));
    }

    #[test]
    fn other_errors_exit_1() {
        let e: anyhow::Result<()> = Err(std::io::Error::other("disk")).context("write");
        assert_eq!(classify(&e.unwrap_err()).0, 1);
    }

    #[test]
    fn permission_denied_names_the_fix() {
        let e: anyhow::Result<()> = Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("create temp file for wal/x");
        let (code, message) = classify(&e.unwrap_err());
        assert_eq!(code, 1);
        let message = message.unwrap();
        assert!(
            message.starts_with("create temp file for wal/x: permission denied")
                && message.contains("Fix: give the user backupctl runs as (uid "),
            "{message}"
        );
    }

    #[test]
    fn quiet_exit_prints_nothing() {
        let e = anyhow::Error::from(Reported::quiet());
        assert_eq!(classify(&e), (1, None));
    }

    #[test]
    fn lock_held_exits_3_and_stop_recovery_126() {
        let e = anyhow::Error::from(LockHeld {
            lock: "backup-physical".into(),
            holder: "pid 1".into(),
            message: "a backup-physical job is already running".into(),
            by_this_process: false,
        })
        .context("backup");
        assert_eq!(classify(&e).0, 3);
        assert!(is_lock_held(&e) && !is_refused(&e));
        let e = anyhow::Error::from(StopRecovery {
            message: "corrupt".into(),
        });
        assert_eq!(classify(&e), (126, Some("corrupt".into())));
    }

    #[test]
    fn failed_migration_exits_with_its_code() {
        let e = anyhow::Error::from(MigrationFailed {
            code: 7,
            message: "migration failed".into(),
        });
        assert_eq!(classify(&e), (7, Some("migration failed".into())));
        let e = anyhow::Error::from(MigrationFailed {
            code: MIGRATION_RESTORE_FAILED_EXIT,
            message: "restore failed".into(),
        });
        assert_eq!(classify(&e).0, 4);
    }
}
