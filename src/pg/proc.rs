//! Child processes of the PostgreSQL client programs (pg_dump, pg_restore, psql):
//! their stderr captured with a bound (so a chatty or failing program can neither fill
//! memory nor block on a full pipe), and a guard that kills a child the caller stops
//! waiting for (an abandoned pg_dump must not keep a snapshot and locks open).

use std::io::Read;
use std::process::{Child, ChildStderr, ExitStatus};
use std::thread::JoinHandle;

/// Bytes of stderr kept: the start (usually the first error) and the end.
const KEEP_HEAD: usize = 8 << 10;
const KEEP_TAIL: usize = 8 << 10;

/// Reads a child's stderr on its own thread, keeping the first and last few KiB.
pub struct StderrCapture(Option<JoinHandle<String>>);

impl StderrCapture {
    pub fn start(stderr: Option<ChildStderr>) -> StderrCapture {
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
    pub fn finish(mut self) -> String {
        self.0
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// A child process killed (and reaped) when dropped before [`KillOnDrop::wait`].
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    pub fn get_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited")
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn wait(mut self) -> std::io::Result<ExitStatus> {
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

/// `program failed (exit status 1): <its stderr, trimmed>`.
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

    #[test]
    fn dropped_child_is_killed() {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id();
        drop(KillOnDrop::new(child));
        // Reaped: the pid no longer names our child.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map(|c| !c.contains("sleep"))
                    .unwrap_or(true)
        );
    }
}
