//! `backupctl verify [ID | --latest | --all | --since D] [--wal]`: test-restore backups
//! and check WAL continuity. Any failure exits 1, is logged at ERROR, and is recorded in
//! the backup's manifest (so `list`, `info` and the daemon report it too).

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::cli::VerifyArgs;
use crate::commands::status::RepoStatus;
use crate::commands::Ctx;
use crate::error::Exit;
use crate::lock::{self, Wait};
use crate::manifest::{BackupKind, Catalog, Manifest, Outcome, Verification};
use crate::recovery::plan::Window;
use crate::repo::{self, Repository};
use crate::verify;

#[derive(Debug, Serialize)]
pub struct VerifyResult {
    pub id: String,
    pub kind: BackupKind,
    #[serde(flatten)]
    pub verification: Verification,
}

#[derive(Debug, Serialize)]
pub struct WalReport {
    pub recoverable_windows: Vec<Window>,
    pub gaps: Vec<String>,
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
        if self.wal.as_ref().is_some_and(|w| !w.ok) {
            v.push("WAL continuity".into());
        }
        v
    }
}

pub async fn run(ctx: &Ctx, args: VerifyArgs) -> anyhow::Result<()> {
    if args.id.is_none() && !args.latest && !args.all && args.since.is_none() && !args.wal {
        return Err(crate::user_error!(
            "say what to verify: a backup ID, --latest, --all, --since DURATION, and/or --wal"
        ));
    }
    let repo = repo::open(&ctx.cfg).await?;
    let catalog = Catalog::load(repo.as_ref()).await?;
    let selected = select(&catalog, &args)?;
    let report = verify_selected(ctx, &repo, &selected, args.wal).await?;
    print(ctx, &report)?;
    let failed = report.failed();
    if !failed.is_empty() {
        return Err(Exit {
            code: 1,
            message: Some(format!("verification FAILED for: {}", failed.join(", "))),
        }
        .into());
    }
    Ok(())
}

fn select(catalog: &Catalog, args: &VerifyArgs) -> anyhow::Result<Vec<Manifest>> {
    let all = &catalog.complete;
    let picked: Vec<Manifest> = if let Some(id) = &args.id {
        vec![catalog.find(id).cloned().ok_or_else(|| {
            crate::user_error!(
                "backup {id} does not exist or is incomplete; `backupctl list` shows the backups"
            )
        })?]
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
    ctx: &Ctx,
    repo: &std::sync::Arc<dyn Repository>,
    backups: &[Manifest],
    wal: bool,
) -> anyhow::Result<VerifyReport> {
    let _lock = lock::acquire_async(
        &ctx.cfg.backup.state_dir,
        "verify",
        Wait::Up(Duration::from_secs(6 * 3600)),
    )
    .await?;
    for line in verify::scratch::clean_stale(&verify::scratch::root(&ctx.cfg)) {
        tracing::warn!("{line} (left by an earlier verification that did not finish)");
    }
    let mut report = VerifyReport::default();
    for m in backups {
        let v = verify::verify_backup(ctx, repo, m).await?;
        verify::record(ctx, repo.as_ref(), m, v.clone()).await?;
        report.backups.push(VerifyResult {
            id: m.id.clone(),
            kind: m.kind,
            verification: v,
        });
    }
    if wal {
        let st = RepoStatus::load(repo.as_ref()).await?;
        let gaps: Vec<String> = st.gaps.iter().map(|g| g.to_string()).collect();
        if !gaps.is_empty() {
            tracing::error!(gaps = ?gaps, "WAL continuity broken");
        }
        report.wal = Some(WalReport {
            ok: gaps.is_empty() && !st.windows.is_empty(),
            recoverable_windows: st.windows,
            gaps,
        });
    }
    Ok(report)
}

fn print(ctx: &Ctx, report: &VerifyReport) -> anyhow::Result<()> {
    if ctx.json {
        return ctx.print_json(report);
    }
    for r in &report.backups {
        let v = &r.verification;
        match v.outcome {
            Outcome::Ok => println!(
                "OK     {} ({}) restored and queryable in {:.1}s, {} scratch",
                r.id,
                r.kind,
                v.duration_secs,
                crate::commands::status::human_bytes(v.scratch_bytes)
            ),
            Outcome::Failed => println!("FAILED {} ({})", r.id, r.kind),
        }
        for c in &v.checked {
            println!("       checked: {c}");
        }
        for f in &v.failures {
            println!("       FAILURE: {f}");
        }
    }
    if let Some(w) = &report.wal {
        crate::commands::list::print_windows(&w.recoverable_windows, &w.gaps);
        if w.ok {
            println!(
                "OK     WAL is continuous from the oldest physical backup to the newest segment"
            );
        } else if w.recoverable_windows.is_empty() {
            println!("FAILED no physical backup has the WAL it needs");
        } else {
            println!("FAILED WAL has gaps");
        }
    }
    Ok(())
}
