//! `backupctl retention [--dry-run]`: delete the backups and WAL the policy no longer keeps.
//!
//! The decision is [`crate::retention::plan`] (pure); this module loads its inputs, holds
//! the host-wide `retention` job lock so two runs never overlap, and carries the plan out
//! in its order: per backup the manifest first, then its data (a crash leaves objects
//! without a manifest, which the next run removes, never a manifest pointing at deleted
//! data); backups before WAL (a crash never leaves a listed backup without its WAL); then
//! backups without a manifest, then unfinished uploads. A dry run computes the same plan
//! and deletes nothing, so its `delete.keys` is exactly what the real run deletes.
//!
//! `backup` (with `retention.after_backup`) and the daemon call [`run`].

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::RetentionConfig;
use crate::config::{Config, StoredKind};
use crate::jobs::JobKind;
use crate::lock::Wait;
use crate::manifest::Catalog;
use crate::recovery::inventory::WalInventory;
use crate::recovery::lease;
use crate::repo::{
    self, identity::RepoIdentity, layout, leftover, PutOptions, Repository, RepositoryExt,
};
use crate::retention::plan::{self, Elsewhere, Inputs, Plan, Step};
use crate::retention::policy::describe_rule;

/// The policy in force, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub physical: String,
    pub logical: String,
    pub labels: BTreeMap<String, String>,
    pub wal: String,
    pub incomplete_after: String,
}

impl PolicySummary {
    fn of(p: &RetentionConfig) -> PolicySummary {
        PolicySummary {
            physical: describe_rule(&p.physical),
            logical: describe_rule(&p.logical),
            labels: p
                .labels
                .iter()
                .map(|(l, r)| (l.clone(), describe_rule(r)))
                .collect(),
            wal: p.wal.clone(),
            incomplete_after: crate::text::config_duration(p.incomplete_after),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Freed {
    pub objects: usize,
    pub bytes: u64,
}

/// What a retention run decided and did. In a dry run `freed` and
/// `upload_leftovers_removed` are absent; `delete` is what a real run would delete.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub repository: String,
    pub dry_run: bool,
    pub policy: PolicySummary,
    #[serde(flatten)]
    pub plan: Plan,
    pub freed: Option<Freed>,
    pub upload_leftovers_removed: Option<usize>,
    /// Exports of archived data: what the `[retention.exports]` rule deletes, and
    /// exports without a manifest (killed before it) older than `incomplete_after`.
    pub exports: ExportsPlan,
}

/// Retention of exports (separate from backups: no backup or WAL depends on them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportsPlan {
    /// `keep every export` or `keep exports made within …`.
    pub rule: String,
    pub kept: usize,
    /// Ids of complete exports the rule no longer keeps.
    pub delete: Vec<String>,
    /// Ids of exports without a manifest older than `incomplete_after`.
    pub unfinished: Vec<String>,
    /// Exports whose manifest cannot be read: never deleted (`id: reason`).
    pub unreadable: Vec<String>,
    /// The keys deleted (or that a real run deletes).
    pub keys: Vec<String>,
}

/// How long a retention run waits for a running one.
pub const LOCK_WAIT: Duration = Duration::from_secs(3600);

/// Apply the configured policy to the configured repository (the job lock is held for
/// the whole run, dry or not, so a dry run never reports a half-done real one).
pub async fn run(cfg: &Config, dry_run: bool, wait: Wait) -> anyhow::Result<RetentionReport> {
    let _lock = JobKind::Retention.lock(&cfg.backup.state_dir, wait).await?;
    let repo = repo::open(cfg).await?;
    // Leftovers of this host's killed uploads go now, not only after `incomplete_after`.
    let (dead, _) = if dry_run {
        (0, 0)
    } else {
        leftover::remove_dead_writers(repo.as_ref(), "").await
    };
    let elsewhere = backups_elsewhere(cfg).await;
    let mut report = execute(
        repo.as_ref(),
        &cfg.retention,
        dry_run,
        Utc::now(),
        &elsewhere,
    )
    .await?;
    if let Some(n) = report.upload_leftovers_removed.as_mut() {
        *n += dead;
    }
    Ok(report)
}

/// With several repositories, when this one receives WAL: the physical backups of
/// the others, which read their WAL from it. One that cannot be read makes what they
/// need unknown, and all WAL is kept.
async fn backups_elsewhere(cfg: &Config) -> Elsewhere {
    let mut e = Elsewhere::default();
    if !cfg.repository.kinds.contains(&StoredKind::Wal) {
        return e;
    }
    for r in cfg.other_repositories() {
        if !r.kinds.contains(&StoredKind::Physical) {
            continue;
        }
        let loaded = async {
            let repo = repo::open(&cfg.with_repository(&r)).await?;
            Catalog::load(repo.as_ref()).await
        }
        .await;
        match loaded {
            Ok(c) => {
                e.backups.extend(
                    c.complete
                        .into_iter()
                        .filter(|m| m.kind == crate::manifest::BackupKind::Physical),
                );
                e.unreadable.extend(
                    c.unreadable
                        .into_iter()
                        .filter(|u| u.kind != Some(crate::manifest::BackupKind::Logical))
                        .map(|u| format!("{} (in repository {})", u.id, r.name)),
                );
            }
            Err(err) => {
                tracing::warn!(repository = %r.name, "cannot read repository {}: {err:#}; all WAL in {} is kept", r.name, cfg.repository.name);
                e.unknown.get_or_insert(format!(
                    "repository {} could not be read, so the WAL its physical backups need is unknown",
                    r.name
                ));
            }
        }
    }
    e
}

/// Plan against `repo` at `now` and, unless `dry_run`, carry the plan out.
/// `elsewhere`: backups of other repositories that read their WAL from this one.
pub async fn execute(
    repo: &dyn Repository,
    policy: &RetentionConfig,
    dry_run: bool,
    now: DateTime<Utc>,
    elsewhere: &Elsewhere,
) -> anyhow::Result<RetentionReport> {
    let recorded = RepoIdentity::load(repo).await?.map(|i| i.wal_segment_size);
    let backup_objects = repo
        .list(layout::BACKUPS_PREFIX)
        .await
        .context("list backups")?;
    let catalog = Catalog::load_from(repo, &backup_objects).await?;
    let seg_size = catalog.wal_segment_size(recorded)?;
    let wal_objects = repo
        .list(layout::WAL_PREFIX)
        .await
        .context("list archived WAL")?;
    let inventory = WalInventory::load_from(repo, &wal_objects, seg_size).await?;
    let leases = lease::load_all(repo).await?;
    let leased = lease::held(&leases, now);
    let inputs = Inputs {
        backups: &catalog.complete,
        incomplete: &catalog.incomplete,
        unreadable: &catalog.unreadable,
        backup_objects: &backup_objects,
        wal_objects: &wal_objects,
        inventory: &inventory,
        leased: &leased,
        elsewhere,
    };
    let plan = plan::plan(&inputs, policy, now).map_err(|e| anyhow::anyhow!(e))?;
    let exports = plan_exports(repo, policy, now).await?;
    let mut report = RetentionReport {
        repository: repo.describe(),
        dry_run,
        policy: PolicySummary::of(policy),
        plan,
        freed: None,
        upload_leftovers_removed: None,
        exports,
    };
    if dry_run {
        return Ok(report);
    }
    delete_exports(repo, &report.exports).await?;
    for step in &report.plan.steps {
        match step {
            Step::Backup { id, manifest, data } => {
                // Marked first, so that a run killed once the manifest is gone leaves
                // something the next run deletes at once (see `layout::DELETING`).
                let marker = layout::backup_object_key(id, layout::DELETING);
                if manifest.is_some() {
                    let note = format!(
                        "retention run of pid {} on {} at {}\n",
                        std::process::id(),
                        crate::host::local_hostname(),
                        chrono::Utc::now().to_rfc3339()
                    );
                    repo.put_bytes(&marker, note.into_bytes(), PutOptions::default())
                        .await
                        .with_context(|| format!("mark backup {id} for deletion"))?;
                }
                if let Some(m) = manifest {
                    repo.delete(m)
                        .await
                        .with_context(|| format!("delete the manifest of backup {id}"))?;
                }
                crate::failpoint::point("retention.mid-delete");
                repo.delete_many(data)
                    .await
                    .with_context(|| format!("delete the data of backup {id} (its manifest is already gone; the next run finishes it)"))?;
                if manifest.is_some() {
                    repo.delete(&marker)
                        .await
                        .with_context(|| format!("delete the deletion mark of backup {id}"))?;
                }
                tracing::info!(backup = %id, objects = data.len() + manifest.iter().count(), "retention deleted backup");
            }
            Step::Incomplete { id, keys } => {
                repo.delete_many(keys)
                    .await
                    .with_context(|| format!("delete the objects of incomplete backup {id}"))?;
                tracing::info!(backup = %id, objects = keys.len(), "retention deleted incomplete backup");
            }
            Step::Wal { keys } => {
                repo.delete_many(keys)
                    .await
                    .context("delete WAL no kept backup needs")?;
                tracing::info!(files = keys.len(), "retention deleted WAL");
            }
        }
    }
    let expired = lease::expired(&leases, now);
    if !expired.is_empty() {
        repo.delete_many(&expired)
            .await
            .context("remove expired leases")?;
    }
    report.freed = Some(Freed {
        objects: report.plan.delete.objects,
        bytes: report.plan.delete.bytes,
    });
    let leftovers = repo
        .cleanup_incomplete(policy.incomplete_after)
        .await
        .context("remove unfinished uploads")?;
    report.upload_leftovers_removed = Some(leftovers);
    Ok(report)
}

/// Which exports go: those the `[retention.exports]` rule no longer keeps, and
/// unfinished ones (no manifest) older than `incomplete_after`, judged by the time in
/// their id. An export whose manifest cannot be read is kept and reported.
async fn plan_exports(
    repo: &dyn Repository,
    policy: &RetentionConfig,
    now: DateTime<Utc>,
) -> anyhow::Result<ExportsPlan> {
    use crate::archival::export::{valid_id, ExportManifest};
    let keys = repo
        .list_keys(layout::EXPORTS_PREFIX)
        .await
        .context("list exports")?;
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in keys {
        if let Some(id) = layout::export_id_of(&k) {
            by_id.entry(id.to_string()).or_default().push(k.clone());
        }
    }
    let mut out = ExportsPlan {
        rule: match policy.exports.keep_within {
            None => "keep every export".into(),
            Some(d) => format!(
                "keep exports made within {}",
                crate::text::config_duration(d)
            ),
        },
        ..ExportsPlan::default()
    };
    for (id, keys) in by_id {
        let manifest = layout::export_manifest_key(&id);
        if !keys.contains(&manifest) {
            let started = id
                .get(..16)
                .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ").ok())
                .map(|t| t.and_utc());
            let old = started.is_some_and(|t| {
                now.signed_duration_since(t).to_std().unwrap_or_default() > policy.incomplete_after
            });
            if old && valid_id(&id) {
                out.unfinished.push(id);
                out.keys.extend(keys);
            }
            continue;
        }
        let m = match ExportManifest::load(repo, &id).await {
            Ok(m) => m,
            Err(e) => {
                out.unreadable.push(format!("{id}: {e:#}"));
                continue;
            }
        };
        let expired = policy.exports.keep_within.is_some_and(|d| {
            now.signed_duration_since(m.created)
                .to_std()
                .unwrap_or_default()
                > d
        });
        if expired {
            out.delete.push(id);
            // The manifest first: a run killed halfway leaves an unfinished export.
            out.keys.push(manifest.clone());
            out.keys.extend(keys.into_iter().filter(|k| *k != manifest));
        } else {
            out.kept += 1;
        }
    }
    Ok(out)
}

async fn delete_exports(repo: &dyn Repository, plan: &ExportsPlan) -> anyhow::Result<()> {
    for id in plan.delete.iter().chain(&plan.unfinished) {
        let manifest = layout::export_manifest_key(id);
        let prefix = format!("{}{id}/", layout::EXPORTS_PREFIX);
        if plan.keys.contains(&manifest) {
            repo.delete(&manifest)
                .await
                .with_context(|| format!("delete the manifest of export {id}"))?;
        }
        let data: Vec<String> = plan
            .keys
            .iter()
            .filter(|k| k.starts_with(&prefix) && **k != manifest)
            .cloned()
            .collect();
        repo.delete_many(&data)
            .await
            .with_context(|| format!("delete the objects of export {id}"))?;
        tracing::info!(export = %id, "retention deleted export");
    }
    Ok(())
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
