//! Discovery of the PostgreSQL programs: the server programs (initdb, pg_ctl, postgres)
//! and the client programs (pg_dump, pg_dumpall, pg_restore, psql, …).
//!
//! Server programs run a copy of the cluster (test restores, `restore --start`), so
//! their major version must be the server's. Client programs may be newer than the
//! server (pg_dump 18 dumps a PostgreSQL 16 server), never older (pg_dump refuses a newer
//! server). Both usually live in one directory; when they do not (a server-only
//! package and the client programs of a newer release), `postgres.bin_dir` names the
//! server's and `postgres.client_bin_dir` the client programs'.
//!
//! Order, for each: the configured directory; `/usr/lib/postgresql/<major>/bin` for the
//! server's major version; `pg_config --bindir`; the newest `/usr/lib/postgresql/*/bin`.
//! Client programs are looked for first beside the server programs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::config::PostgresConfig;

/// The programs that run a server, and so must be of the server's major version.
const SERVER_PROGRAMS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_controldata",
    "pg_resetwal",
];

#[derive(Debug, Clone)]
pub struct PgBin {
    /// Server programs.
    pub dir: PathBuf,
    pub major: u32,
    /// Client programs (often `dir` itself).
    pub client_dir: PathBuf,
    pub client_major: u32,
}

impl PgBin {
    /// Server and client programs for `[postgres]`, for work that runs a server (test
    /// restores, `restore --start`); `want_major` is the server's major version when
    /// known.
    pub fn for_config(pg: &PostgresConfig, want_major: Option<u32>) -> anyhow::Result<PgBin> {
        let (dir, major) = find(
            pg.bin_dir.as_deref(),
            "postgres.bin_dir",
            want_major,
            Kind::Server,
        )?;
        let (client_dir, client_major) = find_clients(pg, Some(want_major.unwrap_or(major)))?;
        Ok(PgBin {
            dir,
            major,
            client_dir,
            client_major,
        })
    }

    /// Client programs only (pg_dump, pg_restore), for work that only talks to a server:
    /// logical backups and restores work from a host without server programs.
    pub fn clients(pg: &PostgresConfig, want_major: Option<u32>) -> anyhow::Result<PgBin> {
        let (client_dir, client_major) = find_clients(pg, want_major)?;
        Ok(PgBin {
            dir: client_dir.clone(),
            major: client_major,
            client_dir,
            client_major,
        })
    }

    /// Path of one program, e.g. `pg_dump`: server programs from the server's
    /// directory, the others from the client programs'.
    pub fn path(&self, program: &str) -> PathBuf {
        if SERVER_PROGRAMS.contains(&program) {
            self.dir.join(program)
        } else {
            self.client_dir.join(program)
        }
    }

    pub fn command(&self, program: &str) -> tokio::process::Command {
        tokio::process::Command::new(self.path(program))
    }

    /// A blocking `std::process::Command` (for producers running on blocking threads).
    pub fn std_command(&self, program: &str) -> Command {
        Command::new(self.path(program))
    }

    /// What was found for what, for `check`.
    pub fn describe(&self) -> String {
        if self.client_dir == self.dir {
            format!(
                "PostgreSQL {} programs in {}",
                self.major,
                self.dir.display()
            )
        } else {
            format!(
                "server programs: PostgreSQL {} in {}; client programs: PostgreSQL {} in {}",
                self.major,
                self.dir.display(),
                self.client_major,
                self.client_dir.display()
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// initdb, pg_ctl, postgres: exactly the server's major version.
    Server,
    /// pg_dump, pg_restore: the server's major version or newer.
    Client,
}

/// Client programs: `postgres.client_bin_dir`, else `postgres.bin_dir` when it has
/// them, else discovery.
fn find_clients(pg: &PostgresConfig, want_major: Option<u32>) -> anyhow::Result<(PathBuf, u32)> {
    if let Some(d) = pg.client_bin_dir.as_deref() {
        return find(Some(d), "postgres.client_bin_dir", want_major, Kind::Client);
    }
    match pg.bin_dir.as_deref() {
        Some(d) if d.join("pg_dump").exists() => {
            find(Some(d), "postgres.bin_dir", want_major, Kind::Client)
        }
        Some(d) => find(None, "postgres.client_bin_dir", want_major, Kind::Client).map_err(|e| {
            crate::user_error!(
                "postgres.bin_dir {} has no client programs (pg_dump, pg_restore), and {e:#}",
                d.display()
            )
        }),
        None => find(None, "postgres.bin_dir", want_major, Kind::Client),
    }
}

/// The first candidate directory with the programs of `kind` in an acceptable version.
fn find(
    configured: Option<&Path>,
    key: &str,
    want_major: Option<u32>,
    kind: Kind,
) -> anyhow::Result<(PathBuf, u32)> {
    let mut candidates: Vec<(PathBuf, String)> = vec![];
    if let Some(d) = configured {
        candidates.push((d.to_path_buf(), key.to_string()));
    } else {
        if let Some(major) = want_major {
            candidates.push((
                PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
                "the Debian layout for the server's version".into(),
            ));
        }
        if let Some(d) = pg_config_bindir() {
            candidates.push((d, "pg_config --bindir".into()));
        }
        if let Some(d) = newest_debian_bindir() {
            candidates.push((d, "the newest /usr/lib/postgresql/*/bin".into()));
        }
    }
    let (programs, what): (&[&str], &str) = match kind {
        Kind::Server => (&["postgres", "pg_ctl", "initdb"], "server programs"),
        Kind::Client => (&["pg_dump", "pg_restore"], "client programs"),
    };
    let mut tried = vec![];
    for (dir, why) in candidates {
        if let Some(missing) = programs.iter().find(|p| !dir.join(p).exists()) {
            tried.push(format!("{} ({why}) has no {missing}", dir.display()));
            continue;
        }
        match major_version_of(&dir.join(programs[0])) {
            Ok(major) => match (kind, want_major) {
                (Kind::Server, Some(want)) if want != major => tried.push(format!(
                    "{} ({why}) holds PostgreSQL {major}, the server is {want}",
                    dir.display()
                )),
                (Kind::Client, Some(want)) if major < want => tried.push(format!(
                    "{} ({why}) holds PostgreSQL {major}, older than the server ({want})",
                    dir.display()
                )),
                _ => return Ok((dir, major)),
            },
            Err(e) => tried.push(format!("{} ({why}): {e:#}", dir.display())),
        }
    }
    Err(crate::user_error!(
        "no usable PostgreSQL {what}{}: tried {}; set {key} to the bin directory of {}",
        want_major
            .map(|m| format!(" for version {m}"))
            .unwrap_or_default(),
        if tried.is_empty() {
            "nothing".into()
        } else {
            tried.join("; ")
        },
        match kind {
            Kind::Server => "the server's major version",
            Kind::Client => "the server's major version or newer",
        }
    ))
}

/// Why pg_restore of `client_major` cannot restore into a server of `server_major`, when
/// it is known that it cannot: pg_restore 17 and later begin every restore with `SET
/// transaction_timeout = 0`, a setting PostgreSQL 16 and older reject, so a restore (and
/// the test restore that verifies a logical backup) fails at its first statement.
/// Older pg_restore cannot read the archives newer pg_dump writes either.
pub fn restore_incompatibility(client_major: u32, server_major: u32) -> Option<String> {
    (client_major >= 17 && server_major < 17).then(|| {
        format!(
            "pg_dump/pg_restore {client_major} with a PostgreSQL {server_major} server: \
             pg_restore {client_major} starts every restore with SET transaction_timeout, \
             which PostgreSQL {server_major} rejects, so logical backups taken with these \
             programs fail verification and cannot be restored into PostgreSQL \
             {server_major} (only into 17 or later); set postgres.client_bin_dir to \
             PostgreSQL {server_major}'s client programs"
        )
    })
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

/// Major version of `program` (`postgres --version`, `pg_dump --version`).
pub fn major_version_of(program: &Path) -> anyhow::Result<u32> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", program.display()))?;
    parse_major(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow::anyhow!("cannot read the version of {}", program.display()))
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
        let pg = PostgresConfig {
            bin_dir: Some("/nonexistent/bin".into()),
            ..Default::default()
        };
        let msg = format!("{:#}", PgBin::for_config(&pg, Some(15)).unwrap_err());
        assert!(msg.contains("postgres.bin_dir"), "{msg}");
        assert!(msg.contains("/nonexistent/bin"), "{msg}");
    }

    /// A fake bin directory whose programs print `version`.
    fn fake_bin(dir: &Path, programs: &[&str], version: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        for p in programs {
            let path = dir.join(p);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho '{p} (PostgreSQL) {version}'\n"),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn pg_restore_17_cannot_restore_into_16() {
        assert!(restore_incompatibility(18, 16).is_some());
        assert!(restore_incompatibility(17, 15).is_some());
        assert!(restore_incompatibility(18, 17).is_none());
        assert!(restore_incompatibility(16, 16).is_none());
    }

    #[test]
    fn server_and_client_programs_may_live_apart() {
        let d = tempfile::tempdir().unwrap();
        let server = d.path().join("server16");
        let client18 = d.path().join("client18");
        let client14 = d.path().join("client14");
        fake_bin(&server, &["postgres", "pg_ctl", "initdb"], "16.4");
        fake_bin(&client18, &["pg_dump", "pg_restore", "psql"], "18.1");
        fake_bin(&client14, &["pg_dump", "pg_restore"], "14.9");
        let pg = PostgresConfig {
            bin_dir: Some(server.clone()),
            client_bin_dir: Some(client18.clone()),
            ..Default::default()
        };
        let b = PgBin::for_config(&pg, Some(16)).unwrap();
        assert_eq!(b.path("pg_ctl"), server.join("pg_ctl"));
        assert_eq!(b.path("pg_dump"), client18.join("pg_dump"));
        assert_eq!((b.major, b.client_major), (16, 18));
        assert!(
            b.describe().contains("client programs: PostgreSQL 18"),
            "{}",
            b.describe()
        );
        // Logical work needs no server programs at all.
        let only_clients = PostgresConfig {
            bin_dir: Some(client18.clone()),
            ..Default::default()
        };
        assert_eq!(
            PgBin::clients(&only_clients, Some(16))
                .unwrap()
                .client_major,
            18
        );
        let msg = format!(
            "{:#}",
            PgBin::for_config(&only_clients, Some(16)).unwrap_err()
        );
        assert!(msg.contains("has no postgres"), "{msg}");
        // Client programs older than the server are refused, naming the key.
        let old = PostgresConfig {
            bin_dir: Some(server.clone()),
            client_bin_dir: Some(client14),
            ..Default::default()
        };
        let msg = format!("{:#}", PgBin::for_config(&old, Some(16)).unwrap_err());
        assert!(
            msg.contains("postgres.client_bin_dir") && msg.contains("older than the server (16)"),
            "{msg}"
        );
        // Server programs of another major are refused.
        let msg = format!("{:#}", PgBin::for_config(&pg, Some(17)).unwrap_err());
        assert!(
            msg.contains("holds PostgreSQL 16, the server is 17"),
            "{msg}"
        );
    }
}
