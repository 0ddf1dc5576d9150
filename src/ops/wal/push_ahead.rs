//! Pushing WAL ahead of PostgreSQL's archiver.
//!
//! PostgreSQL calls archive_command once per segment, serially, so one slow upload holds
//! back every later segment. When wal-push is asked for segment S it also pushes the
//! next `.ready` files in `pg_wal/archive_status` in parallel, and for each one that is
//! durable in the repository leaves a marker in `<state_dir>/wal-pushed/<repository>/`. When the
//! archiver then asks for one of those, wal-push finds the marker and returns at once.
//!
//! A marker records the file's size and modification time; it is used only if the file
//! PostgreSQL hands over still matches, and it is consumed (deleted) when used. A marker
//! that is lost just means the file is pushed again, which is idempotent. Markers that
//! nobody consumed (archiving turned off, say) are removed after a day.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::pg::wal;

const MAX_AGE: Duration = Duration::from_secs(86400);

pub struct Markers {
    dir: PathBuf,
}

fn stamp(path: &Path) -> Option<String> {
    let md = std::fs::metadata(path).ok()?;
    Some(format!("{} {}.{}", md.len(), md.mtime(), md.mtime_nsec()))
}

impl Markers {
    /// The markers of the repository tagged `repo_tag` ([`crate::repo::location_tag`]):
    /// a file pushed to one repository is not "pushed" for another.
    pub fn new(state_dir: &Path, repo_tag: &str) -> Markers {
        Markers {
            dir: state_dir.join("wal-pushed").join(repo_tag),
        }
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True (and the marker is consumed) if `name` was already pushed from exactly the
    /// file now at `path`.
    pub fn take(&self, name: &str, path: &Path) -> bool {
        let m = self.marker(name);
        let Ok(recorded) = std::fs::read_to_string(&m) else {
            return false;
        };
        let _ = std::fs::remove_file(&m);
        stamp(path).is_some_and(|now| now == recorded.trim())
    }

    pub fn exists(&self, name: &str) -> bool {
        self.marker(name).exists()
    }

    /// Record that the file at `path` is durable in the repository as `name`.
    pub fn put(&self, name: &str, path: &Path) -> std::io::Result<()> {
        let Some(s) = stamp(path) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, s)?;
        std::fs::rename(&tmp, self.marker(name))
    }

    /// Remove markers nobody consumed within a day.
    pub fn clean_old(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let cutoff = SystemTime::now() - MAX_AGE;
        for e in rd.flatten() {
            if e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Up to `n` other WAL files PostgreSQL has marked ready, in the order its archiver
/// takes them (history files, then oldest first), that have no marker yet: the ones it
/// will ask for next.
pub fn ready_files(requested: &Path, n: usize, markers: &Markers) -> Vec<PathBuf> {
    if n == 0 {
        return vec![];
    }
    let Some(wal_dir) = requested.parent() else {
        return vec![];
    };
    let requested_name = requested.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Ok(rd) = std::fs::read_dir(wal_dir.join("archive_status")) else {
        return vec![];
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|f| f.strip_suffix(".ready"))
                .map(str::to_string)
        })
        .filter(|n| n != requested_name && wal::classify(n).is_some() && !markers.exists(n))
        .collect();
    // The archiver's order: timeline history files first, then oldest first.
    names.sort_by(|a, b| (!a.ends_with(".history"), a).cmp(&(!b.ends_with(".history"), b)));
    names.truncate(n);
    names.into_iter().map(|n| wal_dir.join(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_used_once_and_only_for_the_same_file() {
        let d = tempfile::tempdir().unwrap();
        let m = Markers::new(d.path(), "r");
        let f = d.path().join("000000010000000000000001");
        std::fs::write(&f, b"wal").unwrap();
        assert!(!m.take("000000010000000000000001", &f));
        m.put("000000010000000000000001", &f).unwrap();
        assert!(m.exists("000000010000000000000001"));
        assert!(m.take("000000010000000000000001", &f));
        assert!(
            !m.take("000000010000000000000001", &f),
            "a marker is consumed"
        );
        // A different file under the same name (recycled, rewritten) is pushed again.
        m.put("000000010000000000000001", &f).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&f, b"other wal").unwrap();
        assert!(!m.take("000000010000000000000001", &f));
    }

    #[test]
    fn ready_files_oldest_first_without_markers() {
        let d = tempfile::tempdir().unwrap();
        let wal_dir = d.path().join("pg_wal");
        std::fs::create_dir_all(wal_dir.join("archive_status")).unwrap();
        for n in [
            "000000010000000000000003",
            "000000010000000000000002",
            "000000010000000000000004",
            "000000010000000000000005",
            "00000002.history",
        ] {
            std::fs::write(
                wal_dir.join("archive_status").join(format!("{n}.ready")),
                "",
            )
            .unwrap();
            std::fs::write(wal_dir.join(n), "x").unwrap();
        }
        std::fs::write(
            wal_dir.join("archive_status/000000010000000000000001.done"),
            "",
        )
        .unwrap();
        let m = Markers::new(d.path(), "r");
        m.put(
            "000000010000000000000004",
            &wal_dir.join("000000010000000000000004"),
        )
        .unwrap();
        let got: Vec<String> = ready_files(&wal_dir.join("000000010000000000000002"), 3, &m)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            vec![
                "00000002.history",
                "000000010000000000000003",
                "000000010000000000000005"
            ]
        );
    }
}
