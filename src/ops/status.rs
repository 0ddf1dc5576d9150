//! What the repository holds, in one load: identity, backups, WAL, recoverable windows
//! and gaps. Shared by `list`, `info` (and the daemon's metrics).

use serde::Serialize;

use crate::manifest::{BackupKind, Catalog};
use crate::pg::wal::Segment;
use crate::recovery::inventory::{Gap, WalInventory};
use crate::recovery::plan::{self, Window};
use crate::repo::identity::RepoIdentity;
use crate::repo::Repository;

pub struct RepoStatus {
    pub identity: Option<RepoIdentity>,
    pub catalog: Catalog,
    pub inventory: WalInventory,
    pub timeline: Option<u32>,
    pub windows: Vec<Window>,
    pub gaps: Vec<Gap>,
}

#[derive(Debug, Serialize)]
pub struct WalSummary {
    pub segments: usize,
    pub timelines: Vec<u32>,
    pub stored_bytes: u64,
    pub newest_segment: Option<String>,
    pub newest_archived_at: Option<String>,
    /// Every timeline the repository knows, with what created it.
    pub timeline_history: Vec<TimelineLine>,
}

/// One timeline: where it branched (from its history file) and its newest WAL.
#[derive(Debug, Serialize)]
pub struct TimelineLine {
    pub timeline: u32,
    /// The timeline it branched from, and where (absent for timeline 1).
    pub parent: Option<u32>,
    pub switch_lsn: Option<String>,
    /// The history file's reason, e.g. `no recovery target specified` or `before
    /// 2026-11-22 10:00:00+00`.
    pub reason: Option<String>,
    /// When its history file was archived: when the timeline began.
    pub created_at: Option<String>,
    pub segments: usize,
    pub newest_segment: Option<String>,
    pub newest_archived_at: Option<String>,
    /// The timeline "latest" restores follow: the one archived last.
    pub current: bool,
}

impl RepoStatus {
    pub async fn load(repo: &dyn Repository) -> anyhow::Result<RepoStatus> {
        let catalog = Catalog::load(repo).await?;
        Self::load_with(repo, catalog).await
    }

    /// The WAL of `repo` judged against the backups of `catalog` (a repository that
    /// holds WAL for backups kept in others).
    pub async fn load_with(repo: &dyn Repository, catalog: Catalog) -> anyhow::Result<RepoStatus> {
        let identity = RepoIdentity::load(repo).await?;
        let seg = catalog.wal_segment_size(identity.as_ref().map(|i| i.wal_segment_size))?;
        let inventory = WalInventory::load(repo, seg).await?;
        let timeline = inventory.current_timeline().or_else(|| {
            catalog
                .of_kind(BackupKind::Physical)
                .filter_map(|m| m.physical.as_ref().map(|p| p.timeline))
                .max()
        });
        let (windows, gaps) = match timeline {
            Some(tli) => {
                let windows = plan::windows(&catalog.complete, &inventory, tli);
                let path = inventory.path_to(tli);
                // From the oldest physical backup's start to the newest segment.
                let from = catalog
                    .of_kind(BackupKind::Physical)
                    .filter_map(|m| m.physical.as_ref())
                    .map(|p| p.start_lsn.0 / seg)
                    .min();
                let gaps = match (from, inventory.newest_on_path(&path)) {
                    (Some(from), Some((_, to))) if to >= from => inventory.gaps(&path, from, to),
                    _ => vec![],
                };
                (windows, gaps)
            }
            None => (vec![], vec![]),
        };
        Ok(RepoStatus {
            identity,
            catalog,
            inventory,
            timeline,
            windows,
            gaps,
        })
    }

    pub fn wal_summary(&self) -> WalSummary {
        let inv = &self.inventory;
        let newest = self
            .timeline
            .and_then(|t| inv.newest_on_path(&inv.path_to(t)));
        WalSummary {
            segments: inv.segments.values().map(|m| m.len()).sum(),
            timelines: inv.segments.keys().copied().collect(),
            stored_bytes: inv.stored_bytes,
            newest_segment: newest.map(|(tli, segno)| Segment { tli, segno }.name(inv.seg_size)),
            newest_archived_at: newest
                .and_then(|(tli, segno)| inv.archived_at(tli, segno))
                .map(|t| t.to_rfc3339()),
            timeline_history: self.timeline_lines(),
        }
    }

    fn timeline_lines(&self) -> Vec<TimelineLine> {
        let inv = &self.inventory;
        let tlis: std::collections::BTreeSet<u32> = inv
            .segments
            .keys()
            .chain(inv.histories.keys())
            .copied()
            .collect();
        tlis.into_iter()
            .map(|tli| {
                let branch = inv.histories.get(&tli).and_then(|h| h.last());
                let newest = inv
                    .segments
                    .get(&tli)
                    .and_then(|s| s.iter().next_back())
                    .map(|(segno, at)| (*segno, *at));
                TimelineLine {
                    timeline: tli,
                    parent: branch.map(|b| b.parent),
                    switch_lsn: branch.map(|b| b.switch_lsn.to_string()),
                    reason: branch.map(|b| b.reason.clone()),
                    created_at: inv
                        .history_times
                        .get(&tli)
                        .copied()
                        .flatten()
                        .map(|t| t.to_rfc3339()),
                    segments: inv.segments.get(&tli).map_or(0, |s| s.len()),
                    newest_segment: newest
                        .map(|(segno, _)| Segment { tli, segno }.name(inv.seg_size)),
                    newest_archived_at: newest.and_then(|(_, at)| at).map(|t| t.to_rfc3339()),
                    current: self.timeline == Some(tli),
                }
            })
            .collect()
    }
}

pub use crate::text::human_bytes;
