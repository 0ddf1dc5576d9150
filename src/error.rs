//! Error kinds that decide the process exit code.
//!
//! Exit codes: 0 success; 1 the operation failed (I/O, PostgreSQL, repository, corruption);
//! 2 the request itself is wrong or refused (bad config or flags, unsafe target directory,
//! target outside the recoverable window); wal-fetch also uses 126 (see
//! `commands::wal_fetch::STOP_RECOVERY_EXIT`). Commands return `anyhow`
//! errors; wrapping one of these types anywhere in the chain selects the code.

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

/// End the process with `code`; `message = None` ends it without printing anything
/// (wal-fetch of a segment that is not in the archive).
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: Option<String>,
}

impl Exit {
    pub fn quiet(code: i32) -> Self {
        Exit {
            code,
            message: None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit {}", self.code),
        }
    }
}

impl std::error::Error for Exit {}

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
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return (exit.code, exit.message.clone());
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
        let e = anyhow::Error::from(Exit::quiet(1));
        assert_eq!(classify(&e), (1, None));
    }
}
