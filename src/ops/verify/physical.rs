//! Test-restore of a physical backup: restore it into a scratch directory (every object's
//! checksum checked), replay WAL to consistency (`recovery_target = 'immediate'`) in a
//! scratch postmaster on a private socket, run sanity queries (every database
//! connectable, catalog readable, tables per database, optionally `pg_amcheck`), stop,
//! and report. The production server and its data directory are never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use super::backup::Findings;
use super::scratch::ScratchDir;
use crate::config::Config;
use crate::manifest::Manifest;
use crate::ops::restore::{recovery_settings, restore_files};
use crate::pg::bin::PgBin;
use crate::pg::conn::ConnParams;
use crate::pg::server::{RecoveryEnd, Server};
use crate::recovery::target::Target;
use crate::recovery::target::TargetAction;
use crate::repo::Repository;

pub async fn verify(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
    scratch: &ScratchDir,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let phys = m
        .physical
        .as_ref()
        .context("physical backup without physical info")?;
    let started = Instant::now();
    let pgdata = scratch.path.join("pgdata");
    let port = 20000 + (std::process::id() % 20000) as u16;
    // A Unix socket path has at most 107 bytes; a deep state_dir takes a short private
    // directory (mode 0700) in the temp dir instead, removed when this returns.
    let mut sock = scratch.path.join("sock");
    let _short_sock = if socket_path_fits(&sock, port) {
        std::fs::create_dir_all(&sock)?;
        None
    } else {
        let d = tempfile::Builder::new()
            .prefix("backupctl-verify-")
            .tempdir()
            .context("create a socket directory for the test restore")?;
        sock = d.path().to_path_buf();
        Some(d)
    };
    let hba = scratch.path.join("pg_hba.conf");
    // The socket directory is private to this user: trust is safe and needs no secrets.
    std::fs::write(&hba, "local all all trust\n")?;
    let tablespaces: HashMap<u32, PathBuf> = phys
        .tablespaces
        .iter()
        .map(|t| {
            (
                t.oid,
                scratch.path.join("tablespaces").join(t.oid.to_string()),
            )
        })
        .collect();
    let mut settings = recovery_settings(
        cfg,
        &Target::Immediate,
        TargetAction::Promote,
        Some(phys.timeline),
        &pgdata,
        // Replay to consistency needs every segment from start to stop.
        &[(phys.start_wal.clone(), phys.stop_wal.clone())],
    )?;
    settings.extend([
        ("port", port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", sock.display().to_string()),
        ("hba_file", hba.display().to_string()),
        ("archive_mode", "off".into()),
        ("logging_collector", "off".into()),
        ("shared_buffers", "128MB".into()),
    ]);

    // A throwaway copy: no fsync.
    restore_files(cfg, repo, m, &pgdata, &tablespaces, &settings, false).await?;
    f.checked.push(format!(
        "every object's checksum ({} objects, {})",
        m.objects.len(),
        crate::ops::status::human_bytes(m.stored_bytes())
    ));

    let bin = PgBin::for_config(&cfg.postgres, Some(m.pg_version_num / 10000))?;
    let mut params = ConnParams::from_config(&cfg.postgres)?;
    params.host = sock.display().to_string();
    params.port = port;
    let log = scratch.path.join("recovery.log");
    let server = Server::start(&bin, &pgdata, &log, "", params).await?;
    let rec = tokio::time::timeout(cfg.verify.timeout, server.wait_for_recovery(false))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "WAL replay did not finish within verify.timeout ({:?})",
                cfg.verify.timeout
            )
        })??;
    if rec.end != RecoveryEnd::Promoted {
        anyhow::bail!("recovery ended as {:?}, expected promotion", rec.end);
    }
    f.rto_secs = started.elapsed().as_secs_f64();
    f.checked.push(format!(
        "WAL replay from {} to consistency ({} → {}), promoted on timeline {}",
        phys.start_wal,
        phys.start_lsn,
        rec.replay_lsn.as_deref().unwrap_or("?"),
        rec.timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into())
    ));

    let result = sanity(cfg, &server, &bin, &sock, port, f).await;
    server.stop().await?;
    result
}

async fn sanity(
    cfg: &Config,
    server: &Server,
    bin: &PgBin,
    sock: &std::path::Path,
    port: u16,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let client = server.connect("postgres").await?;
    let dbs: Vec<String> = client
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname",
            &[],
        )
        .await
        .context("list databases")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut tables = vec![];
    for db in &dbs {
        let c = match server.connect(db).await {
            Ok(c) => c,
            Err(e) => {
                f.failures
                    .push(format!("database {db} is not connectable: {e:#}"));
                continue;
            }
        };
        let row = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_catalog.pg_class), \
                        (SELECT count(*) FROM pg_catalog.pg_class c \
                           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                          WHERE c.relkind IN ('r', 'p') \
                            AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                            AND n.nspname NOT LIKE 'pg\\_toast%')",
                &[],
            )
            .await;
        match row {
            Ok(r) => tables.push(format!("{db}: {} tables", r.get::<_, i64>(1))),
            Err(e) => f
                .failures
                .push(format!("catalog of database {db} is not readable: {e:#}")),
        }
    }
    f.checked.push(format!(
        "databases connectable and catalogs readable: {}",
        tables.join(", ")
    ));
    if cfg.verify.amcheck {
        let out = bin
            .command("pg_amcheck")
            .arg("-h")
            .arg(sock)
            .args(["-p", &port.to_string(), "--all", "--install-missing"])
            .env("PGUSER", server_user(cfg))
            .output()
            .await
            .context("run pg_amcheck")?;
        if out.status.success() {
            f.checked.push("pg_amcheck --all: no corruption".into());
        } else {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            let first: Vec<&str> = text.lines().take(10).collect();
            f.failures.push(format!(
                "pg_amcheck failed ({}): {}",
                out.status,
                first.join(" | ")
            ));
        }
    }
    Ok(())
}

fn server_user(cfg: &Config) -> String {
    ConnParams::from_config(&cfg.postgres)
        .map(|p| p.user)
        .unwrap_or_else(|_| "postgres".into())
}

/// Whether PostgreSQL can create its socket `<dir>/.s.PGSQL.<port>` (107 bytes at most).
fn socket_path_fits(dir: &Path, port: u16) -> bool {
    dir.as_os_str().len() + "/.s.PGSQL.".len() + port.to_string().len() <= 107
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_scratch_directories_do_not_hold_the_socket() {
        assert!(socket_path_fits(
            Path::new("/var/lib/backupctl/scratch/v-1/sock"),
            25432
        ));
        let deep = format!("/tmp/{}/sock", "d".repeat(100));
        assert!(!socket_path_fits(Path::new(&deep), 25432));
        // Exactly at the limit.
        let at = format!("/{}", "x".repeat(107 - 1 - "/.s.PGSQL.".len() - 5));
        assert!(socket_path_fits(Path::new(&at), 25432));
        assert!(!socket_path_fits(Path::new(&format!("{at}x")), 25432));
    }
}
