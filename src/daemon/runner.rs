//! One scheduled run of a job: run the operation (which takes the job's host-wide lock,
//! the same one the CLI takes, without waiting), retry failures per `[daemon]
//! retry_attempts/retry_delay`, all inside one tracing span carrying the job and the run
//! id.
//!
//! - Lock held by another process (an on-demand backup, say): the operation fails with
//!   the typed [`crate::error::LockHeld`] and the run is skipped with a WARN; the work is
//!   being done anyway.
//! - Lock held by another job of this daemon (the verify job holds the retention lock
//!   while it reads the archived WAL): the run waits for it, up to [`SIBLING_WAIT`],
//!   instead of being skipped; the two jobs do different work. (Two runs of one job never
//!   overlap: the scheduler skips an occurrence while the previous run is going.)
//! - Permanent failures (bad config, refused request — exit code 2 on the CLI) are not
//!   retried: the same call would fail the same way.
//! - Between attempts the lock is released, so an operator is not blocked for
//!   `retry_delay` by a daemon that is only sleeping.
//!
//! Cancellation (daemon shutdown after `shutdown_grace`) drops the run's future; the lock,
//! the PostgreSQL session and in-flight uploads go with it. [`remove_unfinished`] then
//! deletes the objects of a backup that will never get its manifest.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;

use crate::config::Config;
use crate::daemon::jobs;
use crate::error::LockHeld;
use crate::jobs::history::{Outcome, RunRecord};
use crate::jobs::JobKind;
use crate::manifest::{parse_backup_id, BackupKind};
use crate::repo::layout;

/// A run id: `<job>-<UTC start>-<4 hex>`, unique enough to find one run in the journal.
pub fn new_run_id(kind: JobKind, start: DateTime<Utc>) -> String {
    format!(
        "{kind}-{}-{:04x}",
        start.format("%Y%m%dT%H%M%SZ"),
        fastrand::u16(..)
    )
}

/// Run `kind` once (with retries) and say how it went.
pub async fn run(cfg: Arc<Config>, kind: JobKind, run_id: String) -> RunRecord {
    // A root span: whatever span happens to be current on the thread that first polls
    // this run (another run's, entered on a thread it shares) is not its parent, so
    // every line of this run carries this run's span and no other.
    let span = tracing::info_span!(parent: None, "job", job = %kind, run = %run_id);
    let start = Utc::now();
    let (outcome, attempts, error, report) = attempts(&cfg, kind).instrument(span).await;
    RunRecord {
        kind,
        run_id,
        start,
        end: Utc::now(),
        outcome,
        attempts,
        error,
        report,
    }
}

type Attempts = (Outcome, u32, Option<String>, Option<crate::jobs::JobReport>);

/// How long a run waits for a lock another job of this daemon holds.
pub const SIBLING_WAIT: Duration = Duration::from_secs(6 * 3600);
const SIBLING_POLL: Duration = Duration::from_millis(500);

async fn attempts(cfg: &Config, kind: JobKind) -> Attempts {
    let max = 1 + cfg.daemon.retry_attempts;
    let mut last_error = None;
    let mut attempt = 0;
    let mut waiting_since: Option<std::time::Instant> = None;
    while attempt < max {
        attempt += 1;
        if waiting_since.is_none() {
            tracing::info!(attempt, of = max, "starting the {}", kind.describe());
        }
        let result = jobs::run(cfg, kind).await;
        if let Err(e) = &result {
            let sibling = e
                .chain()
                .find_map(|c| c.downcast_ref::<LockHeld>())
                .filter(|h| h.held_by_this_process());
            if let Some(h) = sibling {
                let since = *waiting_since.get_or_insert_with(|| {
                    tracing::info!(
                        "waiting for this daemon's other job, which holds the {} lock, before starting the {}",
                        h.lock,
                        kind.describe()
                    );
                    std::time::Instant::now()
                });
                if since.elapsed() < SIBLING_WAIT {
                    attempt -= 1;
                    tokio::time::sleep(SIBLING_POLL).await;
                    continue;
                }
            }
        }
        waiting_since = None;
        match result {
            Ok(report) if !report.verification_failures.is_empty() => {
                // Not retried: a test restore that failed fails the same way again.
                let msg = format!(
                    "verification FAILED: {}",
                    report.verification_failures.join("; ")
                );
                tracing::error!(attempt, error = %msg, "{} done: {}", kind.describe(), report.summary);
                return (Outcome::Failed, attempt, Some(msg), Some(report));
            }
            Ok(report) => {
                tracing::info!(attempt, "{} done: {}", kind.describe(), report.summary);
                return (Outcome::Success, attempt, None, Some(report));
            }
            Err(e) if crate::error::is_lock_held(&e) => {
                let msg = match e.chain().find_map(|c| c.downcast_ref::<LockHeld>()) {
                    Some(h) => format!("the {} lock is held by {}", h.lock, h.holder),
                    None => format!("{e:#}"),
                };
                if attempt == 1 {
                    tracing::warn!("skipping this run of the {}: {msg}", kind.describe());
                    return (Outcome::Skipped, 0, Some(msg), None);
                }
                tracing::warn!("not retrying: {msg}, which does the same work");
                last_error = Some(msg);
                break;
            }
            Err(e) => {
                let msg = crate::error::classify(&e)
                    .1
                    .unwrap_or_else(|| format!("{e:#}"));
                last_error = Some(msg.clone());
                if crate::error::is_refused(&e) {
                    tracing::error!(attempt, error = %msg, "{} failed; not retrying (the request itself is refused)", kind.describe());
                    break;
                }
                if attempt == max {
                    tracing::error!(attempt, error = %msg, "{} failed", kind.describe());
                    break;
                }
                let delay = cfg.daemon.retry_delay;
                tracing::warn!(attempt, error = %msg, "{} failed; retrying in {}", kind.describe(), crate::text::config_duration(delay));
                tokio::time::sleep(delay).await;
            }
        }
    }
    (Outcome::Failed, attempt, last_error, None)
}

/// After a cancelled backup run that started at `since`: delete the objects of backups of
/// that kind without a manifest started since then (only this run can have made them: it
/// held the kind's lock). Best effort; retention removes anything left after
/// `retention.incomplete_after`.
pub async fn remove_unfinished(cfg: &Config, kind: JobKind, since: DateTime<Utc>) -> usize {
    let backup_kind = match kind {
        JobKind::Physical | JobKind::Incremental => BackupKind::Physical,
        JobKind::Logical => BackupKind::Logical,
        _ => return 0,
    };
    let result = async {
        let repo = crate::repo::open(cfg).await?;
        let objects = repo.list(layout::BACKUPS_PREFIX).await?;
        let mut ids: std::collections::BTreeMap<&str, bool> = Default::default();
        for o in &objects {
            if let Some(id) = layout::backup_id_of(&o.key) {
                let has_manifest = o.key == layout::manifest_key(id);
                *ids.entry(id).or_default() |= has_manifest;
            }
        }
        // Backup ids have one-second resolution.
        let floor = since - chrono::Duration::seconds(1);
        let mut removed = 0;
        for (id, has_manifest) in ids {
            let ours = parse_backup_id(id).is_some_and(|(t, k)| k == backup_kind && t >= floor);
            if ours && !has_manifest {
                tracing::info!(backup = id, "removing the objects of the cancelled backup");
                crate::ops::backup::physical::remove_partial(repo.as_ref(), id).await;
                removed += 1;
            }
        }
        anyhow::Ok(removed)
    };
    match tokio::time::timeout(Duration::from_secs(15), result).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "could not remove the cancelled backup's objects; retention removes them later");
            0
        }
        Err(_) => {
            tracing::warn!("removing the cancelled backup's objects took too long; retention removes them later");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock;

    /// Hold `name` in `dir` from a child process (a `flock` held by another process);
    /// dropped with the returned child.
    fn held_by_another_process(dir: &std::path::Path, name: &str) -> std::process::Child {
        let path = dir.join(format!("{name}.lock"));
        std::fs::write(&path, "").unwrap();
        let child = std::process::Command::new("flock")
            .arg(&path)
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        // Wait until the child holds it.
        while lock::try_acquire(dir, name).unwrap().is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(&path, "pid 1\nbackupctl backup\nsince then\n").unwrap();
        child
    }

    #[tokio::test]
    async fn a_held_lock_skips_the_run_without_calling_the_job() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.backup.state_dir = d.path().to_path_buf();
        let mut other = held_by_another_process(d.path(), "backup-physical");
        let r = run(Arc::new(cfg), JobKind::Physical, "t".into()).await;
        assert_eq!(r.outcome, Outcome::Skipped);
        assert_eq!(r.attempts, 0);
        assert!(r
            .error
            .unwrap()
            .contains("backup-physical lock is held by pid"));
        let _ = other.kill();
        let _ = other.wait();
    }

    #[tokio::test]
    async fn a_lock_held_by_another_job_of_this_daemon_is_waited_for() {
        let d = tempfile::tempdir().unwrap();
        let repo = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.backup.state_dir = d.path().to_path_buf();
        cfg.repository.path = Some(repo.path().to_path_buf());
        // What the verify job does while it reads the archived WAL.
        let held = lock::acquire(d.path(), "retention", lock::Wait::No).unwrap();
        let cfg = Arc::new(cfg);
        let run = tokio::spawn(run(cfg, JobKind::Retention, "t".into()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !run.is_finished(),
            "the retention ran or gave up while the lock was held"
        );
        drop(held);
        let r = run.await.unwrap();
        assert_eq!(r.outcome, Outcome::Success, "{:?}", r.error);
        assert_eq!(r.attempts, 1);
    }

    /// A run's lines carry its own span only, even when another run's span is current
    /// on the thread that polls it.
    #[test]
    fn a_run_logs_under_its_own_span_only() {
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
            type Writer = Buf;
            fn make_writer(&'a self) -> Buf {
                self.clone()
            }
        }
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .finish();
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.backup.state_dir = d.path().to_path_buf();
        cfg.postgres.connection = Some("port=not-a-port".into());
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let other = tracing::info_span!("job", job = "verify", run = "other-run");
            let _entered = other.enter();
            rt.block_on(run(Arc::new(cfg), JobKind::Physical, "this-run".into()));
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("job{job=physical run=this-run}"), "{text}");
        assert!(!text.contains("other-run"), "{text}");
    }

    #[tokio::test]
    async fn refused_requests_are_not_retried() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.backup.state_dir = d.path().to_path_buf();
        cfg.daemon.retry_attempts = 5;
        cfg.daemon.retry_delay = Duration::from_secs(3600);
        // A bad connection string is a refused request (exit code 2 on the CLI): one
        // attempt, no hour-long sleep.
        cfg.postgres.connection = Some("port=not-a-port".into());
        let r = run(Arc::new(cfg), JobKind::Physical, "t".into()).await;
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.attempts, 1);
        assert!(r.error.unwrap().contains("postgres.connection"));
    }

    #[test]
    fn run_ids_name_the_job_and_time() {
        let t = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 11, 22, 3, 0, 0).unwrap();
        let id = new_run_id(JobKind::Physical, t);
        assert!(id.starts_with("physical-20261122T030000Z-"), "{id}");
        assert_eq!(id.len(), "physical-20261122T030000Z-".len() + 4);
    }
}
