//! Prefetching WAL during recovery.
//!
//! PostgreSQL's startup process asks restore_command for one segment at a time and
//! replays it before asking for the next, so the latency of every call is on the
//! recovery's critical path. When wal-fetch restores segment S it also restores the
//! segments that follow S on its timeline, in parallel, into a spool directory beside
//! `%p` (`pg_wal/.backupctl-prefetch/<boot id>/`); the calls that then ask for them move
//! the file into place and return at once.
//!
//! Why a spooled file can be trusted:
//! - it appears under its final name only once complete: written to a temp file, its
//!   checksum verified against the repository's, then renamed;
//! - it is not fsynced (PostgreSQL makes a restored file it keeps durable itself, with
//!   `durable_rename`), so the spool is keyed by the kernel's boot id: after a crash of
//!   the host, files written before it are never used;
//! - archived WAL is never overwritten, so a spooled file holds the archive's content for
//!   its name for as long as it lives.
//!
//! Spooled segments before the one requested, or of another timeline, and the spools of
//! earlier boots are removed as recovery moves on; wal-push removes the whole spool once
//! recovery has ended (no `recovery.signal` or `standby.signal`), and so does
//! `restore --start`. Prefetching starts only once the requested segment was found, and
//! stops at the first following segment the archive does not have; it is skipped when
//! it would leave less than `wal.fetch_reserve_mib` free.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pg::wal;

/// The spool's directory under `pg_wal`.
pub const SPOOL_DIR: &str = ".backupctl-prefetch";

/// The file in the spool naming the segment recovery restored last.
const POSITION: &str = ".position";

/// Prefix of the markers of segments being fetched into the spool.
const FETCHING: &str = ".fetching-";

/// Removes its marker when dropped (see [`Spool::fetching`]).
pub struct FetchingMarker(PathBuf);

impl Drop for FetchingMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Temp files of a process that died are removed after this long.
const STALE_TEMP: Duration = Duration::from_secs(3600);

pub struct Spool {
    dir: PathBuf,
}

/// Changes at every boot: a spool from an earlier boot is never trusted.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID).ok()?;
    let id = id.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| id.to_string())
}

/// The directory `%p` is in (PostgreSQL passes `pg_wal/RECOVERYXLOG`, relative to PGDATA).
pub fn wal_dir_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

impl Spool {
    /// The spool beside `dest`, or None where the boot id cannot be read (no prefetch).
    pub fn beside(dest: &Path) -> Option<Spool> {
        Some(Spool {
            dir: wal_dir_of(dest).join(SPOOL_DIR).join(boot_id()?),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// How many segments are spooled.
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| wal::classify(&e.file_name().to_string_lossy()).is_some())
            .count()
    }

    pub fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Record that recovery has restored segment `name` (from the spool or the
    /// archive): the background prefetcher keeps the segments after it spooled.
    /// Best effort: without it, the prefetcher goes on from where it was.
    pub fn note_position(&self, name: &str) {
        let tmp = self.dir.join(format!("{POSITION}.{}", std::process::id()));
        if std::fs::write(&tmp, name).is_err()
            || std::fs::rename(&tmp, self.dir.join(POSITION)).is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The segment recovery restored last, as [`Spool::note_position`] recorded it.
    pub fn position(&self) -> Option<String> {
        let name = std::fs::read_to_string(self.dir.join(POSITION)).ok()?;
        let name = name.trim();
        is_segment(name).then(|| name.to_string())
    }

    /// Mark `name` as being fetched into the spool until the guard is dropped (after
    /// the copy has its name, or the fetch failed): a call asking for it meanwhile
    /// waits for this copy ([`Spool::is_fetching`]).
    pub fn fetching(&self, name: &str) -> FetchingMarker {
        let path = self.dir.join(format!("{FETCHING}{name}"));
        let _ = std::fs::write(&path, b"");
        FetchingMarker(path)
    }

    /// Whether segment `name` is being fetched into the spool.
    pub fn is_fetching(&self, name: &str) -> bool {
        self.dir.join(format!("{FETCHING}{name}")).exists()
    }

    /// Move the spooled `name` to `dest`; false if it is not spooled.
    pub fn take(&self, name: &str, dest: &Path) -> io::Result<bool> {
        match std::fs::rename(self.path(name), dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove what recovery will not ask for any more, now that it has found `current`
    /// in the archive: spooled segments before it or on another timeline, other boots'
    /// spools, and temp files left by a process that died (in the spool and beside
    /// `%p`).
    pub fn clean(&self, current: &str) {
        if let Some(wal_dir) = self.dir.parent().and_then(Path::parent) {
            for e in std::fs::read_dir(wal_dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".backupctl-") && is_stale(&e) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Some(all) = self.dir.parent() {
            for e in std::fs::read_dir(all).into_iter().flatten().flatten() {
                if e.path() != self.dir {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = if is_segment(&name) {
                name[..8] != current[..8] || name[8..] < current[8..]
            } else {
                is_stale(&e)
            };
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A temp file (not a directory) older than [`STALE_TEMP`].
fn is_stale(e: &std::fs::DirEntry) -> bool {
    e.metadata().is_ok_and(|m| {
        m.is_file()
            && m.modified()
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMP))
    })
}

/// Whether `bytes` more fit in `dir`'s file system and still leave `reserve` bytes free
/// to unprivileged users: prefetching must never take the space recovery needs.
pub fn room_for(dir: &Path, bytes: u64, reserve: u64) -> bool {
    let Ok(st) = rustix::fs::statvfs(dir) else {
        return false;
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    free >= bytes.saturating_add(reserve)
}

/// Remove the prefetch spool in `wal_dir` once recovery has ended, that is when the
/// data directory holding `wal_dir` has neither `recovery.signal` nor `standby.signal`
/// (a standby with `archive_mode = always` archives while it is still recovering).
pub fn remove_spool_after_recovery(wal_dir: &Path) {
    if wal_dir.join(SPOOL_DIR).symlink_metadata().is_err() {
        return;
    }
    let pgdata = wal_dir.parent().unwrap_or(Path::new("."));
    let pgdata = if pgdata.as_os_str().is_empty() {
        Path::new(".")
    } else {
        pgdata
    };
    if ["recovery.signal", "standby.signal"]
        .iter()
        .any(|f| pgdata.join(f).exists())
    {
        return;
    }
    remove_spool(wal_dir);
}

fn is_segment(name: &str) -> bool {
    wal::classify(name) == Some(wal::WalFileKind::Segment)
}

/// Remove the prefetch spool in `wal_dir`, if there is one (recovery has ended).
pub fn remove_spool(wal_dir: &Path) {
    let spool = wal_dir.join(SPOOL_DIR);
    if spool.symlink_metadata().is_ok() {
        if let Err(e) = std::fs::remove_dir_all(&spool) {
            tracing::warn!(dir = %spool.display(), error = %e, "cannot remove the WAL prefetch spool");
        }
    }
}

/// Whether segment `name` comes after segment `position` on the same timeline.
pub fn is_after(name: &str, position: &str) -> bool {
    is_segment(name)
        && is_segment(position)
        && name[..8] == position[..8]
        && name[8..] > position[8..]
}

/// The `n` segments after the segment `name` on its timeline (none for other files).
pub fn following(name: &str, seg_size: u64, n: usize) -> Vec<String> {
    if !is_segment(name) {
        return vec![];
    }
    let Some(mut s) = wal::Segment::parse(name, seg_size) else {
        return vec![];
    };
    (0..n)
        .map(|_| {
            s = s.next();
            s.name(seg_size)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_segments_cross_log_boundaries_on_the_same_timeline() {
        assert_eq!(
            following("0000000200000001000000FE", 16 << 20, 3),
            vec![
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        // 1 GiB segments: 4 per log.
        assert_eq!(
            following("000000010000000000000003", 1 << 30, 1),
            vec!["000000010000000100000000"]
        );
        assert!(following("00000002.history", 16 << 20, 3).is_empty());
        assert!(following("000000010000000000000003", 16 << 20, 0).is_empty());
    }

    #[test]
    fn spool_hands_each_file_over_once_and_forgets_what_recovery_passed() {
        let d = tempfile::tempdir().unwrap();
        let wal_dir = d.path().join("pg_wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let dest = wal_dir.join("RECOVERYXLOG");
        let Some(spool) = Spool::beside(&dest) else {
            // Prefetching is off only where the kernel has no boot id at all; anywhere
            // else an unreadable one is a bug this test must not pass over.
            assert!(
                !Path::new(BOOT_ID).exists(),
                "{BOOT_ID} exists but no spool was made: boot_id() is {:?}",
                boot_id()
            );
            eprintln!("skipped: {BOOT_ID} does not exist here, so prefetching is off");
            return;
        };
        assert!(spool.dir().starts_with(wal_dir.join(SPOOL_DIR)));
        std::fs::create_dir_all(spool.dir()).unwrap();
        let old_boot = wal_dir.join(SPOOL_DIR).join("00000000-old-boot");
        std::fs::create_dir_all(&old_boot).unwrap();
        std::fs::write(old_boot.join("000000010000000000000005"), "stale").unwrap();
        for n in [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000020000000000000006",
        ] {
            std::fs::write(spool.path(n), n).unwrap();
        }
        assert!(spool.take("000000010000000000000004", &dest).unwrap());
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "000000010000000000000004"
        );
        assert!(!spool.take("000000010000000000000004", &dest).unwrap());
        spool.clean("000000010000000000000005");
        assert!(!old_boot.exists(), "an earlier boot's spool is never used");
        assert!(!spool.has("000000010000000000000003"));
        assert!(spool.has("000000010000000000000005"));
        assert!(!spool.has("000000020000000000000006"));
        // A standby archiving while it recovers keeps its spool.
        std::fs::write(d.path().join("standby.signal"), "").unwrap();
        remove_spool_after_recovery(&wal_dir);
        assert!(spool.has("000000010000000000000005"));
        std::fs::remove_file(d.path().join("standby.signal")).unwrap();
        remove_spool_after_recovery(&wal_dir);
        assert!(!wal_dir.join(SPOOL_DIR).exists());
    }

    #[test]
    fn prefetching_leaves_the_file_system_its_reserve() {
        let d = tempfile::tempdir().unwrap();
        assert!(!room_for(d.path(), u64::MAX / 2, 0));
        assert!(!room_for(d.path(), 0, u64::MAX / 2));
        assert!(room_for(d.path(), 0, 0));
        assert!(!room_for(&d.path().join("missing"), 0, 0));
    }
}
