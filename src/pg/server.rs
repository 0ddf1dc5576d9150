//! Starting a PostgreSQL server on a restored data directory and following its
//! recovery: used by `restore --start` and by test-restore verification.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::bin::PgBin;
use super::conn::ConnParams;

/// How a started recovery ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryEnd {
    /// Recovery finished and the server is read-write.
    Promoted,
    /// Recovery reached the target and is paused (read-only, `pg_wal_replay_resume()`).
    Paused,
    /// Recovery reached the target and the server shut down, as asked.
    ShutDown,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryReport {
    pub end: RecoveryEnd,
    pub timeline: Option<u32>,
    pub last_replayed_commit: Option<DateTime<Utc>>,
    pub replay_lsn: Option<String>,
    pub seconds: f64,
}

/// A server started on `pgdata` (not stopped on drop: `restore --start` leaves it
/// running; verification stops it explicitly).
pub struct Server {
    pub pgdata: PathBuf,
    pub log: PathBuf,
    bin: PgBin,
    params: ConnParams,
}

/// Lines of `postmaster.pid`: pid, data dir, start time, port, socket dir, listen addr…
fn read_pid_file(pgdata: &Path) -> Option<(i32, u16, String)> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    let port = lines.get(3)?.trim().parse().ok()?;
    let socket = lines
        .get(4)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Some((pid, port, socket))
}

/// The pid of a live postmaster on `pgdata`, if any.
pub fn running_postmaster(pgdata: &Path) -> Option<i32> {
    let (pid, _, _) = read_pid_file(pgdata)?;
    let p = rustix::process::Pid::from_raw(pid)?;
    rustix::process::test_kill_process(p).ok().map(|_| pid)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `initdb` a throwaway cluster owned by this OS user, with `superuser` as its superuser.
pub async fn initdb(bin: &PgBin, pgdata: &Path, superuser: &str) -> anyhow::Result<()> {
    let out = bin
        .command("initdb")
        .arg("-D")
        .arg(pgdata)
        .args([
            "-U",
            superuser,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .await
        .context("run initdb")?;
    if !out.status.success() {
        anyhow::bail!(
            "initdb of a scratch cluster failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Server {
    /// `pg_ctl start` without waiting; `options` go to postgres (`-p 5433 -c …`).
    pub async fn start(
        bin: &PgBin,
        pgdata: &Path,
        log: &Path,
        options: &str,
        params: ConnParams,
    ) -> anyhow::Result<Server> {
        let out = bin
            .command("pg_ctl")
            .arg("-D")
            .arg(pgdata)
            .arg("-l")
            .arg(log)
            .args(["-W", "-o", options, "start"])
            .output()
            .await
            .context("run pg_ctl start")?;
        if !out.status.success() {
            anyhow::bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Server {
            pgdata: pgdata.to_path_buf(),
            log: log.to_path_buf(),
            bin: bin.clone(),
            params,
        })
    }

    /// Connect through the socket the server announced in postmaster.pid.
    pub async fn connect(&self, dbname: &str) -> anyhow::Result<Client> {
        let (_, port, socket) = read_pid_file(&self.pgdata)
            .ok_or_else(|| anyhow::anyhow!("postmaster.pid is not there yet"))?;
        let mut p = self.params.with_dbname(dbname);
        p.port = port;
        if !socket.is_empty() {
            p.host = socket;
        }
        p.connect().await
    }

    /// Wait until recovery has promoted, paused at the target, or shut down.
    /// Fails (with the server log's tail) if the server stops otherwise.
    pub async fn wait_for_recovery(&self, expect_shutdown: bool) -> anyhow::Result<RecoveryReport> {
        let started = Instant::now();
        let mut last_progress = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if running_postmaster(&self.pgdata).is_none()
                && started.elapsed() > Duration::from_secs(2)
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                if expect_shutdown && log.contains("shutdown at recovery target") {
                    return Ok(RecoveryReport {
                        end: RecoveryEnd::ShutDown,
                        timeline: None,
                        last_replayed_commit: None,
                        replay_lsn: None,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                anyhow::bail!(
                    "the restored server stopped during recovery; last lines of {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            let Ok(client) = self.connect("postgres").await else {
                continue; // not accepting connections yet (not consistent)
            };
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                            CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE '' END, \
                            pg_last_xact_replay_timestamp(), \
                            pg_last_wal_replay_lsn()::text",
                    &[],
                )
                .await;
            let Ok(row) = row else { continue };
            let in_recovery: bool = row.get(0);
            let pause: String = row.get(1);
            let last_commit: Option<DateTime<Utc>> = row.get(2);
            let replay_lsn: Option<String> = row.get(3);
            let end = if !in_recovery {
                Some(RecoveryEnd::Promoted)
            } else if pause == "paused" {
                Some(RecoveryEnd::Paused)
            } else {
                None
            };
            if let Some(end) = end {
                let tli_sql = if end == RecoveryEnd::Promoted {
                    "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
                } else {
                    "SELECT timeline_id FROM pg_control_checkpoint()"
                };
                let timeline = client
                    .query_one(tli_sql, &[])
                    .await
                    .ok()
                    .map(|r| r.get::<_, i32>(0) as u32);
                return Ok(RecoveryReport {
                    end,
                    timeline,
                    last_replayed_commit: last_commit,
                    replay_lsn,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            if last_progress.elapsed() > Duration::from_secs(30) {
                tracing::info!(replay_lsn = ?replay_lsn, last_commit = ?last_commit, "recovery in progress");
                last_progress = Instant::now();
            }
        }
    }

    /// Wait until the server accepts connections (a fresh cluster, no recovery).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.connect("postgres").await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > timeout
                || (started.elapsed() > Duration::from_secs(2)
                    && running_postmaster(&self.pgdata).is_none())
            {
                anyhow::bail!(
                    "the scratch server did not start; last lines of {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `pg_ctl stop -m fast`.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let out = self
            .bin
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "120", "stop"])
            .output()
            .await
            .context("run pg_ctl stop")?;
        if !out.status.success() && running_postmaster(&self.pgdata).is_some() {
            anyhow::bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
