//! The daemon's job kinds and the ONE place that maps a kind to the command that does
//! the work. The daemon never reimplements a command: a scheduled physical backup is
//! exactly `backupctl backup --kind physical` minus the printing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cli::KindArg;
use crate::commands::{archival, backup, partitions, retention, verify, Ctx};
use crate::manifest::{BackupKind, Catalog, Manifest};
use crate::partitions::report::Status as PartitionStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Physical,
    Logical,
    Verify,
    Retention,
    Partitions,
    Archive,
}

impl JobKind {
    /// Every kind, in the order `daemon --run-once` runs them: maintenance that changes
    /// the data first (partitions, archival), then the backups that capture it, then
    /// verification of those backups, and retention last (it keeps the newest verified).
    pub const ALL: [JobKind; 6] = [
        JobKind::Partitions,
        JobKind::Archive,
        JobKind::Physical,
        JobKind::Logical,
        JobKind::Verify,
        JobKind::Retention,
    ];

    /// The `[schedule]` key, the `job` label of metrics and alerts.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Physical => "physical",
            JobKind::Logical => "logical",
            JobKind::Verify => "verify",
            JobKind::Retention => "retention",
            JobKind::Partitions => "partitions",
            JobKind::Archive => "archive",
        }
    }

    /// The host-wide lock (`lock.rs`) the CLI takes for the same work, so a scheduled
    /// run and an on-demand one never overlap.
    pub fn lock_name(&self) -> &'static str {
        match self {
            JobKind::Physical => "backup-physical",
            JobKind::Logical => "backup-logical",
            JobKind::Verify => "verify",
            JobKind::Retention => "retention",
            JobKind::Partitions => "partitions",
            JobKind::Archive => "archive",
        }
    }

    /// What an operator reads in logs and `STATUS=`.
    pub fn describe(&self) -> &'static str {
        match self {
            JobKind::Physical => "physical backup",
            JobKind::Logical => "logical backup",
            JobKind::Verify => "verification",
            JobKind::Retention => "retention",
            JobKind::Partitions => "partition maintenance",
            JobKind::Archive => "archival",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a job (physical, logical, verify, retention, partitions, archive)")
            })
    }
}

/// What one successful run did, for logs, metrics, history and alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// One line: `backup 20261122T030000Z-physical, 1.2 GiB stored`.
    pub summary: String,
    /// Bytes the run stored in the repository (backups) or removed from it (retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Backups the run created (or verified, or deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup_ids: Vec<String>,
    /// `<backup id>: <what failed>` for each backup whose verification failed. The job
    /// itself may still have run to completion; each entry is alerted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verification_failures: Vec<String>,
}

impl JobReport {
    /// The report of a backup job.
    pub fn backup(m: &Manifest) -> JobReport {
        JobReport {
            summary: format!(
                "backup {}, {} stored ({} original)",
                m.id,
                crate::commands::status::human_bytes(m.stored_bytes()),
                crate::commands::status::human_bytes(m.original_bytes())
            ),
            bytes: Some(m.stored_bytes()),
            backup_ids: vec![m.id.clone()],
            verification_failures: vec![],
        }
    }
}

/// Whether the command takes its host-wide lock itself (then the runner only probes
/// it: taking it twice in one process would wait for itself). The backup kinds are
/// locked by their caller (`backup` or the runner).
pub fn locks_itself(kind: JobKind) -> bool {
    !matches!(kind, JobKind::Physical | JobKind::Logical)
}

/// Run one job of `kind` with the config in `ctx`. For the backup kinds the caller holds
/// the job lock; the others take theirs (see [`locks_itself`]).
pub async fn run(ctx: &Ctx, kind: JobKind) -> anyhow::Result<JobReport> {
    let cfg = &ctx.cfg;
    match kind {
        // Exactly `backup --kind physical|logical`: restore point, verification with
        // `verify.after_backup`, retention with `retention.after_backup`.
        JobKind::Physical | JobKind::Logical => {
            let arg = if kind == JobKind::Physical {
                KindArg::Physical
            } else {
                KindArg::Logical
            };
            let taken = backup::take(ctx, arg, None, &[], cfg.verify.after_backup).await?;
            let mut report = JobReport::backup(&taken.manifests[0]);
            if let Some(v) = &taken.verification {
                report.verification_failures = backup::verification_failures(v);
            }
            Ok(report)
        }
        // Exactly `verify --latest --wal`: the newest backup of each kind, WAL continuity.
        JobKind::Verify => {
            let repo = crate::repo::open(cfg).await?;
            let catalog = Catalog::load(repo.as_ref()).await?;
            let latest: Vec<Manifest> = [BackupKind::Physical, BackupKind::Logical]
                .iter()
                .filter_map(|k| catalog.of_kind(*k).last().cloned())
                .collect();
            let v = verify::verify_selected(ctx, &repo, &latest, true).await?;
            let mut failures = backup::verification_failures(&v);
            if let Some(w) = v.wal.as_ref().filter(|w| !w.ok) {
                failures.push(if w.gaps.is_empty() {
                    "WAL continuity: no recoverable window".to_string()
                } else {
                    format!("WAL continuity: gaps {}", w.gaps.join(", "))
                });
            }
            let ok = v.backups.len() - v.failed().iter().filter(|f| !f.starts_with("WAL")).count();
            Ok(JobReport {
                summary: format!(
                    "{} of {} backup(s) restored and checked{}",
                    ok,
                    v.backups.len(),
                    match &v.wal {
                        Some(w) if w.ok => ", WAL continuous",
                        Some(_) => ", WAL continuity BROKEN",
                        None => "",
                    }
                ),
                bytes: None,
                backup_ids: v.backups.iter().map(|r| r.id.clone()).collect(),
                verification_failures: failures,
            })
        }
        JobKind::Retention => {
            let r = retention::run(ctx, false).await?;
            let freed = r.freed.as_ref().map(|f| f.bytes).unwrap_or(0);
            Ok(JobReport {
                summary: format!(
                    "{} backup(s), {} incomplete backup(s) and {} WAL file(s) deleted, {} freed",
                    r.plan.delete.backups.len(),
                    r.plan.delete.incomplete.len(),
                    r.plan.delete.wal_files,
                    crate::commands::status::human_bytes(freed)
                ),
                bytes: Some(freed),
                backup_ids: r.plan.delete.backups.clone(),
                verification_failures: vec![],
            })
        }
        JobKind::Partitions => {
            let s = partitions::run(ctx, false).await?;
            s.outcome()?;
            let created = s
                .tables
                .iter()
                .flat_map(|t| &t.months)
                .filter(|m| m.status == PartitionStatus::Created)
                .count();
            Ok(JobReport {
                summary: format!(
                    "{} table(s) checked, {created} partition(s) created",
                    s.tables.len()
                ),
                ..Default::default()
            })
        }
        JobKind::Archive => {
            let s = archival::run(ctx, false).await?;
            s.outcome()?;
            let rows: i64 = s
                .tables
                .iter()
                .filter_map(|t| t.rows.as_ref())
                .map(|r| r.rows_moved)
                .sum();
            let parts: usize = s.tables.iter().map(|t| t.partitions_moved).sum();
            Ok(JobReport {
                summary: format!(
                    "{} table(s): {rows} row(s) and {parts} partition(s) archived",
                    s.tables.len()
                ),
                ..Default::default()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_schedule_keys() {
        let cfg = crate::config::ScheduleConfig {
            physical: Some("0 3 * * *".into()),
            logical: Some("0 3 * * *".into()),
            verify: Some("0 3 * * *".into()),
            retention: Some("0 3 * * *".into()),
            partitions: Some("0 3 * * *".into()),
            archive: Some("0 3 * * *".into()),
            ..Default::default()
        };
        let keys: Vec<&str> = cfg.entries().iter().map(|(k, _)| *k).collect();
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>().unwrap(), kind);
            assert!(
                keys.contains(&kind.as_str()),
                "{kind} is not a [schedule] key"
            );
        }
        assert!("nightly".parse::<JobKind>().is_err());
    }

    #[test]
    fn lock_names_are_the_cli_ones() {
        // `commands/backup.rs` takes "backup-physical"; the other commands take theirs.
        assert_eq!(JobKind::Physical.lock_name(), "backup-physical");
        assert_eq!(JobKind::Logical.lock_name(), "backup-logical");
        let mut names: Vec<_> = JobKind::ALL.iter().map(|k| k.lock_name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), JobKind::ALL.len());
    }
}
