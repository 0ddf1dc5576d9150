//! `backupctl backup`: take a backup now — also the pre-migration hook that migration
//! tooling calls and trusts by exit code.
//!
//! Takes the job lock of each kind (waiting for a running backup, or exit 3 with
//! `--no-wait`), runs the backup(s), and only once they are durable (manifest written)
//! creates a PostgreSQL restore point named after each backup id, records it in the
//! manifest and switches WAL so the point reaches the archive. The report holds
//! everything needed to restore them. Succeeds only when every step succeeded.

pub mod copies;
pub mod logical;
pub mod physical;

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, StoredKind};
use crate::jobs::JobKind;
use crate::lock::Wait;
use crate::manifest::{BackupKind, Manifest, RestorePoint};
use crate::ops::verify::VerifyReport;
use crate::pg::conn::ConnParams;
use crate::pg::wal::Lsn;
use crate::repo;
pub use crate::text::shell_quote;

/// How long a backup waits for a running one of the same kind by default.
pub const LOCK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Which backups to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKindSel {
    Physical,
    Logical,
    Both,
}

/// `backupctl backup`, as the operation sees it.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub kind: BackupKindSel,
    /// Stored in the manifest; selects `retention.labels.<label>`.
    pub label: Option<String>,
    /// Logical backups: the databases to dump (empty: the configured or every one).
    pub databases: Vec<String>,
    /// `Some(true)`: test-restore the new backups; `Some(false)`: skip the verification
    /// `verify.after_backup` asks for; `None`: follow the config.
    pub verify: Option<bool>,
    /// How long to wait for a running backup of the same kind.
    pub wait: Wait,
    /// Take the physical backup incremental, since this parent.
    pub incremental: Option<physical::ParentChoice>,
}

/// Validate the request, take the job lock of each kind, take the backup(s), and
/// fail if their verification failed. The report says how to restore them.
pub async fn run(cfg: &Config, req: &BackupRequest) -> anyhow::Result<Report> {
    if let Some(label) = &req.label {
        validate_label(label)?;
    }
    if req.kind == BackupKindSel::Physical && !req.databases.is_empty() {
        return Err(crate::user_error!(
            "--database selects databases of a logical backup; use it with --kind logical or both"
        ));
    }
    if req.incremental.is_some() && req.kind != BackupKindSel::Physical {
        return Err(crate::user_error!(
            "an incremental backup is physical: use --kind incremental alone"
        ));
    }
    let verify = req.verify.unwrap_or(cfg.verify.after_backup);
    let taken = take_locked(
        cfg,
        req.kind,
        req.incremental.as_ref(),
        req.label.as_deref(),
        &req.databases,
        verify,
        req.wait,
    )
    .await?;
    if let Some(v) = &taken.verification {
        fail_on_verification(v)?;
    }
    let out = report(cfg, &taken.manifests, taken.archived);
    for b in &out.backups {
        tracing::info!(
            "backup {} ({}) complete: {} bytes stored{}",
            b.id,
            b.kind,
            b.stored_bytes,
            b.restore_point
                .as_ref()
                .map(|p| format!(", restore point at {}", p.lsn))
                .unwrap_or_default()
        );
        for c in &b.restore_commands {
            tracing::info!("restore with: {}", c.command);
        }
    }
    Ok(out)
}

/// [`take`] under the job lock of each kind (physical, then logical: a fixed order, so
/// two `both` runs never deadlock).
pub async fn take_locked(
    cfg: &Config,
    kind: BackupKindSel,
    incremental: Option<&physical::ParentChoice>,
    label: Option<&str>,
    databases: &[String],
    verify: bool,
    wait: Wait,
) -> anyhow::Result<Taken> {
    let state = &cfg.backup.state_dir;
    let _physical_lock = match kind {
        BackupKindSel::Physical | BackupKindSel::Both => {
            Some(JobKind::Physical.lock(state, wait).await?)
        }
        BackupKindSel::Logical => None,
    };
    let _logical_lock = match kind {
        BackupKindSel::Logical | BackupKindSel::Both => {
            Some(JobKind::Logical.lock(state, wait).await?)
        }
        BackupKindSel::Physical => None,
    };
    take(cfg, kind, incremental, label, databases, verify).await
}

/// What [`take`] did.
pub struct Taken {
    /// The new backups' manifests, as stored (restore point and verification included).
    pub manifests: Vec<Manifest>,
    /// Whether the restore point's WAL reached the archive (`None`: no restore point or
    /// the server does not archive).
    pub archived: Option<bool>,
    /// The test restores of the new backups, when asked for. When one failed, retention
    /// did not run.
    pub verification: Option<VerifyReport>,
}

/// The work of `backup` once the job locks are held (also the daemon's scheduled
/// backups): the backup(s), a restore point named after each id (recorded in its
/// manifest, WAL switched and its archiving awaited), verification of the new backups
/// when `verify`, then retention when `retention.after_backup` and the backups verified.
///
/// With several repositories, each kind goes to the first repository that receives it
/// and is then copied to the others that do ([`copies`]); retention runs in each.
pub async fn take(
    cfg: &Config,
    kind: BackupKindSel,
    incremental: Option<&physical::ParentChoice>,
    label: Option<&str>,
    databases: &[String],
    verify: bool,
) -> anyhow::Result<Taken> {
    let physical = copies::first_for(cfg, StoredKind::Physical);
    let logical = copies::first_for(cfg, StoredKind::Logical);
    let target = match kind {
        BackupKindSel::Physical => physical?,
        BackupKindSel::Logical => logical?,
        BackupKindSel::Both => {
            let (p, l) = (physical?, logical?);
            if p.name != l.name {
                // Each kind to its own repository: two runs, each with its restore point.
                let a = Box::pin(take(
                    cfg,
                    BackupKindSel::Physical,
                    incremental,
                    label,
                    databases,
                    verify,
                ))
                .await?;
                let b = Box::pin(take(
                    cfg,
                    BackupKindSel::Logical,
                    None,
                    label,
                    databases,
                    verify,
                ))
                .await?;
                return Ok(a.merge(b));
            }
            p
        }
    };
    take_in(
        &cfg.with_repository(&target),
        kind,
        incremental,
        label,
        databases,
        verify,
    )
    .await
}

impl Taken {
    fn merge(mut self, other: Taken) -> Taken {
        self.manifests.extend(other.manifests);
        self.archived = match (self.archived, other.archived) {
            (Some(a), Some(b)) => Some(a && b),
            (a, None) => a,
            (None, b) => b,
        };
        self.verification = match (self.verification, other.verification) {
            (Some(mut a), Some(b)) => {
                a.backups.extend(b.backups);
                Some(a)
            }
            (a, None) => a,
            (None, b) => b,
        };
        self
    }
}

/// [`take`] into the repository `cfg` acts on.
async fn take_in(
    cfg: &Config,
    kind: BackupKindSel,
    incremental: Option<&physical::ParentChoice>,
    label: Option<&str>,
    databases: &[String],
    verify: bool,
) -> anyhow::Result<Taken> {
    let mut manifests: Vec<Manifest> = Vec::new();
    if matches!(kind, BackupKindSel::Physical | BackupKindSel::Both) {
        manifests.push(physical::run(cfg, label, incremental).await?);
    }
    if matches!(kind, BackupKindSel::Logical | BackupKindSel::Both) {
        manifests.push(logical::run(cfg, label, databases).await?);
    }

    // The backups are durable: mark this instant in the WAL stream.
    let params = ConnParams::from_config(&cfg.postgres)?;
    let client = params
        .connect()
        .await
        .context("create the restore point after the backup")?;
    let repo = repo::open(cfg).await?;
    let mut points = Vec::new();
    for m in &mut manifests {
        let point = create_restore_point(&client, &m.id).await?;
        if let Some(p) = &point {
            m.restore_point = Some(p.clone());
            m.store(repo.as_ref())
                .await
                .with_context(|| format!("record restore point {} in the manifest", p.name))?;
        }
        points.push(point);
    }
    let archived = match points.iter().flatten().map(|p| p.lsn).max() {
        Some(lsn) => push_restore_point(&client, lsn, cfg.backup.archive_timeout).await?,
        None => None,
    };

    let verification = if verify {
        // Test-restore the new backups (under the "verify" lock).
        let report = crate::ops::verify::verify_selected(
            cfg,
            &repo,
            &manifests,
            false,
            Wait::Up(crate::ops::verify::LOCK_WAIT),
        )
        .await?;
        for (m, r) in manifests.iter_mut().zip(&report.backups) {
            m.verification = Some(r.verification.clone());
        }
        Some(report)
    } else {
        None
    };
    let verified = verification.as_ref().is_none_or(|v| v.failed().is_empty());
    let copied_to = copies::copy_to_others(cfg, repo.as_ref(), &manifests).await?;
    if verified && cfg.retention.after_backup {
        for c in std::iter::once(cfg.clone()).chain(copied_to) {
            let r =
                crate::ops::retention::run(&c, false, Wait::Up(crate::ops::retention::LOCK_WAIT))
                    .await
                    .with_context(|| {
                        format!(
                        "the backup succeeded ({}), but retention after it failed in repository {}",
                        manifests
                            .iter()
                            .map(|m| m.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        c.repository.name
                    )
                    })?;
            tracing::info!(repository = %c.repository.name, freed = ?r.freed, "retention after backup done");
        }
    }
    Ok(Taken {
        manifests,
        archived,
        verification,
    })
}

/// `<backup id>: <failure>` for every failed check of every backup in `report`.
pub fn verification_failures(report: &VerifyReport) -> Vec<String> {
    report
        .backups
        .iter()
        .flat_map(|r| {
            r.verification
                .failures
                .iter()
                .map(move |f| format!("{}: {f}", r.id))
        })
        .collect()
}

/// A failed test restore of a new backup fails the command: the backups are durable,
/// but nobody should trust them until that is understood.
fn fail_on_verification(report: &VerifyReport) -> anyhow::Result<()> {
    let failed = report.failed();
    if failed.is_empty() {
        return Ok(());
    }
    Err(anyhow::anyhow!(
        "backup {} is stored, but its verification FAILED: {}",
        failed.join(", "),
        verification_failures(report).join("; ")
    ))
}

/// Labels select retention rules (`retention.labels.<label>`) and appear in ids'
/// company in scripts: keep them to a safe alphabet.
pub fn validate_label(label: &str) -> anyhow::Result<()> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !label.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(crate::user_error!(
            "--label {label:?} is not valid: use 1-64 letters, digits, '-', '_' or '.' (e.g. pre-migration)"
        ))
    }
}

/// `pg_create_restore_point(name)`, or `None` (with a warning) where the server cannot
/// create one: a standby, or `wal_level = minimal`.
async fn create_restore_point(
    client: &tokio_postgres::Client,
    name: &str,
) -> anyhow::Result<Option<RestorePoint>> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('wal_level')",
            &[],
        )
        .await
        .context("read wal_level")?;
    let (standby, wal_level): (bool, String) = (row.get(0), row.get(1));
    if standby || wal_level == "minimal" {
        tracing::warn!(
            "no restore point for backup {name}: {}",
            if standby {
                "the server is a standby (restore points can only be created on the primary)"
            } else {
                "wal_level is minimal"
            }
        );
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT pg_create_restore_point($1)::text, clock_timestamp()",
            &[&name],
        )
        .await
        .with_context(|| format!("create restore point {name}"))?;
    let lsn: Lsn = row
        .get::<_, String>(0)
        .parse()
        .map_err(|e| anyhow::anyhow!("restore point LSN: {e}"))?;
    Ok(Some(RestorePoint {
        name: name.to_string(),
        lsn,
        time: row.get(1),
    }))
}

/// Switch WAL so the restore point's segment is archived now, then wait (up to
/// `timeout`) until the server reports it archived. `None` when the server does not
/// archive WAL; `Some(false)` when it did not get there in time (a warning: the backup
/// itself is complete, but `restore --target-name` needs that WAL).
async fn push_restore_point(
    client: &tokio_postgres::Client,
    lsn: Lsn,
    timeout: Duration,
) -> anyhow::Result<Option<bool>> {
    let archive_mode: String = client
        .query_one("SELECT current_setting('archive_mode')", &[])
        .await?
        .get(0);
    if archive_mode == "off" {
        tracing::warn!(
            "archive_mode is off: the restore point is only usable with WAL archived elsewhere"
        );
        return Ok(None);
    }
    let segment: String = client
        .query_one(
            "SELECT pg_walfile_name($1::text::pg_lsn)",
            &[&lsn.to_string()],
        )
        .await?
        .get(0);
    client
        .query_one("SELECT pg_switch_wal()", &[])
        .await
        .context("switch WAL after the restore point")?;
    let deadline = std::time::Instant::now() + timeout;
    let mut failures_at_start: Option<i64> = None;
    loop {
        let row = client
            .query_one(
                "SELECT last_archived_wal, last_failed_wal,
                        coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false),
                        failed_count
                 FROM pg_stat_archiver",
                &[],
            )
            .await?;
        let (last, failed, failing, failures): (Option<String>, Option<String>, bool, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let first_failures = *failures_at_start.get_or_insert(failures);
        let reached = |w: &Option<String>| {
            w.as_deref()
                .is_some_and(|l| l.get(..24) >= Some(&segment[..]))
        };
        if reached(&last) {
            return Ok(Some(true));
        }
        // The archiver failed a whole round of attempts (it tries 3 times, then pauses
        // for a minute) while we waited and has not succeeded since: archiving is
        // broken, waiting longer would only delay the answer.
        if failing && failures >= first_failures + 3 {
            tracing::warn!(
                "archive_command fails on WAL segment {} (pg_stat_archiver): the restore point \
                 is not archived yet; fix archiving (`backupctl check`, the server log)",
                failed.unwrap_or_default()
            );
            return Ok(Some(false));
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                "WAL segment {segment} with the restore point was not archived within {timeout:?} \
                 (backup.archive_timeout); check archiving (`backupctl check`)"
            );
            return Ok(Some(false));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub label: Option<String>,
    /// The backups were test-restored before returning (`--verify`).
    pub verified: bool,
    pub backups: Vec<BackupReport>,
}

#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub id: String,
    pub kind: BackupKind,
    pub start_time: chrono::DateTime<Utc>,
    pub stop_time: chrono::DateTime<Utc>,
    pub stored_bytes: u64,
    pub original_bytes: u64,
    pub restore_point: Option<RestorePoint>,
    /// Whether the restore point's WAL segment reached the archive (`None`: the server
    /// does not archive WAL or could not create a restore point).
    pub restore_point_archived: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseReport>,
    pub restore_commands: Vec<RestoreCommand>,
}

#[derive(Debug, Serialize)]
pub struct DatabaseReport {
    pub name: String,
    pub tables: usize,
    pub rows: i64,
    pub size_bytes: i64,
    pub large_objects: u64,
}

#[derive(Debug, Serialize)]
pub struct RestoreCommand {
    pub what: String,
    pub command: String,
}

fn report(cfg: &Config, manifests: &[Manifest], archived: Option<bool>) -> Report {
    let base = base_command(cfg);
    let backups = manifests
        .iter()
        .map(|m| BackupReport {
            id: m.id.clone(),
            kind: m.kind,
            start_time: m.start_time,
            stop_time: m.stop_time,
            stored_bytes: m.stored_bytes(),
            original_bytes: m.original_bytes(),
            restore_point: m.restore_point.clone(),
            restore_point_archived: m.restore_point.as_ref().and(archived),
            databases: m
                .logical
                .iter()
                .flat_map(|l| &l.databases)
                .map(|d| DatabaseReport {
                    name: d.name.clone(),
                    tables: d.tables.len(),
                    rows: d.total_rows(),
                    size_bytes: d.size_bytes,
                    large_objects: d.large_objects,
                })
                .collect(),
            restore_commands: restore_commands(&base, m),
        })
        .collect();
    Report {
        ok: true,
        label: manifests.first().and_then(|m| m.label.clone()),
        verified: false,
        backups,
    }
}

/// `backupctl --config '/etc/backupctl/backup.toml'` (no `--config` for the embedded
/// default).
fn base_command(cfg: &Config) -> String {
    let mut s = String::from("backupctl");
    if let Some(p) = cfg.config_arg() {
        s.push_str(" --config ");
        s.push_str(&shell_quote(&p.display().to_string()));
    }
    s
}

/// The commands that restore `m` (placeholders in capitals where the operator chooses).
pub fn restore_commands(base: &str, m: &Manifest) -> Vec<RestoreCommand> {
    let mut v = Vec::new();
    let id = shell_quote(&m.id);
    match m.kind {
        BackupKind::Logical => {
            for d in m.logical.iter().flat_map(|l| &l.databases) {
                let db = shell_quote(&d.name);
                let new = shell_quote(&format!("{}_restored", d.name));
                v.push(RestoreCommand {
                    what: format!(
                        "database {} into a new database {}_restored",
                        d.name, d.name
                    ),
                    command: format!(
                        "{base} restore --logical {id} --database {db} --dbname {new} --create"
                    ),
                });
                v.push(RestoreCommand {
                    what: format!(
                        "database {} in place (drops and recreates the objects in the backup)",
                        d.name
                    ),
                    command: format!(
                        "{base} restore --logical {id} --database {db} --dbname {db} --clean"
                    ),
                });
            }
            v.push(RestoreCommand {
                what: "roles and tablespaces".into(),
                command: format!("{base} restore --logical {id} --globals"),
            });
        }
        BackupKind::Physical => {
            v.push(RestoreCommand {
                what: "the whole cluster as it was at this backup's restore point".into(),
                command: format!(
                    "{base} restore --backup {id} --target-name {id} --pgdata NEW_PGDATA_DIR --start"
                ),
            });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["pre-migration", "v1.2_3", "a"] {
            assert!(validate_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "with space", "a/b", &"x".repeat(65)] {
            let e = validate_label(bad).unwrap_err();
            assert_eq!(crate::error::classify(&e).0, 2, "{bad}");
        }
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("app"), "app");
        assert_eq!(shell_quote("/etc/b.toml"), "/etc/b.toml");
        assert_eq!(shell_quote("my db"), "'my db'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
