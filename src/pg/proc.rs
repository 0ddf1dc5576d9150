//! Child processes of the PostgreSQL client programs (pg_dump, pg_restore, psql): the
//! one place that starts them, captures their stderr with a bound (so a chatty or failing
//! program can neither fill memory nor block on a full pipe), kills a child the caller
//! stops waiting for (an abandoned pg_dump must not keep a snapshot and locks open), and
//! turns a failed exit into an error naming the program and carrying its stderr.
//!
//! ```text
//! let mut p = Proc::spawn(cmd.stdout(Stdio::piped()), "pg_dump")?; // "start pg_dump"
//! std::io::copy(&mut p.take_stdout(), w)?;                         // streamed, not buffered
//! let warnings = p.finish()?;          // "pg_dump failed (exit status: 1): <stderr>"
//! ```
//!
//! Dropping a [`Proc`] before [`Proc::wait`] / [`Proc::finish`] (an early `?`) kills and
//! reaps the child.

use std::io::Read;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use anyhow::Context;

/// A running client program with its stderr captured; killed and reaped when dropped
/// before [`Proc::wait`] or [`Proc::finish`].
pub struct Proc {
    program: String,
    child: KillOnDrop,
    stderr: StderrCapture,
}

/// How a [`Proc`] ended: its exit status and the stderr kept.
pub struct Exited {
    pub program: String,
    pub status: ExitStatus,
    pub stderr: String,
}

impl Proc {
    /// Start `cmd` (stdin and stdout as the caller set them; stderr is captured here).
    /// `program` names it in errors: `start {program}`, `wait for {program}`,
    /// `{program} failed (…): …`.
    pub fn spawn(cmd: &mut Command, program: &str) -> anyhow::Result<Proc> {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {program}"))?;
        let stderr = StderrCapture::start(child.stderr.take());
        Ok(Proc {
            program: program.to_string(),
            child: KillOnDrop::new(child),
            stderr,
        })
    }

    /// The child's stdin (the command must have `Stdio::piped()` stdin); dropping it
    /// closes the pipe.
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.get_mut().stdin.take().expect("stdin piped")
    }

    /// The child's stdout (the command must have `Stdio::piped()` stdout).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.get_mut().stdout.take().expect("stdout piped")
    }

    /// Wait for the child to exit and collect its stderr, whatever the exit status.
    pub fn wait(self) -> std::io::Result<Exited> {
        let Proc {
            program,
            child,
            stderr,
        } = self;
        let status = child.wait()?;
        Ok(Exited {
            program,
            status,
            stderr: stderr.finish(),
        })
    }

    /// Wait for the child; a failed exit is an error with the program's stderr. On
    /// success, what it wrote on stderr (warnings) is returned.
    pub fn finish(self) -> anyhow::Result<String> {
        let wait_for = format!("wait for {}", self.program);
        self.wait().context(wait_for)?.check()
    }
}

impl Exited {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `program failed (exit status: 1): <its stderr, trimmed>`.
    pub fn failure(&self) -> String {
        failure(&self.program, self.status, &self.stderr)
    }

    /// The stderr text on success, else the [`Exited::failure`] message as an error.
    pub fn check(self) -> anyhow::Result<String> {
        if self.success() {
            Ok(self.stderr)
        } else {
            Err(anyhow::anyhow!("{}", self.failure()))
        }
    }
}

/// Run `cmd` to its end (stdin and stdout as the caller set them), failing with its
/// stderr if it fails; returns its stderr on success. See [`Proc`].
pub fn run_checked(cmd: &mut Command, program: &str) -> anyhow::Result<String> {
    Proc::spawn(cmd, program)?.finish()
}

/// Bytes of stderr kept: the start (usually the first error) and the end.
const KEEP_HEAD: usize = 8 << 10;
const KEEP_TAIL: usize = 8 << 10;

/// Reads a child's stderr on its own thread, keeping the first and last few KiB.
struct StderrCapture(Option<JoinHandle<String>>);

impl StderrCapture {
    fn start(stderr: Option<ChildStderr>) -> StderrCapture {
        StderrCapture(stderr.map(|mut s| {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut tail: Vec<u8> = Vec::new();
                let mut skipped = 0usize;
                let mut buf = [0u8; 4096];
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut chunk = &buf[..n];
                    if head.len() < KEEP_HEAD {
                        let take = chunk.len().min(KEEP_HEAD - head.len());
                        head.extend_from_slice(&chunk[..take]);
                        chunk = &chunk[take..];
                    }
                    tail.extend_from_slice(chunk);
                    if tail.len() > 2 * KEEP_TAIL {
                        let cut = tail.len() - KEEP_TAIL;
                        skipped += cut;
                        tail.drain(..cut);
                    }
                }
                if tail.len() > KEEP_TAIL {
                    let cut = tail.len() - KEEP_TAIL;
                    skipped += cut;
                    tail.drain(..cut);
                }
                let mut text = String::from_utf8_lossy(&head).into_owned();
                if skipped > 0 {
                    text.push_str(&format!("\n[… {skipped} bytes of output skipped …]\n"));
                }
                text.push_str(&String::from_utf8_lossy(&tail));
                text
            })
        }))
    }

    /// Everything kept, once the child closed its stderr.
    fn finish(mut self) -> String {
        self.0
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// A child process killed (and reaped) when dropped before [`KillOnDrop::wait`].
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    fn get_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited")
    }

    fn wait(mut self) -> std::io::Result<ExitStatus> {
        self.0.take().expect("child present until waited").wait()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `program failed (exit status: 1): <its stderr, trimmed>` (also for callers that
/// filter the stderr of an [`Exited`] first).
pub fn failure(program: &str, status: ExitStatus, stderr: &str) -> String {
    let msg = stderr.trim();
    if msg.is_empty() {
        format!("{program} failed ({status})")
    } else {
        format!("{program} failed ({status}): {}", msg.replace('\n', " | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn stderr_is_bounded_and_keeps_both_ends() {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("echo FIRST >&2; head -c 200000 /dev/zero | tr '\\0' x >&2; echo LAST >&2; exit 3")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let cap = StderrCapture::start(child.stderr.take());
        let status = child.wait().unwrap();
        let text = cap.finish();
        assert!(text.starts_with("FIRST"), "{}", &text[..20]);
        assert!(text.trim_end().ends_with("LAST"));
        assert!(text.contains("bytes of output skipped"));
        assert!(text.len() < KEEP_HEAD + KEEP_TAIL + 100);
        let msg = failure("pg_dump", status, "pg_dump: error: boom\n");
        assert!(
            msg.contains("pg_dump failed") && msg.contains("boom"),
            "{msg}"
        );
    }

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).stdin(Stdio::null());
        c
    }

    #[test]
    fn failing_child_stderr_reaches_the_error() {
        let e = run_checked(
            sh("echo 'pg_dump: error: connection refused' >&2; echo 'second line' >&2; exit 3")
                .stdout(Stdio::null()),
            "pg_dump",
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.starts_with("pg_dump failed ("), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(
            msg.contains("pg_dump: error: connection refused | second line"),
            "{msg}"
        );

        // The same through spawn/finish, with stdout streamed to the caller.
        let mut p = Proc::spawn(
            sh("echo out; echo 'broken' >&2; exit 1").stdout(Stdio::piped()),
            "pg_restore --list",
        )
        .unwrap();
        let mut out = String::new();
        p.take_stdout().read_to_string(&mut out).unwrap();
        assert_eq!(out, "out\n");
        let msg = p.finish().unwrap_err().to_string();
        assert!(
            msg.starts_with("pg_restore --list failed (") && msg.ends_with("): broken"),
            "{msg}"
        );
    }

    #[test]
    fn success_returns_stderr_and_wait_does_not_judge() {
        let warn = run_checked(&mut sh("echo 'warning: x' >&2"), "pg_dumpall").unwrap();
        assert_eq!(warn.trim(), "warning: x");
        let mut p = Proc::spawn(
            sh("cat; echo err >&2; exit 2")
                .stdin(Stdio::piped())
                .stdout(Stdio::null()),
            "psql",
        )
        .unwrap();
        {
            use std::io::Write;
            let mut stdin = p.take_stdin();
            stdin.write_all(b"SELECT 1;\n").unwrap();
        }
        let exited = p.wait().unwrap();
        assert!(!exited.success());
        assert_eq!(exited.status.code(), Some(2));
        assert_eq!(exited.stderr.trim(), "err");
        assert!(exited.failure().starts_with("psql failed ("));
    }

    #[test]
    fn a_program_that_cannot_start_is_named() {
        let e = run_checked(
            &mut Command::new("/nonexistent/backupctl-test/pg_dump"),
            "pg_dump",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "start pg_dump");
    }

    #[test]
    fn dropped_child_is_killed() {
        // `exec`: the shell becomes the sleep, so nothing else holds its stdout.
        let mut p = Proc::spawn(sh("exec sleep 600").stdout(Stdio::piped()), "pg_dump").unwrap();
        let pid = p.child.0.as_ref().unwrap().id();
        let mut out = p.take_stdout();
        drop(p);
        // Killed: its stdout reaches end-of-file at once (a live sleep would hold it
        // open for ten minutes).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = tx.send(out.read_to_end(&mut rest).map(|_| rest));
        });
        let rest = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the dropped child still holds its stdout open");
        assert!(rest.unwrap().is_empty());
        // Reaped: the pid no longer names our child (no zombie left).
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains("sleep"), "{cmdline}");
    }
}
