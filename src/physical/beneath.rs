//! Writing beneath a directory without ever following a symbolic link.
//!
//! A restore writes what the repository holds, and the repository is untrusted input: an
//! entry must not reach outside the directory it is restored into, by its name (`..`, an
//! absolute path: refused before this) or through a symbolic link — one an earlier entry
//! of the same backup made, or one already on disk. So a path below a restore directory
//! is walked one component at a time from an open descriptor of that directory, every
//! directory opened with `O_NOFOLLOW`, and the file itself opened or created with
//! `O_NOFOLLOW` too: a link anywhere on the way is refused, never followed. The restore
//! directory itself (PGDATA, a tablespace destination) is the operator's and may be
//! reached through links.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

/// Open the directory `path` itself (following links: it is the operator's).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| annotate(e.into(), "open", path))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The error for `name` in `dir` failing with `errno`: if a symbolic link is in the
/// way, say so (that is the refusal); otherwise the error as it is.
fn refusal(dir: &OwnedFd, name: &str, errno: Errno, path: &Path, what: &str) -> io::Error {
    if matches!(errno, Errno::LOOP | Errno::NOTDIR | Errno::EXIST) {
        if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                return io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "refusing to {what} {}: it is a symbolic link, and a restore never \
                         writes through one",
                        path.display()
                    ),
                );
            }
        }
    }
    annotate(errno.into(), what, path)
}

/// One path component: what a caller checked already, checked again because a slip here
/// would write anywhere.
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unsafe path component {name:?}"),
        ));
    }
    Ok(name)
}

fn open_child_dir(dir: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Open directory `rel` (`/`-separated, relative; empty for `root` itself) beneath
/// `root`, not following any link below it. With `create`, missing directories are made
/// (mode 0700, as PostgreSQL wants them; a directory entry sets its own mode after).
/// `root_path` is for messages.
pub fn open_dir(root: &OwnedFd, root_path: &Path, rel: &str, create: bool) -> io::Result<OwnedFd> {
    let mut cur = root.try_clone()?;
    let mut walked = root_path.to_path_buf();
    for name in rel.split('/').filter(|c| !c.is_empty()) {
        let name = component(name)?;
        walked.push(name);
        let next = match open_child_dir(&cur, name) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(refusal(&cur, name, e, &walked, "create directory")),
                }
                open_child_dir(&cur, name)
            }
            r => r,
        };
        cur = next.map_err(|e| refusal(&cur, name, e, &walked, "open directory"))?;
    }
    Ok(cur)
}

/// Create (or truncate) file `name` in `dir` for writing, mode 0600; a link there is
/// refused, not followed. `path` is for messages.
pub fn create_file(dir: &OwnedFd, name: &str, path: &Path) -> io::Result<File> {
    let name = component(name)?;
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map(File::from)
    .map_err(|e| refusal(dir, name, e, path, "write"))
}

/// Open file `name` in `dir` for changing in place (made empty, mode 0600, when
/// missing; never truncated); a link there is refused, not followed.
pub fn update_file(dir: &OwnedFd, name: &str, path: &Path) -> io::Result<File> {
    let name = component(name)?;
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map(File::from)
    .map_err(|e| refusal(dir, name, e, path, "write"))
}

/// Make symbolic link `name` in `dir` pointing at `target`.
pub fn symlink(target: &Path, dir: &OwnedFd, name: &str, path: &Path) -> io::Result<()> {
    let name = component(name)?;
    rustix::fs::symlinkat(target, dir, name).map_err(|e| annotate(e.into(), "symlink", path))
}

/// Open file `name` in directory `dir` for reading; `None` if there is nothing there. A
/// link there is refused, not followed.
pub fn open_existing(dir: &Path, name: &str) -> io::Result<Option<File>> {
    let name = component(name)?;
    let root = open_root(dir)?;
    match rustix::fs::openat(
        &root,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(refusal(&root, name, e, &dir.join(name), "open")),
    }
}

/// The contents of file `name` in `dir`, `None` if there is none; never through a link.
pub fn read(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some(mut f) = open_existing(dir, name)? else {
        return Ok(None);
    };
    let mut out = vec![];
    f.read_to_end(&mut out)
        .map_err(|e| annotate(e, "read", &dir.join(name)))?;
    Ok(Some(out))
}

/// Replace the contents of file `name` in `dir` with `data` (creating it, mode 0600);
/// never through a link. Returns the file, for a caller that syncs it.
pub fn write(dir: &Path, name: &str, data: &[u8]) -> io::Result<File> {
    use std::io::Write;
    let path: PathBuf = dir.join(name);
    let mut f = create_file(&open_root(dir)?, name, &path)?;
    f.write_all(data).map_err(|e| annotate(e, "write", &path))?;
    Ok(f)
}

/// Whether anything (a link included, not followed) is called `name` in `dir`.
pub fn exists(dir: &Path, name: &str) -> io::Result<bool> {
    let name = component(name)?;
    match rustix::fs::statat(CWD, dir.join(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(annotate(e.into(), "stat", &dir.join(name))),
    }
}

/// Remove file `name` (a link is removed, never followed) from `dir`; nothing there is
/// not an error.
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    let name = component(name)?;
    let root = open_root(dir)?;
    match rustix::fs::unlinkat(&root, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(annotate(e.into(), "remove", &dir.join(name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_on_the_way_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::fs::write(outside.path().join("f"), "keep").unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), root.path().join("flink")).unwrap();
        let fd = open_root(root.path()).unwrap();

        let e = open_dir(&fd, root.path(), "link/sub", true).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!outside.path().join("sub").exists());
        let e = create_file(&fd, "flink", &root.path().join("flink")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = write(root.path(), "flink", b"evil").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(read(root.path(), "flink").is_err());
        assert!(exists(root.path(), "flink").unwrap());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("f")).unwrap(),
            "keep"
        );
        assert!(open_dir(&fd, root.path(), "a/../b", true).is_err());

        // Ordinary paths work, and directories are made as needed.
        let d = open_dir(&fd, root.path(), "a/b", true).unwrap();
        drop(create_file(&d, "c", &root.path().join("a/b/c")).unwrap());
        assert!(root.path().join("a/b/c").is_file());
        write(root.path(), "plain", b"x").unwrap();
        assert_eq!(read(root.path(), "plain").unwrap().unwrap(), b"x");
        assert_eq!(read(root.path(), "absent").unwrap(), None);
    }
}
