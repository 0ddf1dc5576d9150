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
use tracing::Instrument;

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
    /// With several repositories: the one whose copy was restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub kind: BackupKind,
    /// In an encrypted repository, the key that wrote the backup's data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
    #[serde(flatten)]
    pub verification: Verification,
}

#[derive(Debug, Serialize)]
pub struct WalReport {
    /// With several repositories: the one whose WAL was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
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
    /// With several repositories: the WAL of each that receives it, checked on its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wal_by_repository: Vec<WalReport>,
    /// With several repositories: those that could not be read (`name: error`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_repositories: Vec<String>,
}

impl VerifyReport {
    pub fn failed(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .backups
            .iter()
            .filter(|r| r.verification.outcome == Outcome::Failed)
            .map(|r| match &r.repository {
                Some(repo) => format!("{} in repository {repo}", r.id),
                None => r.id.clone(),
            })
            .collect();
        for w in self.wal_reports() {
            let at = w
                .repository
                .as_ref()
                .map(|r| format!(" in repository {r}"))
                .unwrap_or_default();
            if !w.gaps.is_empty() || w.recoverable_windows.is_empty() {
                v.push(format!("WAL continuity{at}"));
            }
            v.extend(
                w.content
                    .failures
                    .iter()
                    .map(|f| format!("WAL {}{at}", f.file)),
            );
        }
        v.extend(
            self.unreadable_repositories
                .iter()
                .map(|r| format!("repository {r}")),
        );
        v
    }

    /// Every WAL check: the one repository's, or each repository's.
    pub fn wal_reports(&self) -> impl Iterator<Item = &WalReport> {
        self.wal.iter().chain(&self.wal_by_repository)
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
    run_with(cfg, args, Wait::Up(LOCK_WAIT)).await
}

/// [`run`], waiting for a running verification as `wait` says (the daemon does not).
/// With several repositories and no `--repo`, each repository's copy of each selected
/// backup is restored, and each repository's WAL is checked: a copy nobody restored
/// is not known to restore.
pub async fn run_with(
    cfg: &Config,
    args: &VerifyRequest,
    wait: Wait,
) -> anyhow::Result<VerifyReport> {
    if !cfg.several_repositories() || cfg.selected_repository.is_some() {
        let repo = repo::open(cfg).await?;
        let catalog = Catalog::load(repo.as_ref()).await?;
        let selected = select(&catalog, args)?;
        return verify_selected(cfg, &repo, &selected, args.wal, wait).await;
    }
    // Select from every backup any repository holds (`--latest`: the newest of each
    // kind anywhere), then restore each copy of it.
    let union = repo::open_for_reading(cfg, None, false).await?;
    let everything = Catalog::load(union.as_ref()).await?;
    let selected = select(&everything, args)?;
    let _lock = JobKind::Verify.lock(&cfg.backup.state_dir, wait).await?;
    let mut report = VerifyReport::default();
    for r in cfg.all_repositories() {
        let wal = args.wal && r.kinds.contains(&crate::config::StoredKind::Wal);
        let loaded = async {
            let repo = repo::open(&cfg.with_repository(&r)).await?;
            let catalog = Catalog::load(repo.as_ref()).await?;
            anyhow::Ok((repo, catalog))
        }
        .await;
        let (repo, catalog) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(repository = %r.name, "cannot verify repository {}: {e:#}", r.name);
                report
                    .unreadable_repositories
                    .push(format!("{}: {e:#}", r.name));
                continue;
            }
        };
        let here: Vec<Manifest> = selected
            .iter()
            .filter_map(|m| catalog.find(&m.id).cloned())
            .collect();
        let span = tracing::info_span!("repository", name = %r.name);
        let wal = match wal {
            true => WalCheck::Against(&everything),
            false => WalCheck::No,
        };
        let part = verify_locked(cfg, &repo, &here, wal)
            .instrument(span)
            .await?;
        report.backups.extend(part.backups.into_iter().map(|mut b| {
            b.repository = Some(r.name.clone());
            b
        }));
        report.wal_by_repository.extend(part.wal.map(|mut w| {
            w.repository = Some(r.name.clone());
            w
        }));
    }
    Ok(report)
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
    let wal = if wal { WalCheck::Own } else { WalCheck::No };
    verify_locked(cfg, repo, backups, wal).await
}

/// Whether [`verify_locked`] checks the repository's WAL, and against which backups.
enum WalCheck<'a> {
    No,
    /// Against the repository's own backups.
    Own,
    /// Against these (every repository's: WAL may be kept apart from its backups).
    Against(&'a Catalog),
}

/// [`verify_selected`] under the lock already held.
async fn verify_locked(
    cfg: &Config,
    repo: &std::sync::Arc<dyn Repository>,
    backups: &[Manifest],
    wal: WalCheck<'_>,
) -> anyhow::Result<VerifyReport> {
    for line in scratch::clean_stale(&scratch::root(cfg)) {
        tracing::warn!("{line} (left by an earlier verification that did not finish)");
    }
    let mut report = VerifyReport::default();
    for m in backups {
        let v = backup::verify_backup(cfg, repo, m).await?;
        backup::record(cfg, repo.as_ref(), m, v.clone()).await?;
        report.backups.push(VerifyResult {
            id: m.id.clone(),
            repository: None,
            kind: m.kind,
            encryption_key: encryption_key_of(repo.as_ref(), m).await,
            verification: v,
        });
    }
    let status = match wal {
        WalCheck::No => None,
        WalCheck::Own => Some(RepoStatus::load(repo.as_ref()).await?),
        WalCheck::Against(c) => Some(RepoStatus::load_with(repo.as_ref(), c.clone()).await?),
    };
    if let Some(st) = status {
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
            repository: None,
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
