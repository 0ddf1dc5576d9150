//! Notifications of CLI jobs: `backup` (the pre-migration hook), `restore`, `verify`,
//! `archive` and `migrate` notify as the daemon's jobs do — failure, success or
//! recovery as `notify.on` selects — unless `--no-notify`. Dry runs notify nothing.
//!
//! The command's result is never changed by the notification: the process waits at
//! most `notify.timeout` for the delivery, then exits with the job's own code.

use std::time::Duration;

use crate::config::Config;
use crate::notify::{Alert, Notifier, Outcome};

use super::{Command, KindArg};

/// A CLI command that notifies: how it is named, and under which job names its last
/// outcome is kept (shared with the daemon's jobs of the same kind).
pub struct CliJob {
    pub job: &'static str,
    pub keys: &'static [&'static str],
    /// What ran, for the summary: "on-demand physical backup (label pre-migration)".
    pub what: String,
}

/// What the command learnt that the notification tells: the backups it took or used,
/// and the real cause of a failure when the error itself only points at a report.
#[derive(Default)]
pub struct Done {
    pub backup_ids: Vec<String>,
    pub cause: Option<String>,
}

impl CliJob {
    /// The job `command` runs, `None` for commands that do not notify (read-only ones,
    /// dry runs, and `migrate`, which sends its own).
    pub fn of(command: &Command) -> Option<CliJob> {
        let make = |job, keys, what: &str| {
            Some(CliJob {
                job,
                keys,
                what: what.to_string(),
            })
        };
        match command {
            Command::Backup(a) => {
                let (job, keys): (_, &'static [&'static str]) = match a.kind {
                    KindArg::Physical | KindArg::Incremental => ("physical", &["physical"]),
                    KindArg::Logical => ("logical", &["logical"]),
                    KindArg::Both => ("backup", &["physical", "logical"]),
                };
                let kind = match a.kind {
                    KindArg::Both => "physical and logical",
                    _ => job,
                };
                let label = a
                    .label
                    .as_deref()
                    .map(|l| format!(" (label {l})"))
                    .unwrap_or_default();
                make(job, keys, &format!("on-demand {kind} backup{label}"))
            }
            Command::Restore(a) if !a.dry_run => {
                let what = match &a.logical {
                    Some(id) => format!("logical restore of backup {id}"),
                    None => "restore".to_string(),
                };
                make("restore", &["restore"], &what)
            }
            Command::Verify(_) => make("verify", &["verify"], "verification"),
            Command::Archive(a) if !a.dry_run => make("archive", &["archive"], "archival"),
            _ => None,
        }
    }
}

/// Notify the end of `job` (if `notify.on` wants it) and wait for the delivery.
pub async fn finished(
    cfg: &Config,
    job: CliJob,
    took: Duration,
    res: &anyhow::Result<()>,
    done: Done,
) {
    let outcome = crate::notify::job_outcome(cfg, job.keys, res.is_ok());
    let summary = match outcome {
        Outcome::Failure => format!("{} failed", job.what),
        Outcome::Success => format!("{} succeeded", job.what),
        Outcome::Recovery => format!("{} succeeded after failing before", job.what),
    };
    let mut a = Alert::job(cfg, job.job, outcome, summary, took);
    a.backup_ids = done.backup_ids;
    if let Err(e) = res {
        a.error = Some(done.cause.unwrap_or_else(|| format!("{e:#}")));
    }
    send(cfg, a).await;
}

/// Send one alert through the configured webhook and wait at most `notify.timeout` for
/// its delivery: the process ends right after.
pub async fn send(cfg: &Config, alert: Alert) {
    if cfg.notify.webhook_url.is_none() && cfg.notify.webhook_url_file.is_none() {
        if alert.result == Outcome::Failure {
            tracing::debug!("no webhook configured ([notify]): nothing sent");
        }
        return;
    }
    match Notifier::start(cfg) {
        Ok(n) => {
            n.send(alert);
            n.finish().await;
        }
        Err(e) => tracing::warn!("cannot send the notification: {e:#}"),
    }
}
