//! The daemon's job kinds and the ONE place that maps a kind to the command that does
//! the work. The daemon never reimplements a command: a scheduled physical backup is
//! exactly `backupctl backup --kind physical` minus the printing.
//!
//! Kinds whose command has not landed yet answer `not_implemented`, and a schedule that
//! names one is refused at start-up (see [`JobKind::implemented`]), so the daemon never
//! pretends to run a job it cannot run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::commands::{backup_physical, not_implemented, Ctx};
use crate::manifest::Manifest;

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

    /// Whether [`run`] can run this kind in this build.
    // TODO(merge): flip each kind to true together with its arm in `run`.
    pub fn implemented(&self) -> bool {
        matches!(self, JobKind::Physical)
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

/// Run one job of `kind` with the config in `ctx`. The caller holds the job lock.
pub async fn run(ctx: &Ctx, kind: JobKind) -> anyhow::Result<JobReport> {
    match kind {
        JobKind::Physical => {
            // TODO(merge): with verify.after_backup, verify this backup here (as
            // `backup --verify` does) and put failures in `verification_failures`;
            // with retention.after_backup, apply retention after a success.
            let m = backup_physical::run(ctx, None).await?;
            Ok(JobReport::backup(&m))
        }
        // TODO(merge): backup_logical::run(ctx, None, &ctx.cfg.logical.databases) → JobReport::backup.
        JobKind::Logical => Err(not_implemented("backup --kind logical")),
        // TODO(merge): verify the backups `backupctl verify --latest --wal` would; one entry in
        // `verification_failures` per failed backup (the job fails too when any failed).
        JobKind::Verify => Err(not_implemented("verify")),
        // TODO(merge): retention::run(ctx, false) → bytes removed, ids deleted.
        JobKind::Retention => Err(not_implemented("retention")),
        // TODO(merge): partitions::run(ctx, false).
        JobKind::Partitions => Err(not_implemented("partitions")),
        // TODO(merge): archival::run(ctx, false).
        JobKind::Archive => Err(not_implemented("archive")),
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
