//! `backupctl list`: every backup, the recoverable window(s), WAL gaps, and the backups
//! whose manifest cannot be used.

use serde::Serialize;

use crate::archival::export::ExportManifest;
use crate::config::Config;
use crate::manifest::{Manifest, Unreadable};
use crate::ops::across::{self, RepositoryView};
use crate::ops::status::RepoStatus;
use crate::recovery::inventory::Gap;
use crate::recovery::plan::Window;
use crate::repo;

#[derive(Serialize)]
pub struct BackupLine {
    pub id: String,
    pub kind: String,
    pub label: Option<String>,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub stored_bytes: u64,
    pub original_bytes: u64,
    /// `ok`, `failed`, or absent when never verified.
    pub verified: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseLine>,
    /// With several repositories: the ones holding it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
    /// An incremental backup's parent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// An incremental backup's place in its chain: 1 after a full backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_length: Option<u32>,
}

#[derive(Serialize)]
pub struct DatabaseLine {
    pub name: String,
    pub size_bytes: i64,
    pub tables: usize,
    pub rows: i64,
}

impl BackupLine {
    pub fn of(m: &Manifest) -> BackupLine {
        BackupLine {
            id: m.id.clone(),
            kind: m.kind.to_string(),
            label: m.label.clone(),
            start_time: m.start_time.to_rfc3339(),
            stop_time: m.stop_time.to_rfc3339(),
            start_lsn: m.physical.as_ref().map(|p| p.start_lsn.to_string()),
            stop_lsn: m.physical.as_ref().map(|p| p.stop_lsn.to_string()),
            stored_bytes: m.stored_bytes(),
            original_bytes: m.original_bytes(),
            parent: m.parent().map(str::to_string),
            chain_length: m.incremental().map(|i| i.chain_length),
            verified: m.verification.as_ref().map(|v| {
                serde_json::to_value(v.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
            databases: m
                .logical
                .iter()
                .flat_map(|l| &l.databases)
                .map(|d| DatabaseLine {
                    name: d.name.clone(),
                    size_bytes: d.size_bytes,
                    tables: d.tables.len(),
                    rows: d.total_rows(),
                })
                .collect(),
            repositories: Vec::new(),
        }
    }
}

/// One export of archived data (`[[archive]] export_after`).
#[derive(Serialize)]
pub struct ExportLine {
    pub id: String,
    pub created: String,
    pub database: String,
    /// What the rows came from, `schema.name`.
    pub relation: String,
    /// Rows mode: `YYYY-MM`.
    pub month: Option<String>,
    pub rows: i64,
    pub stored_bytes: u64,
    pub original_bytes: u64,
}

impl ExportLine {
    pub fn of(m: &ExportManifest) -> ExportLine {
        ExportLine {
            id: m.id.clone(),
            created: m.created.to_rfc3339(),
            database: m.database.clone(),
            relation: m.relation.clone(),
            month: m.month.clone(),
            rows: m.rows,
            stored_bytes: m.stored.size,
            original_bytes: m.original_bytes,
        }
    }
}

/// What `list` shows.
#[derive(Serialize)]
pub struct Listing {
    pub repository: String,
    pub backups: Vec<BackupLine>,
    pub recoverable_windows: Vec<Window>,
    pub wal_gaps: Vec<String>,
    pub incomplete_backups: Vec<String>,
    /// Backups whose manifest exists but cannot be used, with the reason and the fix.
    pub unreadable_manifests: Vec<Unreadable>,
    /// Archived data exported to the repository, oldest first.
    pub exports: Vec<ExportLine>,
    /// Exports whose manifest cannot be used (`id: reason`).
    pub unreadable_exports: Vec<String>,
    /// With several repositories (and no `--repo`): what each holds on its own; the
    /// fields above are their union.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<RepositoryView>,
    /// The complete backups' manifests, in the order of `backups`.
    #[serde(skip)]
    pub manifests: Vec<Manifest>,
}

pub async fn run(cfg: &Config) -> anyhow::Result<Listing> {
    repo::require_existing(cfg)?;
    let repo = repo::open_for_reading(cfg, None, false).await?;
    let st = RepoStatus::load(repo.as_ref()).await?;
    let (exports, unreadable_exports) = crate::archival::export::list(repo.as_ref()).await?;
    let repositories = across::each_repository(cfg).await;
    let backups = st
        .catalog
        .complete
        .iter()
        .map(|m| BackupLine {
            repositories: across::holding(&repositories, &m.id),
            ..BackupLine::of(m)
        })
        .collect();
    Ok(Listing {
        exports: exports.iter().map(ExportLine::of).collect(),
        unreadable_exports,
        repository: repo.describe(),
        backups,
        repositories,
        recoverable_windows: st.windows.clone(),
        wal_gaps: st.gaps.iter().map(Gap::to_string).collect(),
        incomplete_backups: st
            .catalog
            .incomplete
            .iter()
            .map(|(id, _)| id.clone())
            .collect(),
        unreadable_manifests: st.catalog.unreadable.clone(),
        manifests: st.catalog.complete.clone(),
    })
}
