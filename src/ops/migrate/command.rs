//! Running the migration COMMAND: stdin, stdout and stderr are the caller's (its output
//! is passed through as it comes), `BACKUPCTL_BACKUP_ID` names the pre-migration backup.
//!
//! SIGINT, SIGTERM and SIGHUP sent to backupctl while COMMAND runs are forwarded to it
//! instead of ending backupctl: a cancelled CI job or a Ctrl-C then ends the migration,
//! and backupctl is still there to restore the database afterwards.

use std::process::Stdio;

use anyhow::Context;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

/// How COMMAND ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandOutcome {
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
}

impl CommandOutcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// The code a shell would report: the exit code, or 128 + the signal.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 1,
        }
    }

    pub fn describe(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "ended without an exit status".into(),
        }
    }
}

/// Run `argv` to its end.
pub async fn run(argv: &[String], backup_id: &str) -> anyhow::Result<CommandOutcome> {
    let (program, args) = argv.split_first().context("no COMMAND given")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("BACKUPCTL_BACKUP_ID", backup_id)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            crate::user_error!(
                "cannot start the migration command {program:?}: {e} (nothing was changed; the backup {backup_id} was taken)"
            )
        })?;
    let pid = child.id();
    let mut int = signal(SignalKind::interrupt()).context("catch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("catch SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("catch SIGHUP")?;
    let status = loop {
        let forward = tokio::select! {
            st = child.wait() => break st.context("wait for the migration command")?,
            _ = int.recv() => rustix::process::Signal::INT,
            _ = term.recv() => rustix::process::Signal::TERM,
            _ = hup.recv() => rustix::process::Signal::HUP,
        };
        tracing::warn!(
            "passing {forward:?} on to the migration command; the database is recovered once it has ended"
        );
        if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, forward);
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(CommandOutcome {
        exit_code: status.code(),
        signal: status.signal(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported() {
        let sh = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
        let o = run(
            &sh("test \"$BACKUPCTL_BACKUP_ID\" = X1 && exit 0 || exit 9"),
            "X1",
        )
        .await
        .unwrap();
        assert!(o.success(), "{o:?}");
        let o = run(&sh("exit 7"), "X1").await.unwrap();
        assert_eq!((o.exit_code, o.shell_code()), (Some(7), 7));
        let o = run(&sh("kill -9 $$"), "X1").await.unwrap();
        assert_eq!((o.signal, o.shell_code()), (Some(9), 137));
        let e = run(&["/nonexistent/migrate".to_string()], "X1")
            .await
            .unwrap_err();
        assert_eq!(crate::error::classify(&e).0, 2);
    }
}
