//! One tar part of a physical backup: writing it from a list of entries while PostgreSQL
//! keeps changing the files, and extracting it into a restore directory.
//!
//! Writing: each file is copied at the size it has when it is opened for the copy
//! (`fstat` on the open file, as pg_basebackup does), not the size seen when PGDATA was
//! scanned, which may be long before: a configuration file that `ALTER SYSTEM` rewrote
//! meanwhile comes back whole, where WAL replay would not repair it. One that shrinks
//! during its own copy is padded with zeros to the size in its tar header, and one that
//! vanished is left out; both are normal during an online backup and WAL replay repairs
//! relation files. `global/pg_control` is read whole and copied only once its CRC is
//! valid: a read torn by a concurrent update would leave a backup that cannot start.
//!
//! Extracting: the repository is untrusted input. Names must be relative without `..`,
//! nothing is written through a symbolic link (see [`super::beneath`]), and the only
//! links made are tablespace links (`pg_tblspc/<oid>`); any other link in a part is
//! refused. Backups do not store other links: `scan` stores what they point to.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::beneath;
use super::incremental;
use super::scan::{Entry, EntryKind};
use crate::transfer::read_full;

/// What went into a part.
#[derive(Debug, Default, Clone)]
pub struct PartStats {
    pub files: u64,
    pub bytes: u64,
    pub vanished: u64,
    /// Files stored as the blocks that changed since the parent backup.
    pub deltas: u64,
    /// Files of an incremental backup unchanged since the parent: nothing stored.
    pub unchanged: u64,
    /// Every file the part accounts for, with the size it was copied at (the file set a
    /// restore of this backup has; vanished files are not in it).
    pub copied: Vec<(String, u64)>,
}

/// Reads exactly `remaining` bytes: the file's, then zeros if it ended early.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    padded: bool,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.remaining) as usize;
        let n = if self.padded {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.padded = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Reads a file front to back, asking the kernel to read ahead [`READ_AHEAD`] bytes
/// beyond what has been consumed (`POSIX_FADV_WILLNEED`, a window at a time), so that a
/// file not in the page cache is read from disk while the previous blocks compress,
/// instead of each read waiting for the disk.
struct ReadAhead {
    file: File,
    pos: u64,
    advised: u64,
    /// The size the file had when it was opened: nothing beyond it is read.
    size: u64,
}

const READ_AHEAD: u64 = 32 << 20;

impl ReadAhead {
    fn new(file: File, size: u64) -> Self {
        ReadAhead {
            file,
            pos: 0,
            advised: 0,
            size,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos + READ_AHEAD / 2 >= self.advised && self.advised < self.size {
            let len = READ_AHEAD.min(self.size - self.advised);
            // Advice only: a failure changes nothing but speed.
            let _ = rustix::fs::fadvise(
                &self.file,
                self.advised,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            );
            self.advised += len;
        }
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Write `entries` as a tar stream into `w`.
pub fn write_part(entries: &[Entry], w: &mut dyn Write) -> io::Result<PartStats> {
    let mut stats = PartStats::default();
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_mtime(e.mtime.max(0) as u64);
        match &e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", e.name), io::empty())?;
            }
            EntryKind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &e.name, target)?;
            }
            EntryKind::File { .. } => {
                let f = match File::open(&e.source) {
                    Ok(f) => f,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        stats.vanished += 1;
                        continue;
                    }
                    Err(err) => {
                        return Err(io::Error::new(
                            err.kind(),
                            format!("open {}: {err}", e.source.display()),
                        ))
                    }
                };
                h.set_entry_type(tar::EntryType::Regular);
                let size = if e.name == PG_CONTROL {
                    let data = read_pg_control(&f, &e.source)?;
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, &e.name, &data[..])?;
                    data.len() as u64
                } else if let Some(size) = write_delta(&mut b, e, &f, &mut stats)? {
                    size
                } else {
                    // The size now: the header is written before the contents, so it
                    // must be the size that is about to be copied.
                    let size = f
                        .metadata()
                        .map_err(|err| {
                            io::Error::new(
                                err.kind(),
                                format!("stat {}: {err}", e.source.display()),
                            )
                        })?
                        .len();
                    h.set_size(size);
                    let reader = ExactReader {
                        inner: BufReader::with_capacity(256 << 10, ReadAhead::new(f, size)),
                        remaining: size,
                        padded: false,
                    };
                    b.append_data(&mut h, &e.name, reader).map_err(|err| {
                        io::Error::new(err.kind(), format!("copy {}: {err}", e.source.display()))
                    })?;
                    size
                };
                stats.files += 1;
                stats.bytes += size;
                stats.copied.push((e.name.clone(), size));
            }
        }
    }
    b.finish()?;
    Ok(stats)
}

/// For an entry of an incremental backup (`e.delta`): store the blocks of `f` that
/// changed since the parent as a delta entry, or nothing when none did and the size is
/// the parent's. `Some(size)`: the file's size, handled; `None`: copy the file whole (no
/// delta asked for, or a size that is not whole blocks).
fn write_delta(
    b: &mut tar::Builder<&mut dyn Write>,
    e: &Entry,
    f: &File,
    stats: &mut PartStats,
) -> io::Result<Option<u64>> {
    let Some(plan) = &e.delta else {
        return Ok(None);
    };
    let size = f
        .metadata()
        .map_err(|err| io::Error::new(err.kind(), format!("stat {}: {err}", e.source.display())))?
        .len();
    if size % u64::from(plan.block_size) != 0 {
        return Ok(None);
    }
    let blocks = incremental::changed_blocks(f, size, plan.block_size, &plan.how)
        .map_err(|err| io::Error::new(err.kind(), format!("read {}: {err}", e.source.display())))?;
    if blocks.is_empty() && size == plan.how.parent_size() {
        stats.unchanged += 1;
        return Ok(Some(size));
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_mtime(e.mtime.max(0) as u64);
    h.set_entry_type(tar::EntryType::new(incremental::DELTA_TYPE));
    h.set_size(incremental::entry_size(blocks.len(), plan.block_size));
    let reader = incremental::DeltaReader::new(f, size, plan.block_size, blocks);
    b.append_data(&mut h, &e.name, reader)
        .map_err(|err| io::Error::new(err.kind(), format!("copy {}: {err}", e.source.display())))?;
    stats.deltas += 1;
    Ok(Some(size))
}

/// The control file, copied only with a valid CRC.
pub const PG_CONTROL: &str = "global/pg_control";
/// Reads of pg_control before a backup gives up on a CRC that never validates.
const PG_CONTROL_READS: u32 = 10;

/// Read pg_control whole until its CRC is valid. PostgreSQL rewrites it in place (at
/// every checkpoint, among others), so a read can see part of the old and part of the
/// new contents; such a copy would not start. A read again after a short wait sees one
/// or the other; a CRC that never validates is damage, and fails the backup.
fn read_pg_control(f: &File, path: &Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut last = String::new();
    for attempt in 0..PG_CONTROL_READS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20 << attempt.min(4)));
        }
        let len = f.metadata()?.len() as usize;
        let mut data = vec![0u8; len];
        let mut n = 0;
        while n < len {
            match f.read_at(&mut data[n..], n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        data.truncate(n);
        match crate::pg::wal::check_control_crc(&data) {
            Ok(()) => return Ok(data),
            Err(why) => last = why,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: CRC check failed on {PG_CONTROL_READS} reads ({last}); a backup with this \
             pg_control could not start",
            path.display()
        ),
    ))
}

/// Where entries of a backup go when restored.
pub trait Destination: Sync {
    /// The restore directory: where entries go unless [`Destination::place`] says
    /// otherwise, and where tablespace links are made.
    fn root(&self) -> &Path;
    /// The directory entry `name` (relative, `/`-separated, already checked safe) is
    /// written beneath, and its path below that directory (empty: the directory itself).
    /// The directory is the operator's; everything below it comes from the backup.
    fn place<'a>(&'a self, name: &'a str) -> (&'a Path, &'a str) {
        (self.root(), name)
    }
    /// Where the link of tablespace `oid` must point, when the restore relocates it.
    fn tablespace(&self, _oid: u32) -> Option<&Path> {
        None
    }
    /// Entries the restore handles itself and must skip.
    fn skip(&self, _name: &str) -> bool {
        false
    }
    /// In a restore of a chain of backups, newest first: what newer backups wrote of each
    /// file (see [`incremental::Claims`]). `None`: each entry is written as it is.
    fn claims(&self) -> Option<&incremental::Claims> {
        None
    }
    /// Whether entries holding the changed blocks of a file (an incremental backup's)
    /// may be applied: only onto the copy of the backup's parent.
    fn applies_deltas(&self) -> bool {
        false
    }
    /// Whether each file must be on disk (fsynced) before the extraction of its part
    /// returns: true for a real restore, false for a throwaway test restore.
    fn durable(&self) -> bool {
        false
    }
}

/// Check that a name from the archive stays inside the restore directory.
fn safe_name(path: &Path) -> io::Result<String> {
    let mut parts = vec![];
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unsafe path {:?} in backup archive", path),
                ))
            }
        }
    }
    if parts.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty path in backup archive",
        ));
    }
    Ok(parts.join("/"))
}

/// fsync `root` and every directory under it (not following symbolic links), so the
/// names of the files extracted into them are durable too.
pub fn sync_dirs(root: &Path) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
        fs::File::open(&dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io::Error::new(e.kind(), format!("fsync {}: {e}", dir.display())))?;
    }
    Ok(())
}

const COPY_BUFFER: usize = 1 << 20;
/// With `durable`, what was written is synced every this many bytes.
const SYNC_EVERY: u64 = 8 << 20;
/// Syncs an extracting thread may queue before it waits for the disk.
const SYNC_QUEUE: usize = 8;

/// A sync handed from the extracting thread to its syncing thread.
struct SyncJob {
    file: File,
    path: PathBuf,
    /// Bytes `from..to` were written since the last sync, or `None`: the file is complete
    /// (contents, mode, mtime) and gets its final fsync.
    range: Option<(u64, u64)>,
}

/// Run the syncs queued by [`write_file`] until the extracting side is done, stopping
/// at the first failure (the extracting side then fails on its next send).
fn run_syncs(jobs: std::sync::mpsc::Receiver<SyncJob>) -> io::Result<()> {
    for job in jobs {
        let (synced, from, len) = match job.range {
            Some((from, to)) => (job.file.sync_data(), from, to - from),
            // To the end of the file.
            None => (job.file.sync_all(), 0, 0),
        };
        synced
            .map_err(|e| io::Error::new(e.kind(), format!("fsync {}: {e}", job.path.display())))?;
        // Synced pages are clean and can go: restored data should not crowd the page
        // cache. Advice only.
        let _ = rustix::fs::fadvise(
            &job.file,
            from,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    Ok(())
}

/// Write one file's contents from `r` into `f` (just created at `target`), then its mode
/// and modification time.
///
/// `syncer` (a durable restore): the file is fsynced before the part's extraction
/// returns, as pg_basebackup and pgBackRest do, so that a restore that reported success
/// survives a crash of the host. The syncs run on a thread of their own while this one
/// goes on decompressing: what was written is synced every [`SYNC_EVERY`] bytes and
/// the complete file once more. A flush costs time in proportion to what was written
/// since the last one (on a virtual disk the host writes it out then): fsyncing a 1 GiB
/// relation file at its end stalled extraction for up to 1.3 s.
fn write_file(
    r: &mut dyn Read,
    mut f: File,
    target: &Path,
    mode: u32,
    mtime: Option<u64>,
    syncer: Option<&std::sync::mpsc::SyncSender<SyncJob>>,
    buf: &mut [u8],
) -> io::Result<()> {
    let sync = |file: File, range: Option<(u64, u64)>| {
        let job = SyncJob {
            file,
            path: target.to_path_buf(),
            range,
        };
        syncer
            .expect("durable")
            .send(job)
            .map_err(|_| io::Error::other("the fsync thread stopped"))
    };
    let (mut written, mut flushed) = (0u64, 0u64);
    loop {
        let n = read_full(r, buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])?;
        written += n as u64;
        if syncer.is_some() && written - flushed >= SYNC_EVERY {
            sync(f.try_clone()?, Some((flushed, written)))?;
            flushed = written;
        }
    }
    if let Some(t) = mtime {
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
    if syncer.is_some() {
        sync(f, None)?;
    }
    Ok(())
}

/// Extract a tar stream into `dest`. Returns the number of files written. For a durable
/// destination every file is fsynced before this returns.
pub fn extract_part(r: &mut dyn Read, dest: &dyn Destination) -> io::Result<u64> {
    if !dest.durable() {
        return extract_entries(r, dest, None);
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
        let syncing = std::thread::Builder::new()
            .name("restore-fsync".into())
            .spawn_scoped(s, move || run_syncs(rx))?;
        let extracted = extract_entries(r, dest, Some(&tx));
        drop(tx);
        let synced = syncing
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")));
        // A failed sync first: it is why the extracting side stopped, if it did.
        synced?;
        extracted
    })
}

/// Directories opened beneath the restore roots during one part's extraction.
#[derive(Default)]
struct Dirs {
    roots: std::collections::HashMap<PathBuf, std::os::fd::OwnedFd>,
    /// The last directory opened below a root: a part's entries are in path order, so
    /// most files go where the previous one went.
    last: Option<(PathBuf, String, std::os::fd::OwnedFd)>,
}

impl Dirs {
    /// Directory `rel` beneath `root`, made if missing; never through a link.
    fn open(&mut self, root: &Path, rel: &str) -> io::Result<&std::os::fd::OwnedFd> {
        let cached = matches!(&self.last, Some((r, d, _)) if r == root && d == rel);
        if !cached {
            if !self.roots.contains_key(root) {
                // The restore directory or a tablespace destination: the operator's,
                // empty or absent before the restore.
                fs::create_dir_all(root).map_err(|e| {
                    io::Error::new(e.kind(), format!("create {}: {e}", root.display()))
                })?;
                let fd = beneath::open_root(root)?;
                self.roots.insert(root.to_path_buf(), fd);
            }
            let fd = beneath::open_dir(&self.roots[root], root, rel, true)?;
            self.last = Some((root.to_path_buf(), rel.to_string(), fd));
        }
        Ok(&self.last.as_ref().expect("just set").2)
    }
}

/// `pg_tblspc/<oid>`: the one kind of link a backup may hold.
fn tablespace_link(name: &str) -> Option<u32> {
    let oid = name.strip_prefix("pg_tblspc/")?;
    oid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| oid.parse().ok())
        .flatten()
}

fn extract_entries(
    r: &mut dyn Read,
    dest: &dyn Destination,
    syncer: Option<&std::sync::mpsc::SyncSender<SyncJob>>,
) -> io::Result<u64> {
    let mut ar = tar::Archive::new(r);
    let mut files = 0;
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut dirs = Dirs::default();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let name = safe_name(&entry.path()?)?;
        if dest.skip(&name) {
            continue;
        }
        let (root, rel) = dest.place(&name);
        let target = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mode = entry.header().mode().unwrap_or(0o600);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                let dir = dirs.open(root, rel)?;
                rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(mode & 0o7777)).map_err(
                    |e| io::Error::new(e.kind(), format!("chmod {}: {e}", target.display())),
                )?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (parent, file) = rel.rsplit_once('/').unwrap_or(("", rel));
                if file.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("backup entry {name} is a file where a directory must be"),
                    ));
                }
                let claim = dest.claims().map(|c| c.get(&name));
                match &claim {
                    // A newer backup of the chain has this file whole.
                    Some(Some(c)) if c.whole => continue,
                    // A newer one wrote some blocks: the rest comes from this copy.
                    Some(Some(c)) => {
                        let f = beneath::update_file(dirs.open(root, parent)?, file, &target)?;
                        // Synced as it goes on the syncing thread, as a whole file is.
                        let (mut total, mut flushed) = (0u64, 0u64);
                        let sync = |range: Option<(u64, u64)>, f: &File| -> io::Result<()> {
                            if let Some(tx) = syncer {
                                let job = SyncJob {
                                    file: f.try_clone()?,
                                    path: target.clone(),
                                    range,
                                };
                                tx.send(job)
                                    .map_err(|_| io::Error::other("the fsync thread stopped"))?;
                            }
                            Ok(())
                        };
                        incremental::fill_claimed(&mut entry, &f, c, &mut buf, &mut |n| {
                            total += n;
                            if syncer.is_some() && total - flushed >= SYNC_EVERY {
                                sync(Some((0, 0)), &f)?;
                                flushed = total;
                            }
                            Ok(())
                        })
                        .map_err(|e| {
                            io::Error::new(e.kind(), format!("write {}: {e}", target.display()))
                        })?;
                        sync(None, &f)?;
                    }
                    _ => {
                        let f = beneath::create_file(dirs.open(root, parent)?, file, &target)?;
                        let mtime = entry.header().mtime().ok();
                        write_file(&mut entry, f, &target, mode, mtime, syncer, &mut buf).map_err(
                            |e| {
                                io::Error::new(e.kind(), format!("write {}: {e}", target.display()))
                            },
                        )?;
                    }
                }
                if let (Some(claims), Some(c)) = (dest.claims(), claim) {
                    let size = entry.header().size()?;
                    let mut c = c.unwrap_or_default();
                    if !c.whole && c.block_size == 0 {
                        c.size = size;
                    }
                    c.whole = true;
                    claims.put(&name, c);
                }
                files += 1;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name()?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("symlink {name} has no target"),
                    )
                })?;
                // Only a tablespace link is restored as a link (relocated if the
                // restore moves the tablespace): any other could point anywhere, and
                // what follows in the backup, or the restore's own edits, would write
                // through it.
                let Some(oid) = tablespace_link(&name) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "backup entry {name} is a symbolic link (to {}): refused; only \
                             tablespace links in pg_tblspc/ are restored as links",
                            link.display()
                        ),
                    ));
                };
                let to = dest.tablespace(oid).unwrap_or(&link).to_path_buf();
                let at = dest.root().join(&name);
                match beneath::symlink(
                    &to,
                    dirs.open(dest.root(), "pg_tblspc")?,
                    &oid.to_string(),
                    &at,
                ) {
                    // The same link, made by an earlier extraction of this part (one
                    // read again from another repository after a checksum failure).
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && fs::read_link(&at).is_ok_and(|l| l == to) => {}
                    other => other?,
                }
            }
            t if t.as_byte() == incremental::DELTA_TYPE => {
                if !dest.applies_deltas() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("backup entry {name} holds changed blocks, but it is in a backup that is not incremental"),
                    ));
                }
                let (parent, file) = rel.rsplit_once('/').unwrap_or(("", rel));
                let size = entry.header().size()?;
                let claim = dest.claims().map(|c| c.get(&name));
                if matches!(&claim, Some(Some(c)) if c.whole) {
                    continue;
                }
                let h = incremental::read_header(&mut entry, &name, size)?;
                let f = beneath::update_file(dirs.open(root, parent)?, file, &target)?;
                let first = !matches!(&claim, Some(Some(_)));
                let wrote = match (dest.claims(), claim) {
                    (Some(claims), Some(c)) => {
                        incremental::apply_claimed(&mut entry, &h, &f, &name, c)
                            .map(|c| claims.put(&name, c))
                    }
                    _ => incremental::apply(&mut entry, &h, &f, &name),
                };
                wrote.map_err(|e| {
                    io::Error::new(e.kind(), format!("write {}: {e}", target.display()))
                })?;
                if first {
                    // The newest copy of the file: its mode and time.
                    let mtime = entry.header().mtime().ok();
                    write_file(&mut io::empty(), f, &target, mode, mtime, syncer, &mut buf)?;
                } else if syncer.is_some() {
                    f.sync_all().map_err(|e| {
                        io::Error::new(e.kind(), format!("fsync {}: {e}", target.display()))
                    })?;
                }
                files += 1;
            }
            // Hard links, devices, FIFOs: never part of a backup; nothing is made.
            _ => {}
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physical::scan::scan;

    struct Into(PathBuf);
    impl Destination for Into {
        fn root(&self) -> &Path {
            &self.0
        }
    }

    #[test]
    fn round_trip_with_changing_files() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("base/1")).unwrap();
        fs::write(src.path().join("PG_VERSION"), "15\n").unwrap();
        fs::write(src.path().join("base/1/grows"), vec![7u8; 10_000]).unwrap();
        fs::write(src.path().join("base/1/shrinks"), vec![9u8; 10_000]).unwrap();
        fs::write(src.path().join("base/1/vanishes"), b"x").unwrap();
        // A name too long for the tar header itself (a GNU long-name entry comes first),
        // and data that is not a whole number of tar blocks or copy buffers.
        let long_name = format!("base/1/{}", "n".repeat(150));
        let odd: Vec<u8> = (0..COPY_BUFFER + 700).map(|i| (i % 253) as u8).collect();
        fs::write(src.path().join(&long_name), &odd).unwrap();
        // Links: one to a file outside, stored as that file; a dangling one, left out.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("conf"), "linked\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("conf"), src.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", src.path().join("dangling")).unwrap();
        let entries = scan(src.path()).unwrap();
        // Change the files between scan and copy, as a running server would.
        fs::write(src.path().join("base/1/grows"), vec![7u8; 20_000]).unwrap();
        fs::write(src.path().join("base/1/shrinks"), vec![9u8; 4_000]).unwrap();
        fs::remove_file(src.path().join("base/1/vanishes")).unwrap();

        let mut tar = vec![];
        let stats = write_part(&entries, &mut tar).unwrap();
        assert_eq!(stats.vanished, 1);
        assert_eq!(stats.files, 5);

        let dst = tempfile::tempdir().unwrap();
        let files = extract_part(&mut &tar[..], &Into(dst.path().to_path_buf())).unwrap();
        assert_eq!(files, 5);
        assert!(fs::read(dst.path().join(&long_name)).unwrap() == odd);
        // Copied at their size when copied.
        assert!(fs::read(dst.path().join("base/1/grows")).unwrap() == vec![7u8; 20_000]);
        assert!(fs::read(dst.path().join("base/1/shrinks")).unwrap() == vec![9u8; 4_000]);
        assert!(!dst.path().join("base/1/vanishes").exists());
        assert!(fs::symlink_metadata(dst.path().join("link"))
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(
            fs::read_to_string(dst.path().join("link")).unwrap(),
            "linked\n"
        );
        assert!(fs::symlink_metadata(dst.path().join("dangling")).is_err());
        assert_eq!(
            fs::read_to_string(dst.path().join("PG_VERSION")).unwrap(),
            "15\n"
        );
    }

    #[test]
    fn tablespace_links_are_the_only_links_restored() {
        let ts = tempfile::tempdir().unwrap();
        let target = ts.path().display().to_string();
        let tar = crafted(&[("pg_tblspc/16500", Err(&target))]);
        let (r, dst, _) = extract_crafted(&tar);
        r.unwrap();
        assert_eq!(
            fs::read_link(dst.path().join("pg_tblspc/16500")).unwrap(),
            ts.path()
        );
        // Anything else, even under pg_tblspc, is refused naming the entry.
        for name in ["pg_tblspc/16500/x", "pg_tblspc/abc", "log"] {
            let (r, _dst, _) = extract_crafted(&crafted(&[(name, Err("/tmp"))]));
            let e = r.unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("refused"), "{e}");
        }
    }

    struct Durably(PathBuf);
    impl Destination for Durably {
        fn root(&self) -> &Path {
            &self.0
        }
        fn durable(&self) -> bool {
            true
        }
    }

    #[test]
    fn durable_extraction_keeps_contents_mode_and_mtime() {
        use std::os::unix::fs::MetadataExt;
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("base/1")).unwrap();
        // Larger than the sync stride, and not a multiple of the copy buffer.
        let big: Vec<u8> = (0..(SYNC_EVERY as usize * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(src.path().join("base/1/big"), &big).unwrap();
        fs::write(src.path().join("base/1/empty"), b"").unwrap();
        fs::set_permissions(
            src.path().join("base/1/big"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let mut tar = vec![];
        write_part(&scan(src.path()).unwrap(), &mut tar).unwrap();

        let dst = tempfile::tempdir().unwrap();
        let files = extract_part(&mut &tar[..], &Durably(dst.path().to_path_buf())).unwrap();
        sync_dirs(dst.path()).unwrap();
        assert_eq!(files, 2);
        assert_eq!(fs::read(dst.path().join("base/1/big")).unwrap(), big);
        assert!(fs::read(dst.path().join("base/1/empty"))
            .unwrap()
            .is_empty());
        let (a, b) = (
            fs::metadata(src.path().join("base/1/big")).unwrap(),
            fs::metadata(dst.path().join("base/1/big")).unwrap(),
        );
        assert_eq!(b.mode() & 0o7777, 0o640);
        assert_eq!(b.mtime(), a.mtime());
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert!(safe_name(Path::new("../etc/passwd")).is_err());
        assert!(safe_name(Path::new("/etc/passwd")).is_err());
        assert_eq!(safe_name(Path::new("./base/1")).unwrap(), "base/1");
    }

    /// A tar stream built by hand, as a hostile repository could hold it: `(name, kind)`
    /// where kind is `Ok(contents)` for a file or `Err(target)` for a symbolic link. Names
    /// are written into the header raw, so `..` and absolute paths get through.
    fn crafted(entries: &[(&str, Result<&[u8], &str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(vec![]);
        for (name, kind) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_mode(0o600);
            match kind {
                Ok(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, *data).unwrap();
                }
                Err(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// Extract `tar` into a fresh directory beside an `outside` one; returns the result,
    /// the target directory and the outside one.
    fn extract_crafted(tar: &[u8]) -> (io::Result<u64>, tempfile::TempDir, tempfile::TempDir) {
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = extract_part(&mut &tar[..], &Into(dst.path().to_path_buf()));
        (r, dst, outside)
    }

    #[test]
    fn a_symlink_then_a_file_through_it_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().display().to_string();
        let tar = crafted(&[("a", Err(&target)), ("a/x", Ok(b"evil"))]);
        let (r, dst, _) = extract_crafted(&tar);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("a"), "{e}");
        assert!(
            !outside.path().join("x").exists(),
            "wrote outside the target"
        );
        assert!(fs::symlink_metadata(dst.path().join("a")).is_err());

        // The same through a relative link that climbs out.
        let tar = crafted(&[
            ("b", Err("../../../../../../../../tmp")),
            ("b/y", Ok(b"evil")),
        ]);
        let (r, _dst, _) = extract_crafted(&tar);
        assert!(r.is_err());
    }

    #[test]
    fn a_file_over_a_symlink_does_not_write_through_it() {
        let outside = tempfile::tempdir().unwrap();
        let conf = outside.path().join("postgresql.conf");
        fs::write(&conf, "production\n").unwrap();
        let target = conf.display().to_string();
        let tar = crafted(&[
            ("postgresql.conf", Err(&target)),
            ("postgresql.conf", Ok(b"evil\n")),
        ]);
        let (r, _dst, _) = extract_crafted(&tar);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("postgresql.conf"), "{e}");
        assert_eq!(fs::read_to_string(&conf).unwrap(), "production\n");
    }

    #[test]
    fn absolute_and_parent_names_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let abs = outside.path().join("abs");
        let abs_name = abs.display().to_string();
        let (r, _dst, _) = extract_crafted(&crafted(&[(&abs_name, Ok(b"evil"))]));
        assert!(r.unwrap_err().to_string().contains("unsafe path"));
        assert!(!abs.exists());
        let (r, dst, _) = extract_crafted(&crafted(&[("base/../../escaped", Ok(b"evil"))]));
        assert!(r.unwrap_err().to_string().contains("unsafe path"));
        assert!(!dst.path().parent().unwrap().join("escaped").exists());
    }

    #[test]
    fn a_file_that_grows_after_the_scan_is_copied_whole() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("grows"), vec![7u8; 10_000]).unwrap();
        let entries = scan(src.path()).unwrap();
        // Appended to between scan and copy, as ALTER SYSTEM or a growing relation does.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(src.path().join("grows"))
            .unwrap();
        f.write_all(&[8u8; 5_000]).unwrap();
        drop(f);
        let mut tar = vec![];
        let stats = write_part(&entries, &mut tar).unwrap();
        assert_eq!(stats.bytes, 15_000);
        let dst = tempfile::tempdir().unwrap();
        extract_part(&mut &tar[..], &Into(dst.path().to_path_buf())).unwrap();
        let got = fs::read(dst.path().join("grows")).unwrap();
        assert_eq!(got.len(), 15_000);
        assert!(got[..10_000].iter().all(|&b| b == 7) && got[10_000..].iter().all(|&b| b == 8));
    }

    #[test]
    fn a_file_that_shrinks_after_the_scan_is_not_padded() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("postgresql.auto.conf"), "a = 1\nb = 2\n").unwrap();
        let entries = scan(src.path()).unwrap();
        fs::write(src.path().join("postgresql.auto.conf"), "a = 1\n").unwrap();
        let mut tar = vec![];
        write_part(&entries, &mut tar).unwrap();
        let dst = tempfile::tempdir().unwrap();
        extract_part(&mut &tar[..], &Into(dst.path().to_path_buf())).unwrap();
        assert_eq!(
            fs::read(dst.path().join("postgresql.auto.conf")).unwrap(),
            b"a = 1\n"
        );
    }

    /// An 8192-byte pg_control of format 1300 (PostgreSQL 13 to 16) with a valid CRC.
    fn pg_control_1300() -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[..8].copy_from_slice(&7_300_000_000_000_000_001u64.to_le_bytes());
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        for (i, x) in b[12..288].iter_mut().enumerate() {
            *x = (i * 7 % 251) as u8;
        }
        let crc = crc32c(&b[..288]);
        b[288..292].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn crc32c(data: &[u8]) -> u32 {
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
    }

    fn back_up_pg_control(contents: &[u8]) -> io::Result<Vec<u8>> {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("global")).unwrap();
        fs::write(src.path().join("global/pg_control"), contents).unwrap();
        let mut tar = vec![];
        write_part(&scan(src.path()).unwrap(), &mut tar)?;
        let dst = tempfile::tempdir().unwrap();
        extract_part(&mut &tar[..], &Into(dst.path().to_path_buf())).unwrap();
        Ok(fs::read(dst.path().join("global/pg_control")).unwrap())
    }

    #[test]
    fn pg_control_is_copied_only_with_a_valid_crc() {
        let good = pg_control_1300();
        assert_eq!(back_up_pg_control(&good).unwrap(), good);
        let mut torn = good.clone();
        torn[100] ^= 0x40;
        let e = match back_up_pg_control(&torn) {
            Ok(_) => panic!("a pg_control with a bad CRC was backed up"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("pg_control") && e.contains("CRC"), "{e}");
    }
}
