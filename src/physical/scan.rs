//! What a physical backup copies: a walk of PGDATA (and tablespaces) with the exclusions
//! pg_basebackup makes, and the split of the files into balanced tar parts.
//!
//! Excluded, as pg_basebackup does: the contents of pg_wal (WAL comes from the archive),
//! pg_stat_tmp, pg_replslot, pg_dynshmem, pg_notify, pg_serial, pg_snapshots, pg_subtrans
//! (the directories themselves are kept, empty); postmaster.pid/.opts, backup_label,
//! tablespace_map, backup_manifest, temp files of ALTER SYSTEM and the log collector;
//! pgsql_tmp* anywhere; relcache init files; temporary relations; every fork of an
//! unlogged relation except its `_init` fork. Tablespaces (symlinks in pg_tblspc) are
//! followed and stored under `pg_tblspc/<oid>/`; restore recreates their links.
//!
//! Any other symbolic link is stored as what it points to at backup time, as pgBackRest
//! does by default: a `postgresql.conf` linked from /etc is backed up (and restored) as a
//! regular file, a linked directory as a directory with its contents; a symlinked pg_wal
//! as an empty pg_wal. So a backup holds no link but tablespace links, and a restore makes
//! no other (it refuses any other link it finds in a backup). A dangling link is left
//! out, and a link to a directory that contains it is refused (it has no end).

use std::collections::{BinaryHeap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One thing to put in the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the backup, relative to PGDATA, `/`-separated.
    pub name: String,
    /// Where to read it now.
    pub source: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub mtime: i64,
    /// A file of an incremental backup stored as the blocks that changed since the
    /// parent (see [`super::incremental`]); `None`: stored whole.
    pub delta: Option<super::incremental::DeltaPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file. The size seen here only balances the parts: the file is copied at
    /// its size when its copy starts.
    File {
        size: u64,
    },
    Dir,
    Symlink {
        target: PathBuf,
    },
}

const EXCLUDE_DIR_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

const EXCLUDE_TOP_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// `t<backend>_<relfilenode>[_fork][.segment]`: a temporary relation.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, rel)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && rel.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// The relfilenode a relation file belongs to: `16384`, `16384.1`, `16384_fsm` → 16384.
fn relfilenode_of(name: &str) -> Option<&str> {
    let end = name
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(name.len());
    (end > 0).then(|| &name[..end])
}

/// Is `dir` (relative name) a database directory whose relation files follow the
/// unlogged-relation rules? `base/<oid>` or `pg_tblspc/<oid>/<PG_…>/<oid>`.
fn is_database_dir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(parts.as_slice(), ["base", db] if digits(db))
        || matches!(parts.as_slice(), ["pg_tblspc", ts, v, db] if digits(ts) && v.starts_with("PG_") && digits(db))
}

/// Walk `pgdata` and return everything the backup must hold, directories before their
/// contents. Files that vanish during the walk are skipped.
pub fn scan(pgdata: &Path) -> io::Result<Vec<Entry>> {
    let mut walk = Walk::default();
    if let Ok(md) = fs::metadata(pgdata) {
        walk.inside.push((md.dev(), md.ino()));
    }
    walk.dir(pgdata, "", true)?;
    Ok(walk.out)
}

/// The walk's state: what it found, and the directories it is inside of (device, inode),
/// to refuse a link back into one of them.
#[derive(Default)]
struct Walk {
    out: Vec<Entry>,
    inside: Vec<(u64, u64)>,
}

fn meta_entry(name: String, source: PathBuf, md: &fs::Metadata, kind: EntryKind) -> Entry {
    Entry {
        name,
        source,
        kind,
        mode: md.permissions().mode() & 0o7777,
        mtime: md.mtime(),
        delta: None,
    }
}

impl Walk {
    fn dir(&mut self, dir: &Path, rel: &str, top: bool) -> io::Result<()> {
        let mut names: Vec<String> = match fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !top => return Ok(()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("read directory {}: {e}", dir.display()),
                ))
            }
        };
        names.sort();
        let unlogged: HashSet<String> = if is_database_dir(rel) {
            names
                .iter()
                .filter_map(|n| n.strip_suffix("_init"))
                .filter(|n| relfilenode_of(n) == Some(*n))
                .map(str::to_string)
                .collect()
        } else {
            HashSet::new()
        };
        for name in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let path = dir.join(&name);
            if name.starts_with("pgsql_tmp") || name.starts_with("pg_internal.init") {
                continue;
            }
            if top && EXCLUDE_TOP_FILES.contains(&name.as_str()) {
                continue;
            }
            if is_database_dir(rel) {
                if is_temp_relation(&name) {
                    continue;
                }
                if let Some(node) = relfilenode_of(&name) {
                    if unlogged.contains(node) && !name.ends_with("_init") {
                        continue;
                    }
                }
            }
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("stat {}: {e}", path.display()),
                    ))
                }
            };
            let ft = md.file_type();
            let in_tblspc = rel == "pg_tblspc";
            if ft.is_symlink() {
                // What the link points to now: a tablespace, a symlinked pg_wal, or anything
                // else, which the backup holds as the file or directory it is.
                let target_md = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if !in_tblspc {
                            tracing::warn!(link = %path.display(), "dangling symbolic link in the data directory left out of the backup");
                        }
                        continue;
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("stat {} (a symbolic link): {e}", path.display()),
                        ))
                    }
                };
                let as_dir = in_tblspc || (top && name == "pg_wal") || target_md.is_dir();
                if as_dir {
                    if self.inside.contains(&(target_md.dev(), target_md.ino())) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} is a symbolic link to a directory that contains it ({}); \
                             it cannot be backed up",
                                path.display(),
                                fs::read_link(&path).unwrap_or_default().display()
                            ),
                        ));
                    }
                    self.out.push(meta_entry(
                        child_rel.clone(),
                        path.clone(),
                        &target_md,
                        EntryKind::Dir,
                    ));
                    self.descend(&path, &child_rel, &name, top)?;
                } else if target_md.is_file() {
                    self.out.push(meta_entry(
                        child_rel,
                        path,
                        &target_md,
                        EntryKind::File {
                            size: target_md.len(),
                        },
                    ));
                }
            } else if ft.is_dir() {
                self.out.push(meta_entry(
                    child_rel.clone(),
                    path.clone(),
                    &md,
                    EntryKind::Dir,
                ));
                self.descend(&path, &child_rel, &name, top)?;
            } else if ft.is_file() {
                self.out.push(meta_entry(
                    child_rel,
                    path,
                    &md,
                    EntryKind::File { size: md.len() },
                ));
            }
            // Sockets, FIFOs and devices are never part of a data directory's state.
        }
        Ok(())
    }

    fn descend(
        &mut self,
        path: &Path,
        rel: &str,
        name: &str,
        parent_is_top: bool,
    ) -> io::Result<()> {
        if parent_is_top && EXCLUDE_DIR_CONTENTS.contains(&name) {
            if name == "pg_wal" {
                // Recovery needs pg_wal/archive_status to exist.
                let md = fs::metadata(path)?;
                self.out.push(meta_entry(
                    format!("{rel}/archive_status"),
                    path.join("archive_status"),
                    &md,
                    EntryKind::Dir,
                ));
            }
            return Ok(());
        }
        let md = fs::metadata(path)?;
        self.inside.push((md.dev(), md.ino()));
        let walked = self.dir(path, rel, false);
        self.inside.pop();
        walked
    }
}

/// Split `entries` into `n` parts of balanced size (largest file first into the
/// lightest part); directories and links go to part 0. Each part keeps path order.
pub fn plan_parts(entries: Vec<Entry>, n: usize) -> Vec<Vec<Entry>> {
    let n = n.max(1);
    let mut parts: Vec<Vec<Entry>> = vec![vec![]; n];
    let (mut files, others): (Vec<Entry>, Vec<Entry>) = entries
        .into_iter()
        .partition(|e| matches!(e.kind, EntryKind::File { .. }));
    parts[0].extend(others);
    files.sort_by_key(|e| std::cmp::Reverse(file_size(e)));
    // Min-heap on (load, part index).
    let mut heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
        (0..n).map(|i| std::cmp::Reverse((0, i))).collect();
    for f in files {
        let std::cmp::Reverse((load, i)) = heap.pop().expect("n >= 1");
        let size = file_size(&f);
        parts[i].push(f);
        heap.push(std::cmp::Reverse((load + size.max(512), i)));
    }
    for p in &mut parts {
        p.sort_by(|a, b| a.name.cmp(&b.name));
    }
    parts.retain(|p| !p.is_empty());
    parts
}

pub fn file_size(e: &Entry) -> u64 {
    match e.kind {
        EntryKind::File { size } => size,
        _ => 0,
    }
}

/// How many parts: none much larger than `part_size`, and a multiple of the worker
/// count, so every worker has a part until the end (3 parts on 2 workers would leave
/// one worker idle for the whole last part, in backup and in restore alike).
pub fn part_count(total: u64, workers: usize, part_size: u64) -> usize {
    let by_size = total.div_ceil(part_size.max(1)) as usize;
    let workers = workers.max(1);
    by_size.max(workers).div_ceil(workers) * workers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, len: usize) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![1u8; len]).unwrap();
    }

    #[test]
    fn exclusions_follow_pg_basebackup() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for f in [
            "PG_VERSION",
            "postgresql.conf",
            "global/pg_control",
            "base/1/1259",
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16400",
            "base/5/16400_init",
            "base/5/16400_fsm",
            "base/5/16400.1",
            "base/5/t3_16500",
            "base/5/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot/state",
            "pg_subtrans/0000",
            "pg_xact/0000",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "postgresql.auto.conf.tmp",
        ] {
            touch(&root.join(f), 10);
        }
        fs::create_dir_all(root.join("pg_tblspc")).unwrap();
        let ts = tempfile::tempdir().unwrap();
        touch(&ts.path().join("PG_15_202209061/5/17000"), 20);
        std::os::unix::fs::symlink(ts.path(), root.join("pg_tblspc/17000")).unwrap();

        let entries = scan(root).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        for want in [
            "PG_VERSION",
            "global/pg_control",
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16400_init",
            "pg_wal",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_subtrans",
            "pg_xact/0000",
            "pg_tblspc/17000",
            "pg_tblspc/17000/PG_15_202209061/5/17000",
        ] {
            assert!(names.contains(&want), "missing {want}: {names:?}");
        }
        for gone in [
            "base/5/16400",
            "base/5/16400_fsm",
            "base/5/16400.1",
            "base/5/t3_16500",
            "base/5/pg_internal.init",
            "base/pgsql_tmp",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot",
            "pg_subtrans/0000",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "postgresql.auto.conf.tmp",
        ] {
            assert!(!names.contains(&gone), "should be excluded: {gone}");
        }
        // Directories come before their contents.
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("base") < pos("base/5") && pos("base/5") < pos("base/5/16384"));
    }

    #[test]
    fn temp_relation_names() {
        assert!(is_temp_relation("t3_16500"));
        assert!(is_temp_relation("t12_16500_fsm"));
        assert!(!is_temp_relation("16500"));
        assert!(!is_temp_relation("tablespace"));
        assert_eq!(relfilenode_of("16384.12"), Some("16384"));
        assert_eq!(relfilenode_of("PG_VERSION"), None);
    }

    fn file(name: &str, size: u64) -> Entry {
        Entry {
            name: name.into(),
            source: PathBuf::from(name),
            kind: EntryKind::File { size },
            mode: 0o600,
            mtime: 0,
            delta: None,
        }
    }

    #[test]
    fn parts_are_balanced_and_complete() {
        let mut entries = vec![Entry {
            name: "base".into(),
            source: PathBuf::from("base"),
            kind: EntryKind::Dir,
            mode: 0o700,
            mtime: 0,
            delta: None,
        }];
        for (i, size) in [1000u64, 900, 400, 300, 300, 100, 50, 1, 1]
            .iter()
            .enumerate()
        {
            entries.push(file(&format!("f{i}"), *size));
        }
        let parts = plan_parts(entries.clone(), 2);
        assert_eq!(parts.len(), 2);
        let loads: Vec<u64> = parts
            .iter()
            .map(|p| p.iter().map(file_size).sum())
            .collect();
        assert!(loads[0].abs_diff(loads[1]) <= 1000, "{loads:?}");
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert_eq!(total, entries.len());
        assert!(parts[0].iter().any(|e| e.kind == EntryKind::Dir));
        // More parts than files: empty parts are dropped.
        assert_eq!(plan_parts(vec![file("a", 1)], 4).len(), 1);
        assert_eq!(part_count(10 << 30, 2, 1 << 30), 10);
        assert_eq!(part_count(100, 4, 1 << 30), 4);
        assert_eq!(
            part_count(2200 << 20, 2, 1 << 30),
            4,
            "3 by size, rounded up to 2 × 2"
        );
        assert_eq!(part_count(0, 0, 1 << 30), 1);
    }

    #[test]
    fn links_other_than_tablespaces_and_pg_wal_are_stored_as_what_they_point_to() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path();
        touch(&root.join("PG_VERSION"), 3);
        fs::write(outside.path().join("postgresql.conf"), "port = 5433\n").unwrap();
        touch(&outside.path().join("conf.d/extra.conf"), 7);
        std::os::unix::fs::symlink(
            outside.path().join("postgresql.conf"),
            root.join("postgresql.conf"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("conf.d"), root.join("conf.d")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/dangling", root.join("dangling")).unwrap();
        let entries = scan(root).unwrap();
        let kind = |n: &str| entries.iter().find(|e| e.name == n).map(|e| e.kind.clone());
        assert_eq!(kind("postgresql.conf"), Some(EntryKind::File { size: 12 }));
        assert_eq!(kind("conf.d"), Some(EntryKind::Dir));
        assert_eq!(kind("conf.d/extra.conf"), Some(EntryKind::File { size: 7 }));
        // Nothing to copy: left out.
        assert_eq!(kind("dangling"), None);
        assert!(
            entries
                .iter()
                .all(|e| !matches!(e.kind, EntryKind::Symlink { .. })),
            "{entries:?}"
        );

        // A link back into PGDATA would be walked forever: refused.
        std::os::unix::fs::symlink(root, root.join("loop")).unwrap();
        let e = scan(root).unwrap_err().to_string();
        assert!(e.contains("loop"), "{e}");
    }
}
