//! The ONE place that maps a job kind to the operation that does the work. The daemon
//! never reimplements an operation: a scheduled physical backup is exactly `backupctl
//! backup --kind physical` minus the printing. Every operation takes its own job lock;
//! the daemon asks it not to wait ([`Wait::No`]), so a run that finds the lock held
//! fails with [`crate::error::LockHeld`] and the runner skips it.

use crate::config::Config;
use crate::jobs::{JobKind, JobReport};
use crate::lock::Wait;
use crate::manifest::{BackupKind, Catalog, Manifest};
use crate::ops::backup::{self, BackupKindSel};
use crate::ops::{archival, partitions, retention, verify};
use crate::partitions::report::Status as PartitionStatus;

/// Run one job of `kind` with the config in `cfg`, not waiting for a lock another run
/// holds (that is a [`crate::error::LockHeld`] error).
pub async fn run(cfg: &Config, kind: JobKind) -> anyhow::Result<JobReport> {
    match kind {
        // Exactly `backup --kind physical|logical`: restore point, verification with
        // `verify.after_backup`, retention with `retention.after_backup`.
        JobKind::Physical | JobKind::Incremental | JobKind::Logical => {
            let sel = if kind == JobKind::Logical {
                BackupKindSel::Logical
            } else {
                BackupKindSel::Physical
            };
            let incremental =
                (kind == JobKind::Incremental).then_some(backup::physical::ParentChoice::Newest);
            let taken = backup::take_locked(
                cfg,
                sel,
                incremental.as_ref(),
                None,
                &[],
                cfg.verify.after_backup,
                Wait::No,
            )
            .await?;
            let mut report = JobReport::backup(&taken.manifests[0]);
            if let Some(v) = &taken.verification {
                report.verification_failures = backup::verification_failures(v);
            }
            Ok(report)
        }
        // Exactly `verify --latest --wal`: the newest backup of each kind, WAL continuity
        // and the content of every archived WAL object not checked before.
        JobKind::Verify => {
            let repo = crate::repo::open(cfg).await?;
            let catalog = Catalog::load(repo.as_ref()).await?;
            let latest: Vec<Manifest> = [BackupKind::Physical, BackupKind::Logical]
                .iter()
                .filter_map(|k| catalog.of_kind(*k).last().cloned())
                .collect();
            if latest.is_empty() {
                // A new installation before its first backup: nothing failed.
                return Ok(JobReport {
                    summary: format!(
                        "nothing to verify yet: no complete backup in {}",
                        repo.describe()
                    ),
                    ..Default::default()
                });
            }
            // With several repositories, each one's copy and each one's WAL.
            let v = if cfg.several_repositories() {
                let req = verify::VerifyRequest {
                    latest: true,
                    wal: true,
                    ..Default::default()
                };
                verify::run_with(cfg, &req, Wait::No).await?
            } else {
                verify::verify_selected(cfg, &repo, &latest, true, Wait::No).await?
            };
            let mut failures = backup::verification_failures(&v);
            for w in v.wal_reports() {
                let at = w
                    .repository
                    .as_ref()
                    .map(|r| format!(" in repository {r}"))
                    .unwrap_or_default();
                if !w.gaps.is_empty() {
                    failures.push(format!("WAL continuity{at}: gaps {}", w.gaps.join(", ")));
                } else if w.recoverable_windows.is_empty() {
                    failures.push(format!("WAL continuity{at}: no recoverable window"));
                }
                failures.extend(w.content.failures.iter().map(|f| format!("{f}{at}")));
            }
            failures.extend(
                v.unreadable_repositories
                    .iter()
                    .map(|r| format!("repository {r}")),
            );
            let ok = v
                .backups
                .iter()
                .filter(|r| r.verification.outcome == crate::manifest::Outcome::Ok)
                .count();
            Ok(JobReport {
                summary: format!(
                    "{} of {} backup(s) restored and checked{}",
                    ok,
                    v.backups.len(),
                    {
                        let wal: Vec<_> = v.wal_reports().collect();
                        if wal.is_empty() {
                            ""
                        } else if wal.iter().all(|w| w.ok) {
                            ", WAL continuous and every archived object intact"
                        } else if wal.iter().any(|w| !w.content.failures.is_empty()) {
                            ", archived WAL DAMAGED"
                        } else {
                            ", WAL continuity BROKEN"
                        }
                    }
                ),
                bytes: None,
                backup_ids: v.backups.iter().map(|r| r.id.clone()).collect(),
                verification_failures: failures,
            })
        }
        // Each repository applies the policy to what it holds.
        JobKind::Retention => {
            let mut parts = Vec::new();
            let (mut freed, mut ids) = (0, Vec::new());
            for repository in cfg.all_repositories() {
                let c = cfg.with_repository(&repository);
                let r = match retention::run(&c, false, Wait::No).await {
                    Ok(r) => r,
                    Err(e) if !repository.required => {
                        tracing::warn!(repository = %repository.name, "retention in repository {} (required = false) failed: {e:#}", repository.name);
                        parts.push(format!("{}: FAILED ({e})", repository.name));
                        continue;
                    }
                    Err(e) => return Err(e.context(format!("repository {}", repository.name))),
                };
                let f = r.freed.as_ref().map(|f| f.bytes).unwrap_or(0);
                let part = format!(
                    "{} backup(s), {} incomplete backup(s) and {} WAL file(s) deleted, {} freed",
                    r.plan.delete.backups.len(),
                    r.plan.delete.incomplete.len(),
                    r.plan.delete.wal_files,
                    crate::text::human_bytes(f)
                );
                parts.push(if cfg.several_repositories() {
                    format!("{}: {part}", repository.name)
                } else {
                    part
                });
                freed += f;
                ids.extend(r.plan.delete.backups);
            }
            Ok(JobReport {
                summary: parts.join("; "),
                bytes: Some(freed),
                backup_ids: ids,
                verification_failures: vec![],
            })
        }
        JobKind::Partitions => {
            let s = partitions::run(cfg, false, Wait::No).await?;
            if let Err(e) = s.outcome() {
                return Err(with_causes(e, &s.causes(), s.operator_only()));
            }
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
            let s = archival::run(cfg, false, Wait::No).await?;
            if let Err(e) = s.outcome() {
                return Err(with_causes(e, &s.causes(), s.operator_only()));
            }
            let rows: i64 = s
                .tables
                .iter()
                .filter_map(|t| t.rows.as_ref())
                .map(|r| r.rows_moved)
                .sum();
            let parts: usize = s.tables.iter().map(|t| t.partitions_moved).sum();
            let exported: Vec<_> = s
                .tables
                .iter()
                .filter_map(|t| t.exports.as_ref())
                .flat_map(|x| &x.items)
                .collect();
            let exports = if exported.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} export(s) of {} row(s) to the repository",
                    exported.len(),
                    exported.iter().map(|i| i.rows).sum::<i64>()
                )
            };
            Ok(JobReport {
                summary: format!(
                    "{} table(s): {rows} row(s) and {parts} partition(s) archived{exports}",
                    s.tables.len()
                ),
                ..Default::default()
            })
        }
    }
}

/// The CLI's outcome error points at the report it printed; the daemon prints none, so
/// its error carries the causes themselves. Problems only an operator can fix (refused
/// policies, blocked months) become a refusal, which the runner does not retry.
fn with_causes(e: anyhow::Error, causes: &[String], operator_only: bool) -> anyhow::Error {
    let head = e.to_string();
    let head = head.trim_end_matches("; see the report above");
    let message = if causes.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {}", causes.join(" | "))
    };
    if operator_only {
        crate::error::UserError::new(message).into()
    } else {
        crate::error::Reported::new(message).into()
    }
}
