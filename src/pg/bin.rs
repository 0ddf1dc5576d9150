//! Discovery of the PostgreSQL server binaries (initdb, pg_ctl, pg_dump, …).
//!
//! Order: `postgres.bin_dir`; `pg_config --bindir`; `/usr/lib/postgresql/<major>/bin`
//! for the server's major version (or the newest installed). The chosen directory's
//! major version must match the server's when that is known: pg_dump refuses newer
//! servers and a restore needs the same major version.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

#[derive(Debug, Clone)]
pub struct PgBin {
    pub dir: PathBuf,
    pub major: u32,
}

impl PgBin {
    /// Find the binaries; `want_major` is the server's major version when known.
    pub fn discover(bin_dir: Option<&Path>, want_major: Option<u32>) -> anyhow::Result<PgBin> {
        let mut candidates: Vec<(PathBuf, &str)> = vec![];
        if let Some(d) = bin_dir {
            candidates.push((d.to_path_buf(), "postgres.bin_dir"));
        } else {
            if let Some(major) = want_major {
                candidates.push((
                    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
                    "the Debian layout for the server's version",
                ));
            }
            if let Some(d) = pg_config_bindir() {
                candidates.push((d, "pg_config --bindir"));
            }
            if let Some(d) = newest_debian_bindir() {
                candidates.push((d, "the newest /usr/lib/postgresql/*/bin"));
            }
        }
        let mut tried = vec![];
        for (dir, why) in candidates {
            match major_version_of(&dir) {
                Ok(major) => {
                    if let Some(want) = want_major {
                        if want != major {
                            tried.push(format!(
                                "{} ({why}) holds PostgreSQL {major}, the server is {want}",
                                dir.display()
                            ));
                            if bin_dir.is_some() {
                                break;
                            }
                            continue;
                        }
                    }
                    return Ok(PgBin { dir, major });
                }
                Err(e) => tried.push(format!("{} ({why}): {e:#}", dir.display())),
            }
        }
        Err(crate::user_error!(
            "no usable PostgreSQL binaries{}: tried {}; set postgres.bin_dir to the bin directory of the server's major version",
            want_major.map(|m| format!(" for version {m}")).unwrap_or_default(),
            if tried.is_empty() { "nothing".into() } else { tried.join("; ") }
        ))
    }

    /// Path of one program, e.g. `pg_dump`.
    pub fn path(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    pub fn command(&self, program: &str) -> tokio::process::Command {
        tokio::process::Command::new(self.path(program))
    }

    /// A blocking `std::process::Command` (for producers running on blocking threads).
    pub fn std_command(&self, program: &str) -> Command {
        Command::new(self.path(program))
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn newest_debian_bindir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .max()
        .map(|m| PathBuf::from(format!("/usr/lib/postgresql/{m}/bin")))
}

/// Major version of the binaries in `dir`, from `pg_dump --version` or `postgres --version`.
pub fn major_version_of(dir: &Path) -> anyhow::Result<u32> {
    let prog = ["pg_dump", "postgres", "pg_ctl"]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no pg_dump, postgres or pg_ctl there"))?;
    let out = Command::new(&prog)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", prog.display()))?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow::anyhow!("cannot read the version of {}", prog.display()))
}

/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15; `9.6.24` → 9.
pub fn parse_major(version_line: &str) -> Option<u32> {
    let ver = version_line
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    ver.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_lines() {
        assert_eq!(
            parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn wrong_bin_dir_is_a_clear_error() {
        let err = PgBin::discover(Some(Path::new("/nonexistent/bin")), Some(15)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("postgres.bin_dir"), "{msg}");
        assert!(msg.contains("/nonexistent/bin"), "{msg}");
    }
}
