//! Scratch space for test restores: private directories under `verify.scratch_dir`
//! (default `<state_dir>/scratch`), a free-space check before starting, and cleanup of
//! whatever an earlier, killed verification left behind (directories and the scratch
//! postmasters still running in them).
//!
//! Verification runs under the host-wide "verify" lock, so every scratch directory found
//! when the lock is taken belongs to a dead run and can go.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::pg::server::running_postmaster;

const PREFIX: &str = "verify-";

/// The scratch root for `cfg`.
pub fn root(cfg: &crate::config::Config) -> PathBuf {
    cfg.verify
        .scratch_dir
        .clone()
        .unwrap_or_else(|| cfg.backup.state_dir.join("scratch"))
}

/// Stop scratch postmasters and remove scratch directories of earlier runs.
/// Returns what was cleaned, for the log.
pub fn clean_stale(root: &Path) -> Vec<String> {
    let mut cleaned = vec![];
    let Ok(entries) = std::fs::read_dir(root) else {
        return cleaned;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let dir = e.path();
        for pgdata in [dir.join("pgdata"), dir.join("cluster")] {
            if let Some(pid) = running_postmaster(&pgdata) {
                kill_postmaster(pid);
                cleaned.push(format!(
                    "stopped scratch postmaster {pid} in {}",
                    pgdata.display()
                ));
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => cleaned.push(format!("removed stale scratch directory {}", dir.display())),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove stale scratch directory")
            }
        }
    }
    cleaned
}

/// SIGQUIT (immediate shutdown), then SIGKILL if it lingers.
fn kill_postmaster(pid: i32) {
    use rustix::process::{kill_process, test_kill_process, Pid, Signal};
    let Some(p) = Pid::from_raw(pid) else { return };
    let _ = kill_process(p, Signal::QUIT);
    for _ in 0..50 {
        if test_kill_process(p).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = kill_process(p, Signal::KILL);
    std::thread::sleep(std::time::Duration::from_millis(200));
}

/// Bytes available to this user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let st = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Fail unless `dir` has room for `needed` bytes.
pub fn ensure_space(dir: &Path, needed: u64) -> anyhow::Result<()> {
    let free = free_bytes(dir)?;
    if free < needed {
        return Err(crate::user_error!(
            "not enough scratch space for the test restore: it needs about {}, {} has {} free; \
             point verify.scratch_dir at a larger file system",
            crate::ops::status::human_bytes(needed),
            dir.display(),
            crate::ops::status::human_bytes(free)
        ));
    }
    Ok(())
}

/// Total size of the files under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else {
                total += md.len();
            }
        }
    }
    total
}

/// One run's scratch directory; removed (after stopping any postmaster in it) on drop.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn create(root: &Path, backup_id: &str) -> anyhow::Result<ScratchDir> {
        std::fs::create_dir_all(root).with_context(|| {
            format!(
                "create scratch root {} (verify.scratch_dir)",
                root.display()
            )
        })?;
        let path = root.join(format!("{PREFIX}{}-{backup_id}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        for pgdata in [self.path.join("pgdata"), self.path.join("cluster")] {
            if let Some(pid) = running_postmaster(&pgdata) {
                kill_postmaster(pid);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove scratch directory; the next verification removes it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_directories_are_removed_and_ours_on_drop() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("verify-999999-x/pgdata/base")).unwrap();
        std::fs::create_dir_all(root.path().join("unrelated")).unwrap();
        let cleaned = clean_stale(root.path());
        assert_eq!(cleaned.len(), 1, "{cleaned:?}");
        assert!(!root.path().join("verify-999999-x").exists());
        assert!(root.path().join("unrelated").exists());

        let s = ScratchDir::create(root.path(), "20260101T000000Z-physical").unwrap();
        std::fs::write(s.path.join("f"), vec![0u8; 1000]).unwrap();
        assert_eq!(disk_usage(&s.path), 1000);
        let p = s.path.clone();
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn space_check_names_the_fix() {
        let d = tempfile::tempdir().unwrap();
        assert!(ensure_space(d.path(), 1).is_ok());
        let e = ensure_space(d.path(), u64::MAX).unwrap_err();
        assert!(format!("{e:#}").contains("verify.scratch_dir"));
    }
}
