//! Proving backups restore: test restores into scratch space, recorded in the manifest.
//!
//! Each verification restores the backup somewhere private (never the production data
//! directory), checks every object's checksum on the way, brings a server up on it and
//! queries it, then removes everything. The outcome — what was checked, what failed, the
//! measured restore time (RTO) and the scratch space used — goes into the backup's
//! manifest, so `list`, `info` and the daemon's metrics show it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::Instrument;

use super::{logical, physical, scratch};
use crate::config::Config;
use crate::jobs::JobKind;
use crate::lock::Wait;
use crate::manifest::{BackupKind, Manifest, Outcome, Verification};
use crate::recovery::lease;
use crate::repo::{layout, Repository};

/// What a verification found so far.
#[derive(Debug, Default)]
pub struct Findings {
    pub checked: Vec<String>,
    pub failures: Vec<String>,
    /// Seconds from the start of the download to a queryable restored server.
    pub rto_secs: f64,
}

/// Test-restore `m` and return the verification record (not yet stored).
pub async fn verify_backup(
    cfg: &Config,
    repo: &Arc<dyn Repository>,
    m: &Manifest,
) -> anyhow::Result<Verification> {
    if rustix::process::geteuid().is_root() {
        return Err(crate::user_error!(
            "verification starts PostgreSQL servers and must run as the PostgreSQL OS user, not root \
             (e.g. sudo -u postgres backupctl verify …)"
        ));
    }
    let root = scratch::root(cfg);
    std::fs::create_dir_all(&root).map_err(|e| {
        crate::user_error!(
            "cannot create scratch directory {} (verify.scratch_dir): {e}",
            root.display()
        )
    })?;
    let needed = needed_space(m);
    scratch::ensure_space(&root, needed)?;
    let started = Instant::now();
    let dir = scratch::ScratchDir::create(&root, &m.id)?;
    let mut f = Findings::default();
    // Retention keeps the backup and its WAL while the test restore reads them.
    let held = lease::acquire(
        repo.as_ref(),
        &m.id,
        "verify",
        cfg.verify
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(3600)),
    )
    .await?;
    let span = tracing::info_span!("verify", id = %m.id, kind = %m.kind);
    let result = async {
        tracing::info!(scratch = %dir.path.display(), "test restore starting");
        match m.kind {
            BackupKind::Physical => physical::verify(cfg, repo, m, &dir, &mut f).await,
            BackupKind::Logical => logical::verify(cfg, repo, m, &dir, &mut f).await,
        }
    }
    .instrument(span)
    .await;
    held.release(repo.as_ref()).await;
    if let Err(e) = result {
        // Another run holding a lock is not a finding about this backup.
        if crate::error::is_lock_held(&e) {
            return Err(e);
        }
        f.failures.push(format!("{e:#}"));
    }
    let scratch_bytes = scratch::disk_usage(&dir.path);
    drop(dir);
    let outcome = if f.failures.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Failed
    };
    let duration_secs = if f.rto_secs > 0.0 {
        f.rto_secs
    } else {
        started.elapsed().as_secs_f64()
    };
    match outcome {
        Outcome::Ok => {
            tracing::info!(id = %m.id, rto_secs = duration_secs, "backup verified: it restores")
        }
        Outcome::Failed => {
            tracing::error!(failures = ?f.failures, "VERIFICATION FAILED: backup {} does not restore cleanly", m.id)
        }
    }
    Ok(Verification {
        time: Utc::now(),
        outcome,
        duration_secs,
        checked: f.checked,
        failures: f.failures,
        scratch_bytes,
    })
}

/// Scratch bytes a test restore of `m` needs (data, WAL for replay, margin).
fn needed_space(m: &Manifest) -> u64 {
    let data = match &m.logical {
        Some(l) => {
            l.databases
                .iter()
                .map(|d| d.size_bytes.max(0) as u64)
                .sum::<u64>()
                + m.original_bytes()
        }
        None => m.original_bytes(),
    };
    let wal = m
        .physical
        .as_ref()
        .map(|p| {
            let seg = p.wal_segment_size.max(1);
            (p.stop_lsn.0 / seg - p.start_lsn.0 / seg + 2) * seg
        })
        .unwrap_or(0);
    (data + wal) + (data + wal) / 10 + (64 << 20)
}

/// Store `v` in `m`'s manifest, unless the backup has been deleted meanwhile (a
/// manifest must never reappear for a backup whose data is gone).
pub async fn record(
    cfg: &Config,
    repo: &dyn Repository,
    m: &Manifest,
    v: Verification,
) -> anyhow::Result<Manifest> {
    let _retention = JobKind::Retention
        .lock(&cfg.backup.state_dir, Wait::Up(Duration::from_secs(3600)))
        .await?;
    if repo.head(&layout::manifest_key(&m.id)).await?.is_none() {
        anyhow::bail!(
            "backup {} was deleted while it was being verified; nothing recorded",
            m.id
        );
    }
    let mut updated = m.clone();
    updated.verification = Some(v);
    updated.store(repo).await?;
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_estimate_covers_data_wal_and_margin() {
        let m: Manifest =
            serde_json::from_str(include_str!("testdata/physical-manifest.json")).unwrap();
        let need = needed_space(&m);
        assert!(need > m.original_bytes() + (16 << 20), "{need}");
    }
}
