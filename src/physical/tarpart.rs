//! One tar part of a physical backup: writing it from a list of entries while PostgreSQL
//! keeps changing the files, and extracting it into a restore directory.
//!
//! Files are copied up to the size seen when PGDATA was scanned: a file that grew is cut
//! there, one that shrank is padded with zeros, one that vanished is left out. All three
//! are normal during an online backup; WAL replay from the backup's start repairs them.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::scan::{Entry, EntryKind};

/// What went into a part.
#[derive(Debug, Default, Clone, Copy)]
pub struct PartStats {
    pub files: u64,
    pub bytes: u64,
    pub vanished: u64,
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
            EntryKind::File { size } => {
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
                h.set_size(*size);
                let reader = ExactReader {
                    inner: BufReader::with_capacity(256 << 10, f),
                    remaining: *size,
                    padded: false,
                };
                b.append_data(&mut h, &e.name, reader).map_err(|err| {
                    io::Error::new(err.kind(), format!("copy {}: {err}", e.source.display()))
                })?;
                stats.files += 1;
                stats.bytes += size;
            }
        }
    }
    b.finish()?;
    Ok(stats)
}

/// Where entries of a backup go when restored.
pub trait Destination: Sync {
    /// Absolute path for the entry `name` (relative, `/`-separated, already checked safe).
    fn path_for(&self, name: &str) -> PathBuf;
    /// Entries the restore handles itself (e.g. tablespace links) and must skip.
    fn skip(&self, _name: &str) -> bool {
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

/// Extract a tar stream into `dest`. Returns the number of files written.
pub fn extract_part(r: &mut dyn Read, dest: &dyn Destination) -> io::Result<u64> {
    let mut ar = tar::Archive::new(r);
    let mut files = 0;
    for entry in ar.entries()? {
        let mut entry = entry?;
        let name = safe_name(&entry.path()?)?;
        if dest.skip(&name) {
            continue;
        }
        let target = dest.path_for(&name);
        let mode = entry.header().mode().unwrap_or(0o600);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                entry.set_preserve_permissions(true);
                entry.set_preserve_mtime(true);
                entry.unpack(&target).map_err(|e| {
                    io::Error::new(e.kind(), format!("write {}: {e}", target.display()))
                })?;
                files += 1;
            }
            tar::EntryType::Symlink => {
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent)?;
                }
                let link = entry.link_name()?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("symlink {name} has no target"),
                    )
                })?;
                std::os::unix::fs::symlink(&*link, &target)?;
            }
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
        fn path_for(&self, name: &str) -> PathBuf {
            self.0.join(name)
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
        std::os::unix::fs::symlink("/elsewhere", src.path().join("link")).unwrap();
        let entries = scan(src.path()).unwrap();
        // Change the files between scan and copy, as a running server would.
        fs::write(src.path().join("base/1/grows"), vec![7u8; 20_000]).unwrap();
        fs::write(src.path().join("base/1/shrinks"), vec![9u8; 4_000]).unwrap();
        fs::remove_file(src.path().join("base/1/vanishes")).unwrap();

        let mut tar = vec![];
        let stats = write_part(&entries, &mut tar).unwrap();
        assert_eq!(stats.vanished, 1);
        assert_eq!(stats.files, 3);

        let dst = tempfile::tempdir().unwrap();
        let files = extract_part(&mut &tar[..], &Into(dst.path().to_path_buf())).unwrap();
        assert_eq!(files, 3);
        assert_eq!(
            fs::read(dst.path().join("base/1/grows")).unwrap(),
            vec![7u8; 10_000]
        );
        let shrunk = fs::read(dst.path().join("base/1/shrinks")).unwrap();
        assert_eq!(shrunk.len(), 10_000);
        assert!(shrunk[..4_000].iter().all(|&b| b == 9) && shrunk[4_000..].iter().all(|&b| b == 0));
        assert!(!dst.path().join("base/1/vanishes").exists());
        assert_eq!(
            fs::read_link(dst.path().join("link")).unwrap(),
            PathBuf::from("/elsewhere")
        );
        assert_eq!(
            fs::read_to_string(dst.path().join("PG_VERSION")).unwrap(),
            "15\n"
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert!(safe_name(Path::new("../etc/passwd")).is_err());
        assert!(safe_name(Path::new("/etc/passwd")).is_err());
        assert_eq!(safe_name(Path::new("./base/1")).unwrap(), "base/1");
    }
}
