//! What a job is: its kind, its identity as a lock, its report and its history. The one
//! definition shared by the CLI (an on-demand `backup` takes the same lock as the
//! scheduled one), the operations (each takes its own lock) and the daemon (schedules,
//! metrics, alerts, history).

pub mod history;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::lock::{self, JobLock, Wait};
use crate::manifest::Manifest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Physical,
    /// An incremental physical backup (`[schedule] incremental`).
    Incremental,
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
    pub const ALL: [JobKind; 7] = [
        JobKind::Partitions,
        JobKind::Archive,
        JobKind::Physical,
        JobKind::Incremental,
        JobKind::Logical,
        JobKind::Verify,
        JobKind::Retention,
    ];

    /// The `[schedule]` key, the `job` label of metrics and alerts.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Physical => "physical",
            JobKind::Incremental => "incremental",
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
            // One physical backup at a time, full or incremental.
            JobKind::Physical | JobKind::Incremental => "backup-physical",
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
            JobKind::Incremental => "incremental backup",
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
                format!("{s:?} is not a job (physical, incremental, logical, verify, retention, partitions, archive)")
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
                crate::text::human_bytes(m.stored_bytes()),
                crate::text::human_bytes(m.original_bytes())
            ),
            bytes: Some(m.stored_bytes()),
            backup_ids: vec![m.id.clone()],
            verification_failures: vec![],
        }
    }
}

impl JobKind {
    /// Take this job's host-wide lock (`lock.rs`): the CLI and the daemon's runs of the
    /// same job never overlap. With [`Wait::No`] a held lock is a typed
    /// [`crate::error::LockHeld`] error, which the daemon reports as a skipped run.
    pub async fn lock(self, state_dir: &Path, wait: Wait) -> anyhow::Result<JobLock> {
        lock::acquire_async(state_dir, self.lock_name(), wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_schedule_keys() {
        let cfg = crate::config::ScheduleConfig {
            physical: Some("0 3 * * *".into()),
            incremental: Some("0 3 * * *".into()),
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
        // The lock file names are on disk on running hosts: they must not change.
        assert_eq!(JobKind::Physical.lock_name(), "backup-physical");
        assert_eq!(JobKind::Logical.lock_name(), "backup-logical");
        // Full and incremental physical backups never run at once.
        assert_eq!(JobKind::Incremental.lock_name(), "backup-physical");
        let mut names: Vec<_> = JobKind::ALL.iter().map(|k| k.lock_name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), JobKind::ALL.len() - 1);
    }
}
