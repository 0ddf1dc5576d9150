//! The whole retention plan: backups, backups without a manifest, backups with an
//! unreadable manifest (always kept), WAL, the exact keys a run deletes in the order it deletes them, and a proof that no kept backup loses a
//! restorable point. Pure: (repository listings, manifests, WAL inventory, policy, now).
//!
//! The proof: the recoverable windows of the kept backups (the same
//! [`crate::recovery::plan::windows`] restore and `list` use, with their timeline paths)
//! are computed on every known timeline before and after the planned WAL deletions; if
//! any differs, the plan is refused and nothing is deleted. It cannot differ while the
//! WAL rule is right; it is there so that a future bug fails loudly instead of
//! deleting a restore.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::{self, fmt_age, Action, BackupDecision};
use super::wal::{self, WalPlan};
use crate::config::RetentionConfig;
use crate::manifest::{BackupKind, Manifest, Unreadable};
use crate::recovery::inventory::WalInventory;
use crate::recovery::plan::{windows, Window};
use crate::repo::{layout, ObjectMeta};

/// What the plan is computed from.
pub struct Inputs<'a> {
    /// Complete backups (with a manifest), in any order.
    pub backups: &'a [Manifest],
    /// Backup ids without a manifest, with their newest object's time.
    pub incomplete: &'a [(String, Option<DateTime<Utc>>)],
    /// Backups whose manifest exists but cannot be used: always kept.
    pub unreadable: &'a [Unreadable],
    /// Listing of `backups/`.
    pub backup_objects: &'a [ObjectMeta],
    /// Listing of `wal/`, and the inventory built from it.
    pub wal_objects: &'a [ObjectMeta],
    pub inventory: &'a WalInventory,
    /// Backups a running restore or verification holds a lease on, with why
    /// (`recovery::lease::held`): kept whatever the policy says, with their WAL.
    pub leased: &'a [(String, String)],
    /// Backups of other repositories that read their WAL from this one.
    pub elsewhere: &'a Elsewhere,
}

/// With several repositories: the physical backups kept in the others, whose restores
/// read WAL from every repository that receives it. This repository keeps the WAL
/// they need as it keeps its own backups'.
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// Their complete physical backups.
    pub backups: Vec<Manifest>,
    /// Their backups whose manifest cannot be read (and may be physical).
    pub unreadable: Vec<String>,
    /// Why what they need is unknown (a repository could not be read): all WAL is
    /// kept.
    pub unknown: Option<String>,
}

/// A complete backup's verdict with what deleting it frees.
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    #[serde(flatten)]
    pub decision: BackupDecision,
    pub objects: usize,
    pub bytes: u64,
}

/// A backup without a manifest (failed, killed, or still running).
#[derive(Debug, Clone, Serialize)]
pub struct IncompleteEntry {
    pub id: String,
    pub newest_object: Option<DateTime<Utc>>,
    pub objects: usize,
    pub bytes: u64,
    pub action: Action,
    pub reason: String,
}

/// Everything a run deletes. `keys` is sorted, so a dry run and a real run compare exactly.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deletion {
    pub backups: Vec<String>,
    pub incomplete: Vec<String>,
    pub wal_files: usize,
    pub objects: usize,
    pub bytes: u64,
    pub keys: Vec<String>,
}

/// One deletion step, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Manifest first: the backup stops being complete before any of its data goes, so a
    /// crash leaves objects without a manifest (removed by the next run), never a
    /// manifest pointing at missing data.
    Backup {
        id: String,
        manifest: Option<String>,
        data: Vec<String>,
    },
    Incomplete {
        id: String,
        keys: Vec<String>,
    },
    Wal {
        keys: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub now: DateTime<Utc>,
    pub backups: Vec<BackupEntry>,
    pub incomplete: Vec<IncompleteEntry>,
    pub wal: WalPlan,
    /// Recoverable windows on the newest timeline once the plan is carried out.
    pub recoverable_windows: Vec<Window>,
    pub delete: Deletion,
    #[serde(skip)]
    pub steps: Vec<Step>,
}

/// Objects under `backups/` by backup id.
fn by_backup(objects: &[ObjectMeta]) -> HashMap<&str, Vec<&ObjectMeta>> {
    let mut out: HashMap<&str, Vec<&ObjectMeta>> = HashMap::new();
    for o in objects {
        if let Some(id) = layout::backup_id_of(&o.key) {
            out.entry(id).or_default().push(o);
        }
    }
    out
}

/// Compute the plan, or refuse (naming the timeline) if it would shrink a kept backup's
/// recoverable window.
/// A kept incremental backup keeps its parent, and so on to its full backup: deleting a
/// parent would leave every backup after it unrestorable.
fn keep_chains(decisions: &mut [BackupDecision], backups: &[Manifest]) {
    let parent_of: HashMap<&str, &str> = backups
        .iter()
        .filter_map(|m| Some((m.id.as_str(), m.parent()?)))
        .collect();
    let mut needed: Vec<(String, String)> = decisions
        .iter()
        .filter(|d| d.action == Action::Keep)
        .filter_map(|d| Some((parent_of.get(d.id.as_str())?.to_string(), d.id.clone())))
        .collect();
    while let Some((parent, child)) = needed.pop() {
        let Some(d) = decisions.iter_mut().find(|d| d.id == parent) else {
            continue;
        };
        let why = format!("parent of kept incremental backup {child}");
        if d.action != Action::Keep {
            d.action = Action::Keep;
            d.reasons.clear();
            d.reasons.push(why);
            if let Some(p) = parent_of.get(parent.as_str()) {
                needed.push((p.to_string(), parent.clone()));
            }
        } else if !d.reasons.contains(&why) {
            d.reasons.push(why);
        }
    }
}

pub fn plan(inputs: &Inputs, policy: &RetentionConfig, now: DateTime<Utc>) -> Result<Plan, String> {
    let wal_rule = policy.wal_rule()?;
    let mut decisions = policy::decide(inputs.backups, policy, now);
    for d in &mut decisions {
        for (_, why) in inputs.leased.iter().filter(|(id, _)| *id == d.id) {
            d.action = Action::Keep;
            d.reasons.push(why.clone());
        }
    }
    keep_chains(&mut decisions, inputs.backups);
    let objects = by_backup(inputs.backup_objects);
    let objects_of = |id: &str| objects.get(id).cloned().unwrap_or_default();
    let mut steps = vec![];
    let mut delete = Deletion::default();
    let mut entries = vec![];
    for d in decisions {
        let objs = objects_of(&d.id);
        if d.action == Action::Delete {
            let manifest = layout::manifest_key(&d.id);
            let has_manifest = objs.iter().any(|o| o.key == manifest);
            steps.push(Step::Backup {
                id: d.id.clone(),
                manifest: has_manifest.then_some(manifest.clone()),
                data: objs
                    .iter()
                    .filter(|o| o.key != manifest)
                    .map(|o| o.key.clone())
                    .collect(),
            });
            delete.backups.push(d.id.clone());
            delete.objects += objs.len();
            delete.bytes += objs.iter().map(|o| o.size).sum::<u64>();
            delete.keys.extend(objs.iter().map(|o| o.key.clone()));
        }
        entries.push(BackupEntry {
            objects: objs.len(),
            bytes: objs.iter().map(|o| o.size).sum(),
            decision: d,
        });
    }

    // A backup whose manifest cannot be used is never deleted automatically: nothing
    // proves what it is or that anything else replaces it (see `Unreadable`).
    for u in inputs.unreadable {
        let objs = objects_of(&u.id);
        let newest = objs.iter().filter_map(|o| o.last_modified).max();
        let time = u.start_time.or(newest).unwrap_or(DateTime::UNIX_EPOCH);
        entries.push(BackupEntry {
            objects: objs.len(),
            bytes: objs.iter().map(|o| o.size).sum(),
            decision: BackupDecision {
                id: u.id.clone(),
                // Unknown kind: treated as physical, the kind whose WAL is held.
                kind: u.kind.unwrap_or(BackupKind::Physical),
                label: None,
                start_time: time,
                stop_time: time,
                verified: None,
                rule: None,
                action: Action::Keep,
                reasons: vec![format!(
                    "manifest unreadable: never deleted automatically ({})",
                    u.reason
                )],
            },
        });
    }
    entries.sort_by(|a, b| {
        let (a, b) = (&a.decision, &b.decision);
        (a.start_time, a.stop_time, &a.id).cmp(&(b.start_time, b.stop_time, &b.id))
    });

    let mut incomplete = vec![];
    let mut sorted_incomplete: Vec<_> = inputs.incomplete.iter().collect();
    sorted_incomplete.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let limit = policy.incomplete_after;
    let limit_s = crate::text::config_duration(limit);
    for (id, newest) in sorted_incomplete {
        let objs = objects_of(id);
        let deleting = layout::backup_object_key(id, layout::DELETING);
        let (action, reason) = match newest {
            _ if objs.iter().any(|o| o.key == deleting) => (
                Action::Delete,
                "no manifest, marked for deletion by a retention run that did not finish: \
                 deleting the rest"
                    .to_string(),
            ),
            None => (
                Action::Keep,
                "no manifest and no object time: left alone".to_string(),
            ),
            Some(t) => {
                let age = now - *t;
                if age.to_std().is_ok_and(|a| a > limit) {
                    (
                        Action::Delete,
                        format!("no manifest, newest object {} old (retention.incomplete_after = {limit_s}): a failed or killed backup", fmt_age(age)),
                    )
                } else {
                    (
                        Action::Keep,
                        format!("no manifest, newest object {} old: may still be running (retention.incomplete_after = {limit_s})", fmt_age(age.max(chrono::Duration::zero()))),
                    )
                }
            }
        };
        if action == Action::Delete {
            let keys: Vec<String> = objs.iter().map(|o| o.key.clone()).collect();
            delete.incomplete.push(id.clone());
            delete.objects += keys.len();
            delete.bytes += objs.iter().map(|o| o.size).sum::<u64>();
            delete.keys.extend(keys.iter().cloned());
            steps.push(Step::Incomplete {
                id: id.clone(),
                keys,
            });
        }
        incomplete.push(IncompleteEntry {
            id: id.clone(),
            newest_object: *newest,
            objects: objs.len(),
            bytes: objs.iter().map(|o| o.size).sum(),
            action,
            reason,
        });
    }

    let kept_ids: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.decision.action == Action::Keep)
        .map(|e| e.decision.id.as_str())
        .collect();
    let kept: Vec<&Manifest> = inputs
        .backups
        .iter()
        .filter(|m| kept_ids.contains(m.id.as_str()))
        .collect();
    let kept_physical: Vec<&Manifest> = kept
        .iter()
        .copied()
        .filter(|m| m.kind == BackupKind::Physical)
        .collect();
    let seg_size = inputs.inventory.seg_size;
    let unreadable_physical: Vec<&str> = inputs
        .unreadable
        .iter()
        .filter(|u| u.kind != Some(BackupKind::Logical))
        .map(|u| u.id.as_str())
        .collect();
    // The WAL this repository keeps serves other repositories' backups too.
    let mut wal_for: Vec<&Manifest> = kept_physical.clone();
    wal_for.extend(&inputs.elsewhere.backups);
    let mut unreadable_physical = unreadable_physical;
    unreadable_physical.extend(inputs.elsewhere.unreadable.iter().map(String::as_str));
    let wal = wal::decide(
        inputs.wal_objects,
        seg_size,
        &wal_for,
        &unreadable_physical,
        inputs.elsewhere.unknown.as_deref(),
        wal_rule,
        now,
    );
    let doomed: BTreeSet<&str> = wal.delete.iter().map(String::as_str).collect();
    for o in inputs.wal_objects {
        if doomed.contains(o.key.as_str()) {
            delete.objects += 1;
            delete.bytes += o.size;
            delete.wal_files += 1;
        }
    }
    delete.keys.extend(wal.delete.iter().cloned());
    if !wal.delete.is_empty() {
        steps.push(Step::Wal {
            keys: wal.delete.clone(),
        });
    }
    delete.keys.sort();

    // The proof (see the module doc).
    let remaining: Vec<ObjectMeta> = inputs
        .wal_objects
        .iter()
        .filter(|o| !doomed.contains(o.key.as_str()))
        .cloned()
        .collect();
    let after =
        WalInventory::from_listing(&remaining, seg_size, inputs.inventory.histories.clone());
    let kept_owned: Vec<Manifest> = kept.iter().map(|m| (*m).clone()).collect();
    let mut served = kept_owned.clone();
    served.extend(inputs.elsewhere.backups.iter().cloned());
    prove_windows_unchanged(&served, inputs.inventory, &after)?;
    let latest = inputs.inventory.current_timeline().or_else(|| {
        kept_physical
            .iter()
            .filter_map(|m| m.physical.as_ref().map(|p| p.timeline))
            .max()
    });
    let recoverable_windows = latest
        .map(|t| windows(&kept_owned, &after, t))
        .unwrap_or_default();

    Ok(Plan {
        now,
        backups: entries,
        incomplete,
        wal,
        recoverable_windows,
        delete,
        steps,
    })
}

/// The recoverable windows of `kept` must be the same with the WAL of `before` and of
/// `after`, on every timeline either knows or a kept backup lies on.
pub fn prove_windows_unchanged(
    kept: &[Manifest],
    before: &WalInventory,
    after: &WalInventory,
) -> Result<(), String> {
    let mut timelines: BTreeSet<u32> = before.histories.keys().copied().collect();
    timelines.extend(before.segments.keys().copied());
    timelines.extend(
        kept.iter()
            .filter_map(|m| m.physical.as_ref().map(|p| p.timeline)),
    );
    for &tli in &timelines {
        let was = windows(kept, before, tli);
        let will = windows(kept, after, tli);
        if was != will {
            return Err(format!(
                "refusing to delete: the planned WAL deletions would change the recoverable windows of kept backups on timeline {tli} (before: {was:?}; after: {will:?}); nothing was deleted — please report this as a bug"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
