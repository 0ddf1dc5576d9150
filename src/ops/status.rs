//! What the repository holds, in one load: identity, backups, WAL, recoverable windows
//! and gaps. Shared by `list`, `info` (and the daemon's metrics).

use serde::Serialize;

use crate::manifest::{BackupKind, Catalog};
use crate::pg::wal::{Segment, DEFAULT_SEGMENT_SIZE};
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
}

impl RepoStatus {
    pub async fn load(repo: &dyn Repository) -> anyhow::Result<RepoStatus> {
        let identity = RepoIdentity::load(repo).await?;
        let seg = identity
            .as_ref()
            .map(|i| i.wal_segment_size)
            .unwrap_or(DEFAULT_SEGMENT_SIZE);
        let catalog = Catalog::load(repo).await?;
        let inventory = WalInventory::load(repo, seg).await?;
        let timeline = inventory.latest_timeline().or_else(|| {
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
        }
    }
}

pub use crate::text::human_bytes;
