//! Host-wide job locks shared by the daemon and the CLI: one run per job kind.
//!
//! A lock is an advisory `flock` on `<state_dir>/<name>.lock`. The kernel drops it when
//! the holder exits, however it exits, so a killed process never leaves a stale lock.
//! The file holds the holder's pid and command for messages.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct JobLock {
    file: File,
    pub path: PathBuf,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
        held_here().remove(&self.path);
    }
}

/// The lock files this process holds. A holder empties its lock file before releasing
/// it, so the file cannot tell a waiter reliably that the holder is itself; this can.
fn held_here() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<PathBuf>> {
    static HELD: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether this process holds lock `name` in `state_dir`.
pub fn held_by_this_process(state_dir: &Path, name: &str) -> bool {
    held_here().contains(&state_dir.join(format!("{name}.lock")))
}

/// How to behave when another process holds the lock.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Fail at once, naming the holder.
    No,
    /// Wait up to this long (then fail).
    Up(Duration),
}

fn open(state_dir: &Path, name: &str) -> anyhow::Result<(File, PathBuf)> {
    std::fs::create_dir_all(state_dir).with_context(|| {
        format!(
            "create state directory {} (backup.state_dir)",
            state_dir.display()
        )
    })?;
    let path = state_dir.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("open lock file {}", path.display()))?;
    Ok((file, path))
}

fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut s);
    let s = s.trim().replace('\n', ", ");
    if s.is_empty() {
        "another process".into()
    } else {
        s
    }
}

/// Take lock `name` (e.g. `backup-physical`). Blocking: call from a blocking context or
/// through [`acquire_async`].
pub fn acquire(state_dir: &Path, name: &str, wait: Wait) -> anyhow::Result<JobLock> {
    let (mut file, path) = open(state_dir, name)?;
    let started = Instant::now();
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let who = holder(&mut file);
                match wait {
                    Wait::No => {
                        return Err(anyhow::Error::from(crate::error::LockHeld {
                            message: format!(
                                "a {name} job is already running ({who}); wait for it, or run without --no-wait to queue behind it"
                            ),
                            lock: name.to_string(),
                            holder: who,
                            by_this_process: held_here().contains(&path),
                        }))
                    }
                    Wait::Up(limit) if started.elapsed() >= limit => {
                        anyhow::bail!(
                            "gave up after {limit:?} waiting for the running {name} job ({who})"
                        )
                    }
                    Wait::Up(_) => {
                        if !announced {
                            tracing::info!(lock = %path.display(), holder = %who, "waiting for the running {name} job to finish");
                            announced = true;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {}", path.display()))
            }
        }
    }
    take(file, path)
}

/// Record this process as the holder of a lock it just took.
fn take(mut file: File, path: PathBuf) -> anyhow::Result<JobLock> {
    file.set_len(0)?;
    file.rewind()?;
    let cmd: Vec<String> = std::env::args().collect();
    held_here().insert(path.clone());
    writeln!(
        file,
        "pid {}\n{}\nsince {}",
        std::process::id(),
        cmd.join(" "),
        chrono::Utc::now().to_rfc3339()
    )?;
    Ok(JobLock { file, path })
}

/// Take lock `name` if it is free; `Ok(Err(holder))` describes the process holding it.
/// Never waits (the daemon skips a run whose lock is taken instead of queueing).
pub fn try_acquire(state_dir: &Path, name: &str) -> anyhow::Result<Result<JobLock, String>> {
    let (mut file, path) = open(state_dir, name)?;
    match file.try_lock() {
        Ok(()) => Ok(Ok(take(file, path)?)),
        Err(TryLockError::WouldBlock) => Ok(Err(holder(&mut file))),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("lock {}", path.display())),
    }
}

/// [`acquire`] without blocking the async runtime.
pub async fn acquire_async(state_dir: &Path, name: &str, wait: Wait) -> anyhow::Result<JobLock> {
    let dir = state_dir.to_path_buf();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || acquire(&dir, &name, wait)).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_fails_fast_and_names_the_first() {
        let d = tempfile::tempdir().unwrap();
        let _held = acquire(d.path(), "backup-physical", Wait::No).unwrap();
        let err = acquire(d.path(), "backup-physical", Wait::No).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("already running"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        // Other kinds are independent.
        acquire(d.path(), "backup-logical", Wait::No).unwrap();
    }

    #[test]
    fn waiting_holder_gets_the_lock_after_release() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), "verify", Wait::No).unwrap();
        let dir = d.path().to_path_buf();
        let t =
            std::thread::spawn(move || acquire(&dir, "verify", Wait::Up(Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn try_acquire_names_the_holder_and_takes_a_free_lock() {
        let d = tempfile::tempdir().unwrap();
        let held = try_acquire(d.path(), "archive").unwrap().unwrap();
        let who = try_acquire(d.path(), "archive").unwrap().unwrap_err();
        assert!(
            who.contains(&format!("pid {}", std::process::id())),
            "{who}"
        );
        drop(held);
        try_acquire(d.path(), "archive").unwrap().unwrap();
    }

    #[test]
    fn waiting_gives_up() {
        let d = tempfile::tempdir().unwrap();
        let _held = acquire(d.path(), "retention", Wait::No).unwrap();
        let err = acquire(d.path(), "retention", Wait::Up(Duration::from_millis(300))).unwrap_err();
        assert!(format!("{err:#}").contains("gave up"));
    }

    #[test]
    fn a_lock_held_by_this_process_is_known_as_such_until_released() {
        let d = tempfile::tempdir().unwrap();
        let held = acquire(d.path(), "retention", Wait::No).unwrap();
        assert!(held_by_this_process(d.path(), "retention"));
        let err = acquire(d.path(), "retention", Wait::No).unwrap_err();
        let h = err.downcast_ref::<crate::error::LockHeld>().unwrap();
        assert!(h.held_by_this_process(), "{h:?}");
        drop(held);
        assert!(!held_by_this_process(d.path(), "retention"));
    }
}
