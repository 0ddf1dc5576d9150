//! `backupctl daemon`: runs the jobs `[schedule]` names, as a systemd `Type=notify`
//! service. See docs/daemon.md.
//!
//! One task owns all state (this loop); jobs run as spawned tasks and report back a
//! [`history::RunRecord`]. The loop wakes at least once a second to: fire due jobs (a job
//! still running when its next occurrence comes is skipped with a WARN), ping the
//! watchdog, refresh the observation behind `/metrics`, and react to signals:
//!
//! - SIGHUP: reload the config; an invalid one is refused with an ERROR and the old one
//!   stays in force. Running jobs finish with the config they started with.
//! - SIGTERM/SIGINT: stop scheduling, give running jobs `daemon.shutdown_grace`, then
//!   cancel them (dropping their futures: the job lock, the PostgreSQL session and the
//!   in-flight uploads go with them, S3 multipart uploads are aborted) and remove the
//!   objects of a backup that will never get its manifest; exit 0. A second signal
//!   cancels at once.

pub mod jobs;
pub mod metrics;
pub mod observe;
pub mod runner;
pub mod scheduler;
pub mod server;

pub mod systemd;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::{JoinError, JoinSet};

use crate::config::Config;
use crate::daemon::metrics::Snapshot;
use crate::daemon::observe::Observation;
use crate::daemon::scheduler::{Schedule, Ticker};
use crate::jobs::history::{self, Outcome, RunRecord};
use crate::jobs::JobKind;
use crate::lock;
use crate::notify::{Alert, Event, Notifier};

/// PostgreSQL's archiver is read this often; the repository less often (it lists every
/// backup and WAL object) and after every finished run.
const ARCHIVER_EVERY: Duration = Duration::from_secs(30);
const REPO_EVERY: Duration = Duration::from_secs(300);
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// While the newest verified backup stays too old, the alert repeats this often.
const TOO_OLD_REMINDER: Duration = Duration::from_secs(24 * 3600);
/// How long queued alerts may take to go out when the daemon exits.
const ALERT_DRAIN: Duration = Duration::from_secs(10);

/// What the HTTP endpoint reads.
pub struct Shared {
    snapshot: Mutex<Snapshot>,
    heartbeat: Mutex<Instant>,
}

impl Shared {
    pub fn render_metrics(&self) -> String {
        let s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        metrics::render(&s, Utc::now())
    }

    pub fn since_heartbeat(&self) -> Duration {
        self.heartbeat
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX)
    }

    fn beat(&self) {
        if let Ok(mut t) = self.heartbeat.lock() {
            *t = Instant::now();
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }
}

struct RunningJob {
    run_id: String,
    start: DateTime<Utc>,
    task: tokio::task::Id,
}

struct Daemon {
    cfg: Arc<Config>,
    schedule: Schedule,
    ticker: Ticker,
    shared: Arc<Shared>,
    notifier: Notifier,
    running: BTreeMap<JobKind, RunningJob>,
    tasks: JoinSet<RunRecord>,
    started: DateTime<Utc>,
    /// When the "too old" alert last went out while the condition holds.
    too_old_alerted: Option<Instant>,
    server: Option<(String, tokio::task::JoinHandle<()>)>,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("install the SIGHUP handler")?,
        })
    }
}

/// The next SIGTERM or SIGINT.
async fn stop_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Run the daemon until SIGTERM; with `run_once`, every scheduled job once, its outcome
/// printed (as JSON with `json`).
pub async fn run(cfg: &Config, run_once: bool, json: bool) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg.clone());
    let schedule = Schedule::from_config(&cfg.schedule)?;
    if run_once && schedule.is_empty() {
        return Err(crate::user_error!(
            "{}: [schedule] names no job, so --run-once has nothing to run; add e.g. physical = \"0 3 * * *\"",
            cfg.origin()
        ));
    }
    // Signals first: a SIGTERM during start-up must not kill the process uncleanly.
    let mut signals = Signals::new()?;
    // Only one scheduling daemon per host (`--run-once` may run next to it: the job
    // locks keep them apart).
    let _singleton = if run_once {
        None
    } else {
        let dir = cfg.backup.state_dir.clone();
        match tokio::task::spawn_blocking(move || lock::try_acquire(&dir, "daemon")).await?? {
            Ok(l) => Some(l),
            Err(holder) => {
                return Err(crate::error::LockHeld {
                    message: format!(
                        "a backupctl daemon is already running with backup.state_dir {} ({holder}); stop it first",
                        cfg.backup.state_dir.display()
                    ),
                    lock: "daemon".into(),
                    holder,
                    by_this_process: false,
                }
                .into())
            }
        }
    };
    check_repository(&cfg).await?;
    let history = history::update(&cfg.backup.state_dir, |h| h.clear_dead_runs())
        .context("open the daemon's job history (backup.state_dir)")?;
    let notifier = Notifier::start(&cfg)?;
    let now = Utc::now();
    let shared = Arc::new(Shared {
        snapshot: Mutex::new(Snapshot::new(now, history)),
        heartbeat: Mutex::new(Instant::now()),
    });
    let mut d = Daemon {
        ticker: Ticker::new(&schedule, now),
        schedule,
        cfg,
        shared,
        notifier,
        running: BTreeMap::new(),
        tasks: JoinSet::new(),
        started: now,
        too_old_alerted: None,
        server: None,
    };
    if run_once {
        return d.run_once(json, &mut signals).await;
    }
    if let Some(listen) = d.cfg.metrics.listen.clone() {
        let listener = server::bind(&listen).await?;
        let task = tokio::spawn(server::serve(listener, d.shared.clone()));
        tracing::info!(listen = %listen, "serving /metrics and /healthz");
        d.server = Some((listen, task));
    }
    d.update_next_runs();
    if d.schedule.is_empty() {
        tracing::warn!("[schedule] names no job: the daemon only serves metrics and alerts");
    }
    tracing::info!(
        config = %d.cfg.origin(),
        jobs = %d.schedule.entries.iter().map(|e| format!("{}={:?}", e.kind, e.expr)).collect::<Vec<_>>().join(" "),
        timezone = %d.schedule.tz,
        "daemon started"
    );
    systemd::ready(&d.status_line());
    d.main_loop(&mut signals).await;
    Ok(())
}

/// Log when PostgreSQL or the repository becomes unreachable, and when it is back (once
/// per change, not on every look).
fn log_reachability<A, B>(what: &str, old: &Result<A, String>, new: &Result<B, String>) {
    match (old, new) {
        (Ok(_), Err(e)) => tracing::warn!(error = %e, "{what} is unreachable"),
        (Err(_), Ok(_)) => tracing::info!("{what} is reachable again"),
        _ => {}
    }
}

/// `READY=1` only once the repository answers: a daemon that cannot store anything is
/// not running. The error says where the repository is and what failed.
async fn check_repository(cfg: &Config) -> anyhow::Result<()> {
    let repo = crate::repo::open(cfg).await?;
    repo.head(crate::repo::layout::REPO_JSON)
        .await
        .with_context(|| {
            format!(
                "reach the repository {} (check [repository] and its credentials; `backupctl check` tells more)",
                repo.describe()
            )
        })?;
    Ok(())
}

impl Daemon {
    async fn main_loop(&mut self, signals: &mut Signals) {
        let watchdog = systemd::watchdog_interval();
        let mut last_ping = Instant::now();
        let mut last_archiver: Option<Instant> = None;
        let mut last_repo: Option<Instant> = None;
        let mut repo_wanted = true;
        let mut observing: Option<tokio::task::JoinHandle<(Observation, bool)>> = None;
        if watchdog.is_some() {
            systemd::watchdog();
        }
        loop {
            let mut nap = Duration::from_secs(1);
            if let Some(w) = watchdog {
                nap = nap.min(w);
            }
            if let Some(next) = self.ticker.next_wakeup() {
                let until = (next - Utc::now()).to_std().unwrap_or_default();
                nap = nap.min(until + Duration::from_millis(5));
            }
            tokio::select! {
                sig = stop_signal(&mut signals.term, &mut signals.int) => {
                    tracing::info!("{sig}: stopping");
                    break;
                }
                _ = signals.hup.recv() => self.reload().await,
                Some(res) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.finished(res);
                    repo_wanted = true;
                }
                res = async { observing.as_mut().expect("guarded").await }, if observing.is_some() => {
                    observing = None;
                    if let Ok((obs, with_repo)) = res {
                        self.observed(obs, with_repo);
                    }
                }
                _ = tokio::time::sleep(nap) => {}
            }
            self.shared.beat();
            if let Some(w) = watchdog {
                if last_ping.elapsed() >= w {
                    systemd::watchdog();
                    last_ping = Instant::now();
                }
            }
            for due in self.ticker.due(&self.schedule, Utc::now()) {
                self.fire(due);
            }
            if observing.is_none() {
                let archiver_due = last_archiver.is_none_or(|t| t.elapsed() >= ARCHIVER_EVERY);
                let repo_due = repo_wanted || last_repo.is_none_or(|t| t.elapsed() >= REPO_EVERY);
                if archiver_due || repo_due {
                    last_archiver = Some(Instant::now());
                    if repo_due {
                        last_repo = Some(Instant::now());
                        repo_wanted = false;
                    }
                    let cfg = self.cfg.clone();
                    observing = Some(tokio::spawn(async move {
                        (
                            observe::observe(&cfg, OBSERVE_TIMEOUT, repo_due).await,
                            repo_due,
                        )
                    }));
                }
            }
        }
        if let Some(o) = observing {
            o.abort();
        }
        self.shutdown(signals).await;
    }

    fn fire(&mut self, due: scheduler::Due) {
        let kind = due.kind;
        if due.missed > 0 {
            tracing::warn!(job = %kind, missed = due.missed, "{} scheduled runs of the {} passed without a run (clock jump or stalled host); running once now", due.missed, kind.describe());
        }
        if let Some(r) = self.running.get(&kind) {
            tracing::warn!(job = %kind, run = %r.run_id, "skipping the {} due at {}: the previous run (started {}) is still running", kind.describe(), due.at.to_rfc3339(), r.start.to_rfc3339());
            self.shared
                .with(|s| *s.skipped_ticks.entry(kind).or_default() += 1);
            return;
        }
        self.start(kind);
    }

    fn start(&mut self, kind: JobKind) {
        let start = Utc::now();
        let run_id = runner::new_run_id(kind, start);
        self.record_history(|h| h.start(kind, &run_id, start));
        let task = self
            .tasks
            .spawn(runner::run(self.cfg.clone(), kind, run_id.clone()))
            .id();
        self.running.insert(
            kind,
            RunningJob {
                run_id,
                start,
                task,
            },
        );
        systemd::status(&self.status_line());
    }

    fn finished(&mut self, res: Result<(tokio::task::Id, RunRecord), JoinError>) {
        let record = match res {
            Ok((_, r)) => r,
            Err(e) => {
                // A panic in a job: record it as a failure of that job.
                let Some((&kind, _)) = self.running.iter().find(|(_, r)| r.task == e.id()) else {
                    tracing::error!(error = %e, "a job task ended abnormally");
                    return;
                };
                let r = self.running.get(&kind).expect("found above");
                RunRecord {
                    kind,
                    run_id: r.run_id.clone(),
                    start: r.start,
                    end: Utc::now(),
                    outcome: if e.is_cancelled() {
                        Outcome::Cancelled
                    } else {
                        Outcome::Failed
                    },
                    attempts: 1,
                    error: Some(format!("the job task ended abnormally: {e}")),
                    report: None,
                }
            }
        };
        self.running.remove(&record.kind);
        self.record(&record);
        systemd::status(&self.status_line());
    }

    /// History, metrics, alerts for a finished run.
    fn record(&mut self, r: &RunRecord) {
        self.record_history(|h| h.finish(r));
        self.shared
            .with(|s| *s.runs.entry((r.kind, r.outcome)).or_default() += 1);
        self.update_next_runs();
        let failures = r
            .report
            .as_ref()
            .map(|rep| rep.verification_failures.clone())
            .unwrap_or_default();
        // Skipped and cancelled runs say nothing about the job's health.
        if !matches!(r.outcome, Outcome::Success | Outcome::Failed) {
            return;
        }
        let ok = r.outcome == Outcome::Success && failures.is_empty();
        let result = crate::notify::job_outcome(&self.cfg, &[r.kind.as_str()], ok);
        let took = (r.end - r.start).to_std().unwrap_or_default();
        let next_run = self
            .shared
            .with(|s| s.next_runs.get(&r.kind).copied().flatten());
        let attempts = format!(
            "{} attempt{}",
            r.attempts,
            if r.attempts == 1 { "" } else { "s" }
        );
        let summary = if !failures.is_empty() {
            format!("verification failed for {} backup(s)", failures.len())
        } else if ok {
            let what = r.report.as_ref().map(|rep| rep.summary.as_str());
            format!(
                "{} succeeded: {}",
                r.kind.describe(),
                what.unwrap_or("done")
            )
        } else {
            format!("{} failed after {attempts}", r.kind.describe())
        };
        let mut a = Alert::job(&self.cfg, r.kind.as_str(), result, summary, took);
        a.run_id = Some(r.run_id.clone());
        a.attempts = Some(r.attempts);
        if ok {
            a.backup_ids = r
                .report
                .as_ref()
                .filter(|_| {
                    matches!(
                        r.kind,
                        JobKind::Physical | JobKind::Incremental | JobKind::Logical
                    )
                })
                .map(|rep| rep.backup_ids.clone())
                .unwrap_or_default();
        } else {
            a.error = r.error.clone();
            // One alert per failure: a run that failed because a test restore failed is
            // reported as that verification failure, not also as a failed job.
            if !failures.is_empty() {
                a.event = Event::VerificationFailed;
                a.failures = failures;
            }
            let next = next_run.map_or_else(
                || "it is not scheduled again".to_string(),
                |t| {
                    format!(
                        "the next scheduled run is at {}",
                        t.with_timezone(&self.cfg.display_zone())
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                },
            );
            a.next_action = Some(format!(
                "find and fix the cause, then run `backupctl check`; {next}"
            ));
        }
        self.notifier.send(a);
    }

    fn record_history(&self, change: impl FnOnce(&mut history::History)) {
        match history::update(&self.cfg.backup.state_dir, change) {
            Ok(h) => self.shared.with(|s| s.history = h),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot record the job history in backup.state_dir")
            }
        }
    }

    fn observed(&mut self, obs: Observation, with_repo: bool) {
        let max_age = self.cfg.notify.max_age;
        let stale = self.shared.with(|s| {
            let old = s.observation.take();
            if let Some(old) = &old {
                log_reachability("PostgreSQL", &old.archiver, &obs.archiver);
                if with_repo {
                    log_reachability("the repository", &old.repo, &obs.repo);
                }
            }
            let merged = match (old, with_repo) {
                (Some(old), false) => Observation {
                    repo: old.repo,
                    ..obs
                },
                _ => obs,
            };
            s.wal_backlog = crate::ops::wal::backlog::statuses(&self.cfg);
            s.alerts_sent = self.notifier.sent.load(std::sync::atomic::Ordering::SeqCst);
            s.alerts_failed = self
                .notifier
                .failed
                .load(std::sync::atomic::Ordering::SeqCst);
            let stale = match (max_age, &merged.repo) {
                (Some(max), Ok(facts)) => Some(observe::staleness(
                    facts.newest_verified(),
                    max,
                    merged.at,
                    self.started,
                )),
                _ => None,
            };
            s.observation = Some(merged);
            if let Some(st) = &stale {
                s.too_old = Some(st.is_some());
            }
            stale
        });
        match stale {
            Some(Some(reason)) => {
                let due = self
                    .too_old_alerted
                    .is_none_or(|t| t.elapsed() >= TOO_OLD_REMINDER);
                if due {
                    self.too_old_alerted = Some(Instant::now());
                    self.notifier
                        .send(Alert::new(&self.cfg, Event::BackupTooOld, reason));
                }
            }
            Some(None) if self.too_old_alerted.take().is_some() => {
                tracing::info!("the newest verified backup is within notify.max_age again");
            }
            _ => {}
        }
    }

    fn update_next_runs(&self) {
        let now = Utc::now();
        let next: BTreeMap<JobKind, Option<DateTime<Utc>>> = self
            .schedule
            .kinds()
            .map(|k| {
                (
                    k,
                    self.ticker
                        .next_of(k)
                        .or_else(|| self.schedule.next_after(k, now)),
                )
            })
            .collect();
        // The gap after the next run is the schedule's current period.
        let intervals = next
            .iter()
            .filter_map(|(k, n)| {
                let n = (*n)?;
                let after = self.schedule.next_after(*k, n)?;
                Some((*k, observe::secs_between(n, after)))
            })
            .collect();
        let r = &self.cfg.retention;
        let keep_within = [("physical", &r.physical), ("logical", &r.logical)]
            .into_iter()
            .filter_map(|(k, rule)| Some((k, rule.keep_within?.as_secs_f64())))
            .collect();
        self.shared.with(|s| {
            s.next_runs = next;
            s.intervals = intervals;
            s.keep_within = keep_within;
        });
    }

    /// `STATUS=`: the running jobs, or the next one.
    fn status_line(&self) -> String {
        if !self.running.is_empty() {
            let jobs: Vec<String> = self
                .running
                .iter()
                .map(|(k, r)| format!("{} (run {})", k.describe(), r.run_id))
                .collect();
            return format!("running: {}", jobs.join(", "));
        }
        let next = self
            .schedule
            .kinds()
            .filter_map(|k| Some((self.ticker.next_of(k)?, k)))
            .min();
        match next {
            Some((t, k)) => format!(
                "idle; next: {} at {}",
                k.describe(),
                t.with_timezone(&self.cfg.display_zone())
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => "idle; no job scheduled".into(),
        }
    }

    async fn reload(&mut self) {
        systemd::reloading();
        let outcome = self.try_reload().await;
        let ok = outcome.is_ok();
        match outcome {
            Ok(()) => tracing::info!(config = %self.cfg.origin(), "configuration reloaded"),
            Err(e) => tracing::error!(
                "configuration reload refused, the previous configuration stays in force: {e:#}"
            ),
        }
        self.shared.with(|s| s.last_reload = Some((Utc::now(), ok)));
        self.update_next_runs();
        systemd::ready(&self.status_line());
    }

    /// Everything fallible first; the new config is applied only when all of it worked.
    async fn try_reload(&mut self) -> anyhow::Result<()> {
        let source = self.cfg.source.clone();
        let mut new =
            tokio::task::spawn_blocking(move || Config::load(source.as_deref())).await??;
        // `--repo` given at start still applies.
        if let Some(name) = &self.cfg.selected_repository {
            new.select_repository(name)?;
        }
        let schedule = Schedule::from_config(&new.schedule)?;
        if new.backup.state_dir != self.cfg.backup.state_dir {
            anyhow::bail!(
                "key `backup.state_dir` changed; job locks and history live there, so restart the daemon to use the new directory"
            );
        }
        let mut server = None;
        if new.metrics.listen != self.cfg.metrics.listen {
            if let Some(listen) = &new.metrics.listen {
                // Free the old port first if the new address reuses it.
                if let Some((_, task)) = self.server.take() {
                    task.abort();
                    let _ = task.await;
                }
                let listener = server::bind(listen).await?;
                server = Some((listen.clone(), listener));
            }
        }
        self.notifier.reconfigure(&new)?;
        if new.log.format != self.cfg.log.format || new.log.level != self.cfg.log.level {
            tracing::warn!("[log] changes take effect when the daemon restarts");
        }
        match server {
            Some((listen, listener)) => {
                let task = tokio::spawn(server::serve(listener, self.shared.clone()));
                tracing::info!(listen = %listen, "serving /metrics and /healthz");
                self.server = Some((listen, task));
            }
            None if new.metrics.listen.is_none() => {
                if let Some((_, task)) = self.server.take() {
                    task.abort();
                }
            }
            None => {}
        }
        self.ticker = Ticker::new(&schedule, self.ticker.last());
        self.schedule = schedule;
        self.cfg = Arc::new(new);
        Ok(())
    }

    async fn shutdown(&mut self, signals: &mut Signals) {
        let grace = self.cfg.daemon.shutdown_grace;
        if !self.running.is_empty() {
            let names: Vec<&str> = self.running.keys().map(|k| k.describe()).collect();
            tracing::info!(
                "waiting up to {} (daemon.shutdown_grace) for: {}",
                crate::text::config_duration(grace),
                names.join(", ")
            );
            systemd::stopping(&format!(
                "stopping: waiting for {} (up to {})",
                names.join(", "),
                crate::text::config_duration(grace)
            ));
            let deadline = tokio::time::Instant::now() + grace;
            while !self.tasks.is_empty() {
                tokio::select! {
                    Some(res) = self.tasks.join_next_with_id() => self.finished(res),
                    _ = tokio::time::sleep_until(deadline) => break,
                    sig = stop_signal(&mut signals.term, &mut signals.int) => {
                        tracing::warn!("{sig} again: cancelling the running jobs now");
                        break;
                    }
                }
            }
        } else {
            systemd::stopping("stopping");
        }
        self.cancel_all().await;
        if let Some((_, task)) = self.server.take() {
            task.abort();
        }
        self.notifier.drain(ALERT_DRAIN).await;
        tracing::info!("daemon stopped");
    }

    /// Cancel every running job cleanly and record it.
    async fn cancel_all(&mut self) {
        if self.running.is_empty() {
            return;
        }
        self.tasks.abort_all();
        while let Some(res) = self.tasks.join_next_with_id().await {
            if let Ok((_, r)) = res {
                // Finished in the meantime.
                self.running.remove(&r.kind);
                self.record(&r);
            }
        }
        // In-flight uploads abort in the background when their futures drop; let that
        // finish before looking for leftovers.
        if !crate::repo::wait_background(Duration::from_secs(10)).await {
            tracing::warn!(
                "some unfinished uploads are still being aborted; retention removes what is left"
            );
        }
        let grace = self.cfg.daemon.shutdown_grace;
        for (kind, r) in std::mem::take(&mut self.running) {
            tracing::warn!(job = %kind, run = %r.run_id, "cancelled the {} after daemon.shutdown_grace", kind.describe());
            let removed = runner::remove_unfinished(&self.cfg, kind, r.start).await;
            let record = RunRecord {
                kind,
                run_id: r.run_id,
                start: r.start,
                end: Utc::now(),
                outcome: Outcome::Cancelled,
                attempts: 1,
                error: Some(format!(
                    "cancelled by a daemon shutdown after daemon.shutdown_grace ({}){}",
                    crate::text::config_duration(grace),
                    if removed > 0 {
                        "; the unfinished backup's objects were removed"
                    } else {
                        ""
                    }
                )),
                report: None,
            };
            self.record(&record);
        }
    }

    /// `--run-once`: every scheduled job once, in [`JobKind::ALL`] order, then exit
    /// (1 if any failed). The demo and cron-style setups use it.
    async fn run_once(&mut self, json: bool, signals: &mut Signals) -> anyhow::Result<()> {
        let kinds: Vec<JobKind> = JobKind::ALL
            .into_iter()
            .filter(|k| self.schedule.kinds().any(|s| s == *k))
            .collect();
        let mut results = vec![];
        for kind in kinds {
            self.start(kind);
            tokio::select! {
                Some(res) = self.tasks.join_next_with_id() => {
                    if let Ok((_, r)) = &res {
                        results.push(r.clone());
                    }
                    self.finished(res);
                }
                sig = stop_signal(&mut signals.term, &mut signals.int) => {
                    tracing::info!("{sig}: stopping");
                    self.shutdown(signals).await;
                    return Err(crate::error::Reported::quiet().into());
                }
            }
        }
        self.notifier.drain(ALERT_DRAIN).await;
        let failed = results.iter().any(|r| r.outcome == Outcome::Failed);
        if json {
            let v: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "job": r.kind,
                        "run_id": r.run_id,
                        "outcome": r.outcome,
                        "attempts": r.attempts,
                        "error": r.error,
                        "report": r.report,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "ok": !failed, "runs": v }))?
            );
        } else {
            for r in &results {
                let detail = match (&r.report, &r.error) {
                    (Some(rep), _) => rep.summary.clone(),
                    (None, Some(e)) => e.clone(),
                    (None, None) => String::new(),
                };
                println!("{:<10} {:<9} {detail}", r.kind.as_str(), r.outcome.as_str());
            }
        }
        if failed {
            return Err(crate::error::Reported::quiet().into());
        }
        Ok(())
    }
}
