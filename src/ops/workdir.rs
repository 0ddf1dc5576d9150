//! Work directories of exports and logical restores: `backup.state_dir/tmp/<what>-<pid>-…`,
//! removed when the command ends. They may hold plaintext rows (a dump on its way), so
//! those a killed command left behind are removed by the next one: a directory whose
//! process no longer runs.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;

/// A fresh work directory for `what` (`export`, `restore`), after removing those of
/// processes that are gone.
pub fn create(cfg: &Config, what: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = cfg.backup.state_dir.join("tmp");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("create {} (backup.state_dir)", dir.display()))?;
    remove_orphans(&dir);
    tempfile::Builder::new()
        .prefix(&format!("{what}-{}-", std::process::id()))
        .tempdir_in(&dir)
        .with_context(|| format!("create a work directory in {}", dir.display()))
}

/// The process a work directory's name says it belongs to.
fn owner(name: &str) -> Option<i32> {
    let mut parts = name.rsplitn(3, '-');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

fn alive(pid: i32) -> bool {
    use rustix::process::{test_kill_process, Pid};
    match Pid::from_raw(pid) {
        // EPERM: it runs, as another user.
        Some(p) => !matches!(test_kill_process(p), Err(rustix::io::Errno::SRCH)),
        None => false,
    }
}

fn remove_orphans(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner(&name) else { continue };
        if alive(pid) {
            continue;
        }
        let path = e.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::warn!(dir = %path.display(), "removed the work directory of a command that did not finish")
            }
            Err(err) => {
                tracing::warn!(dir = %path.display(), error = %err, "cannot remove the work directory of a command that did not finish")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_dead_processes_go_live_ones_stay() {
        let state = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.backup.state_dir = state.path().to_path_buf();
        let tmp = state.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        // A pid that cannot be running (above the kernel's pid_max).
        let dead = tmp.join("export-99999999-abcDEF");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("data.dump"), b"rows").unwrap();
        let live = tmp.join(format!("restore-{}-xyzXYZ", std::process::id()));
        std::fs::create_dir(&live).unwrap();
        let other = tmp.join("unrelated");
        std::fs::create_dir(&other).unwrap();
        let mine = create(&cfg, "export").unwrap();
        assert!(!dead.exists());
        assert!(live.exists() && other.exists() && mine.path().exists());
        let name = mine
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(owner(&name), Some(std::process::id() as i32));
    }
}
