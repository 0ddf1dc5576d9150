//! Leftovers of writes that never finished: a local repository's hidden temp files
//! (`.tmp-…`) of a killed process, an S3 bucket's multipart uploads never completed or
//! aborted. No listing shows them, yet they take space (a killed 2 GB backup leaves up to
//! 2 GB), so `info` and `check` count them, and the next backup, wal-push or retention
//! removes those whose writer is known to be dead.
//!
//! A temp file's name carries its writer: `.tmp-<encoded host>.<pid>.<random>`. Only
//! leftovers of this host whose process no longer exists are removed early; another
//! host's (its pids mean nothing here), a live process's, and those without a writer in
//! the name (S3 uploads, temp files named before writers were recorded) wait for
//! `retention.incomplete_after` ([`super::Repository::cleanup_incomplete`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{layout, Repository};

/// What every temp file name starts with (older ones: `.tmp-` and random characters).
pub const TEMP_PREFIX: &str = ".tmp-";

/// The process that wrote a leftover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Writer {
    pub host: String,
    pub pid: u32,
}

/// One leftover. `id` is what the backend needs to remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub id: String,
    /// Stored bytes, when known.
    pub bytes: u64,
    pub modified: Option<DateTime<Utc>>,
    pub writer: Option<Writer>,
}

/// The prefix of temp file names written by process `pid` on `host`.
pub fn temp_prefix(host: &str, pid: u32) -> String {
    format!("{TEMP_PREFIX}{}.{pid}.", layout::encode_name(host))
}

/// The prefix of this process's temp file names.
pub fn own_temp_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| temp_prefix(&crate::host::local_hostname(), std::process::id()))
}

/// The writer a temp file's name records, if it records one.
pub fn writer_of(file_name: &str) -> Option<Writer> {
    let rest = file_name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.splitn(3, '.');
    let (host, pid, _random) = (parts.next()?, parts.next()?, parts.next()?);
    let host = decode_name(host)?;
    let pid = pid.parse().ok().filter(|p| *p > 0)?;
    Some(Writer { host, pid })
}

/// The inverse of [`layout::encode_name`].
fn decode_name(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'~' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|h| !h.is_empty())
}

/// Whether process `pid` exists on this host (one we may not signal exists too).
pub fn pid_alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

/// The leftovers written on `host` by processes that `alive` says are gone.
pub fn of_dead_writers<'a>(
    all: &'a [Leftover],
    host: &str,
    alive: impl Fn(u32) -> bool,
) -> Vec<&'a Leftover> {
    all.iter()
        .filter(|l| {
            l.writer
                .as_ref()
                .is_some_and(|w| w.host == host && !alive(w.pid))
        })
        .collect()
}

/// Counts for `info` and `check`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeftoverSummary {
    pub count: usize,
    pub bytes: u64,
    /// Of them, written on this host by processes that are gone: the next backup,
    /// wal-push or retention removes them.
    pub of_dead_writers_here: usize,
}

/// Count the leftovers under the whole repository.
pub async fn summary(repo: &dyn Repository) -> anyhow::Result<LeftoverSummary> {
    let all = repo.leftovers("").await?;
    let host = crate::host::local_hostname();
    Ok(LeftoverSummary {
        count: all.len(),
        bytes: all.iter().map(|l| l.bytes).sum(),
        of_dead_writers_here: of_dead_writers(&all, &host, pid_alive).len(),
    })
}

/// Remove the leftovers under `prefix` of this host's dead processes; returns how many
/// and how many bytes. A failure costs only the space, so it is logged, never raised.
pub async fn remove_dead_writers(repo: &dyn Repository, prefix: &str) -> (usize, u64) {
    let all = match repo.leftovers(prefix).await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for leftovers of killed uploads");
            return (0, 0);
        }
    };
    let host = crate::host::local_hostname();
    let dead: Vec<Leftover> = of_dead_writers(&all, &host, pid_alive)
        .into_iter()
        .cloned()
        .collect();
    if dead.is_empty() {
        return (0, 0);
    }
    let bytes = dead.iter().map(|l| l.bytes).sum();
    match repo.remove_leftovers(&dead).await {
        Ok(n) => {
            tracing::info!(
                files = n,
                bytes,
                "removed leftovers of killed uploads by processes of this host that are gone"
            );
            (n, bytes)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove leftovers of killed uploads");
            (0, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(name: &str) -> Leftover {
        Leftover {
            id: format!("backups/x/{name}"),
            bytes: 10,
            modified: None,
            writer: writer_of(name),
        }
    }

    #[test]
    fn names_carry_their_writer() {
        for host in ["db1", "db1.example.com", "weird host~", "x-y_z"] {
            let name = format!("{}AbC123", temp_prefix(host, 4242));
            assert_eq!(
                writer_of(&name),
                Some(Writer {
                    host: host.into(),
                    pid: 4242
                }),
                "{name}"
            );
        }
        // Older names, and anything else, have no writer.
        for name in [
            ".tmp-AbC123",
            ".tmp-db1.x.abc",
            ".tmp-db1.0.abc",
            "base.tar",
            ".tmp-~ZZ.1.a",
        ] {
            assert_eq!(writer_of(name), None, "{name}");
        }
    }

    #[test]
    fn only_this_hosts_dead_writers_are_removed() {
        let all = vec![
            left(&format!("{}a", temp_prefix("here", 10))),
            left(&format!("{}b", temp_prefix("here", 11))),
            left(&format!("{}c", temp_prefix("there", 10))),
            left(".tmp-old123"),
        ];
        let dead = of_dead_writers(&all, "here", |pid| pid == 11);
        assert_eq!(dead, vec![&all[0]]);
    }

    #[test]
    fn own_process_is_alive_and_a_reaped_child_is_not() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
    }
}
