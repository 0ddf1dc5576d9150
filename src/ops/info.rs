//! `backupctl info [ID]`: one backup in detail (`--json`: its manifest), or the
//! repository summary.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::jobs::history::{self, JobHistory};
use crate::jobs::JobKind;
use crate::manifest::{BackupKind, Manifest, Unreadable};
use crate::ops::list::BackupLine;
use crate::ops::status::{RepoStatus, WalSummary};
use crate::recovery::inventory::Gap;
use crate::recovery::plan::Window;
use crate::repo::leftover::{self, LeftoverSummary};
use crate::repo::{self, identity::RepoIdentity, walcheck::WalChecked};

#[derive(Serialize)]
pub struct Summary {
    pub repository: String,
    pub identity: Option<RepoIdentity>,
    pub backups: usize,
    pub newest_physical: Option<BackupLine>,
    pub newest_logical: Option<BackupLine>,
    pub recoverable_windows: Vec<Window>,
    pub wal_gaps: Vec<String>,
    pub wal: WalSummary,
    /// The last time `verify --wal` found every archived WAL object intact (checksum,
    /// decompression, page headers); absent: never.
    pub wal_verified_at: Option<DateTime<Utc>>,
    pub incomplete_backups: Vec<String>,
    /// Hidden leftovers of killed uploads (temp files, unfinished multipart uploads).
    pub unfinished_uploads: LeftoverSummary,
    /// Backups whose manifest exists but cannot be used, with the reason and the fix.
    pub unreadable_manifests: Vec<Unreadable>,
    /// Archived data exported to the repository (`backupctl list` lists them).
    pub exports: ExportsSummary,
    pub daemon: DaemonView,
    /// WAL waiting for each repository with `required = false` (several repositories).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal_backlog: Vec<crate::ops::wal::backlog::BacklogStatus>,
    /// With several repositories (and no `--repo`): what each holds on its own; the
    /// fields above are their union.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<crate::ops::across::RepositoryView>,
}

/// The exports in the repository, in total.
#[derive(Serialize)]
pub struct ExportsSummary {
    pub count: usize,
    pub rows: i64,
    pub stored_bytes: u64,
    pub newest: Option<String>,
    /// Exports whose manifest cannot be used (`id: reason`).
    pub unreadable: Vec<String>,
}

/// The daemon's view: its job history (`backup.state_dir`) and this config's schedule.
#[derive(Serialize)]
pub struct DaemonView {
    pub state_file: String,
    /// Why the history could not be read (then `jobs` shows schedules only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
    /// When the daemon last wrote its history (absent: it never ran here).
    pub updated: Option<DateTime<Utc>>,
    pub pid: Option<u32>,
    pub timezone: String,
    pub jobs: Vec<DaemonJob>,
}

#[derive(Serialize)]
pub struct DaemonJob {
    pub job: JobKind,
    /// The cron expression in [schedule]; absent = not scheduled.
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub history: JobHistory,
}

fn daemon_view(cfg: &crate::config::Config) -> DaemonView {
    // The history may be unreadable to this user (state_dir is the daemon's, mode 0700):
    // say so instead of failing the whole summary.
    let (mut h, history_error) = match history::load(&cfg.backup.state_dir) {
        Ok(h) => (h, None),
        Err(e) => (history::History::default(), Some(format!("{e:#}"))),
    };
    // A run whose process died is not running any more.
    h.clear_dead_runs();
    let tz: chrono_tz::Tz = cfg.schedule.timezone.parse().unwrap_or(chrono_tz::UTC);
    let now = Utc::now().with_timezone(&tz);
    let scheduled: Vec<(&str, &str)> = cfg.schedule.entries();
    let mut jobs = vec![];
    for kind in JobKind::ALL {
        let expr = scheduled
            .iter()
            .find(|(k, _)| *k == kind.as_str())
            .map(|(_, e)| e.to_string());
        let history = h.job(kind).cloned();
        if expr.is_none() && history.is_none() {
            continue;
        }
        jobs.push(DaemonJob {
            job: kind,
            next_run: expr
                .as_deref()
                .and_then(|e| crate::schedule::next_run(e, &now))
                .map(|t| t.with_timezone(&Utc)),
            schedule: expr,
            history: history.unwrap_or_default(),
        });
    }
    DaemonView {
        state_file: history::path(&cfg.backup.state_dir).display().to_string(),
        history_error,
        updated: h.updated,
        pid: h.pid,
        timezone: cfg.display_zone().name().to_string(),
        jobs,
    }
}

/// What `info` shows: one backup's manifest, or the repository summary.
pub enum Info {
    Backup(Box<Manifest>),
    Summary(Box<Summary>),
}

/// Backup `id`'s manifest, or (without an id) the repository summary.
pub async fn run(cfg: &Config, id: Option<&str>) -> anyhow::Result<Info> {
    repo::require_existing(cfg)?;
    let repo = repo::open_for_reading(cfg, None, false).await?;
    if let Some(id) = id {
        let m = Manifest::load(repo.as_ref(), id).await?.ok_or_else(|| {
            crate::user_error!(
                "backup {id} does not exist or is incomplete; `backupctl list` shows the backups"
            )
        })?;
        return Ok(Info::Backup(Box::new(m)));
    }
    let st = RepoStatus::load(repo.as_ref()).await?;
    let newest = |k: BackupKind| st.catalog.of_kind(k).last().map(BackupLine::of);
    let (exports, unreadable_exports) = crate::archival::export::list(repo.as_ref()).await?;
    Ok(Info::Summary(Box::new(Summary {
        repository: repo.describe(),
        identity: st.identity.clone(),
        backups: st.catalog.complete.len(),
        newest_physical: newest(BackupKind::Physical),
        newest_logical: newest(BackupKind::Logical),
        recoverable_windows: st.windows.clone(),
        wal_gaps: st.gaps.iter().map(Gap::to_string).collect(),
        wal: st.wal_summary(),
        wal_verified_at: WalChecked::load(repo.as_ref()).await?.complete_at,
        incomplete_backups: st
            .catalog
            .incomplete
            .iter()
            .map(|(id, _)| id.clone())
            .collect(),
        unreadable_manifests: st.catalog.unreadable.clone(),
        exports: ExportsSummary {
            count: exports.len(),
            rows: exports.iter().map(|e| e.rows).sum(),
            stored_bytes: exports.iter().map(|e| e.stored.size).sum(),
            newest: exports.last().map(|e| e.id.clone()),
            unreadable: unreadable_exports,
        },
        unfinished_uploads: leftover::summary(repo.as_ref()).await?,
        daemon: daemon_view(cfg),
        wal_backlog: crate::ops::wal::backlog::statuses(cfg),
        repositories: crate::ops::across::each_repository(cfg).await,
    })))
}
