//! WAL waiting for a repository with `required = false`.
//!
//! When such a repository cannot take a WAL file, wal-push still succeeds (the required
//! repositories have it) and queues the file's name in
//! `<state_dir>/wal-backlog/<repository tag>/`; after a failure the repository is left
//! alone for [`PAUSE`] (`paused-until`), so an unreachable server costs the archiver
//! nothing. Later calls catch up: from `pg_wal` while the file is there, else from a
//! repository that has it (see `push::catch_up`). `check`, `info` and `/metrics` show
//! each repository's backlog.
//!
//! An entry is an empty file named after the WAL file, created and its directory synced
//! before wal-push returns: a crash never loses one. An entry removed too early would
//! leave a gap that `verify --wal` of that repository reports.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::pg::wal;

/// How long a repository that failed is left alone before the next try.
pub const PAUSE: Duration = Duration::from_secs(30);

const PAUSED_UNTIL: &str = "paused-until";

pub struct Backlog {
    dir: PathBuf,
}

/// One repository's backlog, for `check`, `info` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct BacklogStatus {
    pub repository: String,
    pub files: usize,
    /// The oldest file waiting.
    pub oldest: Option<String>,
    /// When the repository is tried again, if it failed recently (RFC 3339).
    pub paused_until: Option<String>,
    /// Files that will never reach it (see [`Backlog::mark_lost`]).
    pub lost: Vec<String>,
}

impl Backlog {
    /// The backlog of the repository `cfg` acts on.
    pub fn of(cfg: &Config) -> Backlog {
        Backlog::at(&cfg.backup.state_dir, &crate::repo::location_tag(cfg))
    }

    pub fn at(state_dir: &Path, repo_tag: &str) -> Backlog {
        Backlog {
            dir: state_dir.join("wal-backlog").join(repo_tag),
        }
    }

    /// Queue `name`, durably.
    pub fn add(&self, name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let f = std::fs::File::create(self.dir.join(name))?;
        f.sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// `name` reached the repository.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }

    /// The queued WAL file names, oldest first (history files before the segments of
    /// their timeline, as PostgreSQL archives them).
    pub fn files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| wal::classify(n).is_some())
            .collect();
        names.sort();
        names
    }

    /// `name` can no longer reach the repository (neither `pg_wal` nor another
    /// repository has it): it leaves the queue, so later files are not held back, and is
    /// listed as lost until the repository's next backup makes it unneeded and the
    /// operator removes the entry (`lost/` in the backlog's directory).
    pub fn mark_lost(&self, name: &str) -> std::io::Result<()> {
        let lost = self.dir.join("lost");
        std::fs::create_dir_all(&lost)?;
        std::fs::rename(self.dir.join(name), lost.join(name))
    }

    /// The files marked lost.
    pub fn lost(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("lost"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Leave the repository alone for [`PAUSE`].
    pub fn pause(&self) {
        let until = SystemTime::now() + PAUSE;
        let secs = until
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let _ = std::fs::create_dir_all(&self.dir);
        let _ = std::fs::write(self.dir.join(PAUSED_UNTIL), secs.to_string());
    }

    /// The repository failed within [`PAUSE`]: until when it is left alone.
    pub fn paused_until(&self) -> Option<SystemTime> {
        let secs: u64 = std::fs::read_to_string(self.dir.join(PAUSED_UNTIL))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let until = UNIX_EPOCH + Duration::from_secs(secs);
        (until > SystemTime::now()).then_some(until)
    }

    pub fn resume(&self) {
        let _ = std::fs::remove_file(self.dir.join(PAUSED_UNTIL));
    }

    pub fn status(&self, repository: &str) -> BacklogStatus {
        let files = self.files();
        BacklogStatus {
            repository: repository.to_string(),
            files: files.len(),
            oldest: files.first().cloned(),
            paused_until: self
                .paused_until()
                .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
            lost: self.lost(),
        }
    }
}

/// The backlog of every repository that receives WAL and has `required = false` or
/// files waiting (queued before it was made required).
pub fn statuses(cfg: &Config) -> Vec<BacklogStatus> {
    cfg.repositories_for(crate::config::StoredKind::Wal)
        .into_iter()
        .map(|r| Backlog::of(&cfg.with_repository(&r)).status(&r.name))
        .zip(cfg.repositories_for(crate::config::StoredKind::Wal))
        .filter(|(s, r)| !r.required || s.files > 0 || !s.lost.is_empty())
        .map(|(s, _)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pause_and_status() {
        let d = tempfile::tempdir().unwrap();
        let b = Backlog::at(d.path(), "t");
        assert!(b.files().is_empty());
        b.add("000000010000000000000003").unwrap();
        b.add("000000010000000000000002").unwrap();
        b.add("00000002.history").unwrap();
        assert_eq!(
            b.files(),
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "00000002.history"
            ]
        );
        assert!(b.paused_until().is_none());
        b.pause();
        assert!(b.paused_until().is_some());
        let s = b.status("s3");
        assert_eq!(s.files, 3);
        assert_eq!(s.oldest.as_deref(), Some("000000010000000000000002"));
        assert!(s.paused_until.is_some());
        b.resume();
        b.remove("000000010000000000000002");
        assert_eq!(b.files().len(), 2);
        b.mark_lost("000000010000000000000003").unwrap();
        assert_eq!(b.files(), ["00000002.history"]);
        assert_eq!(b.lost(), ["000000010000000000000003"]);
        assert!(b.paused_until().is_none());
    }
}
