//! `backupctl verify [ID | --latest | --all | --since D] [--wal]`: test-restore backups
//! and check the archived WAL (continuity, and every object's content: `wal.rs`). Any failure exits 1, is logged at ERROR, and is recorded in
//! the backup's manifest (so `list`, `info` and the daemon report it too).

pub mod backup;
pub mod logical;
pub mod physical;
pub mod scratch;
pub mod wal;

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::ops::status::RepoStatus;

use crate::config::Config;
use crate::error::Reported;
use crate::jobs::JobKind;
use crate::lock::Wait;
use crate::manifest::{BackupKind, Catalog, Manifest, Outcome, Verification};
use crate::recovery::plan::Window;
use crate::repo::{self, Repository};

#[derive(Debug, Serialize)]
pub struct VerifyResult {
    pub id: String,
    pub kind: BackupKind,
    /// In an encrypted repository, the key that wrote the backup's data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    #[serde(flatten)]
    pub verification: Verification,
}

#[derive(Debug, Serialize)]
pub struct WalReport {
    pub recoverable_windows: Vec<Window>,
    pub gaps: Vec<String>,
    /// What reading every archived WAL object found.
    pub content: wal::WalContent,
    pub ok: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct VerifyReport {
    pub backups: Vec<VerifyResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalReport>,
}

impl VerifyReport {
    pub fn failed(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .backups
            .iter()
            .filter(|r| r.verification.outcome == Outcome::Failed)
            .map(|r| r.id.clone())
            .collect();
        if let Some(w) = &self.wal {
            if !w.gaps.is_empty() || w.recoverable_windows.is_empty() {
                v.push("WAL continuity".into());
            }
            v.extend(w.content.failures.iter().map(|f| format!("WAL {}", f.file)));
        }
        v
    }
}

/// `backupctl verify`, as the operation sees it: which backups, and whether to check WAL
/// continuity.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequest {
    pub id: Option<String>,
    pub latest: bool,
    pub all: bool,
    /// A duration (`7d`): backups taken within it.
    pub since: Option<String>,
    pub wal: bool,
}

/// How long a verification waits for a running one.
pub const LOCK_WAIT: Duration = Duration::from_secs(6 * 3600);

/// Verify what `args` selects. The report says what failed; [`outcome`] turns it into
/// the command's result once it has been shown.
pub async fn run(cfg: &Config, args: &VerifyRequest) -> anyhow::Result<VerifyReport> {
    if args.id.is_none() && !args.latest && !args.all && args.since.is_none() && !args.wal {
        return Err(crate::user_error!(
            "say what to verify: a backup ID, --latest, --all, --since DURATION, and/or --wal"
        ));
    }
    let repo = repo::open(cfg).await?;
    let catalog = Catalog::load(repo.as_ref()).await?;
    let selected = select(&catalog, args)?;
    verify_selected(cfg, &repo, &selected, args.wal, Wait::Up(LOCK_WAIT)).await
}

/// The result of a verification run: an error naming what failed.
pub fn outcome(report: &VerifyReport) -> anyhow::Result<()> {
    let failed = report.failed();
    if !failed.is_empty() {
        return Err(
            Reported::new(format!("verification FAILED for: {}", failed.join(", "))).into(),
        );
    }
    Ok(())
}

fn select(catalog: &Catalog, args: &VerifyRequest) -> anyhow::Result<Vec<Manifest>> {
    let all = &catalog.complete;
    let picked: Vec<Manifest> = if let Some(id) = &args.id {
        vec![catalog.require(id)?.clone()]
    } else if args.latest {
        [BackupKind::Physical, BackupKind::Logical]
            .iter()
            .filter_map(|k| catalog.of_kind(*k).last().cloned())
            .collect()
    } else if args.all {
        all.clone()
    } else if let Some(since) = &args.since {
        let d =
            crate::config::parse_duration(since).map_err(|e| crate::user_error!("--since: {e}"))?;
        let cutoff = Utc::now() - chrono::Duration::from_std(d).unwrap_or_default();
        all.iter()
            .filter(|m| m.start_time >= cutoff)
            .cloned()
            .collect()
    } else {
        vec![]
    };
    if picked.is_empty() && !args.wal {
        return Err(crate::user_error!(
            "no backup matches; `backupctl list` shows the backups"
        ));
    }
    Ok(picked)
}

/// Verify `backups` one after another (and WAL continuity with `wal`), under the
/// host-wide "verify" lock, recording each outcome in its manifest.
pub async fn verify_selected(
    cfg: &Config,
    repo: &std::sync::Arc<dyn Repository>,
    backups: &[Manifest],
    wal: bool,
    wait: Wait,
) -> anyhow::Result<VerifyReport> {
    let _lock = JobKind::Verify.lock(&cfg.backup.state_dir, wait).await?;
    for line in scratch::clean_stale(&scratch::root(cfg)) {
        tracing::warn!("{line} (left by an earlier verification that did not finish)");
    }
    let mut report = VerifyReport::default();
    for m in backups {
        let v = backup::verify_backup(cfg, repo, m).await?;
        backup::record(cfg, repo.as_ref(), m, v.clone()).await?;
        report.backups.push(VerifyResult {
            id: m.id.clone(),
            kind: m.kind,
            encryption_key: encryption_key_of(repo.as_ref(), m).await,
            verification: v,
        });
    }
    if wal {
        let st = RepoStatus::load(repo.as_ref()).await?;
        let gaps: Vec<String> = st.gaps.iter().map(|g| g.to_string()).collect();
        if !gaps.is_empty() {
            tracing::error!(gaps = ?gaps, "WAL continuity broken");
        }
        let objects = repo
            .list(crate::repo::layout::WAL_PREFIX)
            .await
            .context("list archived WAL")?;
        let content =
            wal::check(repo, st.identity.as_ref(), st.inventory.seg_size, &objects).await?;
        report.wal = Some(WalReport {
            ok: gaps.is_empty() && !st.windows.is_empty() && content.failures.is_empty(),
            recoverable_windows: st.windows,
            gaps,
            content,
        });
    }
    Ok(report)
}

/// The key that wrote backup `m`'s data (its first object's), in an encrypted
/// repository; `None` in a plaintext one. (The manifest may be newer: verification
/// rewrites it with the current key.)
async fn encryption_key_of(repo: &dyn Repository, m: &Manifest) -> Option<String> {
    let first = m.objects.first()?;
    let obj = repo
        .get(&crate::repo::layout::backup_object_key(&m.id, &first.name))
        .await
        .ok()?;
    obj.encryption_key
}
