//! The daemon's job history: `<backup.state_dir>/daemon-state.json`.
//!
//! Written atomically (temp file, fsync, rename, directory fsync) when a run starts and
//! when it ends, so `backupctl info` — a separate process — can show each job's last
//! outcome, and a restarted daemon's metrics keep the last success and failure times.
//! The repository stays the source of truth for backups; this file only says what the
//! daemon did. It holds no secrets (errors never carry passwords or the webhook URL).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{JobKind, JobReport};

pub const FILE: &str = "daemon-state.json";
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failed,
    /// Another process held the job's lock (e.g. an on-demand backup): nothing ran.
    Skipped,
    /// Cancelled by a shutdown after `daemon.shutdown_grace`.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::Skipped,
        Outcome::Cancelled,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// A run in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub run_id: String,
    pub since: DateTime<Utc>,
    /// The process running it (a daemon, or `daemon --run-once`).
    pub pid: u32,
}

impl Running {
    /// Whether the process that started the run is still alive (else it died mid-run).
    pub fn alive(&self) -> bool {
        rustix::process::Pid::from_raw(self.pid as i32)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    }
}

/// What the daemon knows about one job kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    pub last_run_id: Option<String>,
    pub last_start: Option<DateTime<Utc>>,
    pub last_end: Option<DateTime<Utc>>,
    pub last_outcome: Option<Outcome>,
    /// Attempts the last run made (1 + retries).
    #[serde(default)]
    pub last_attempts: u32,
    pub last_duration_secs: Option<f64>,
    /// The last run's error (failed, skipped, cancelled).
    pub last_error: Option<String>,
    /// The last successful run's report.
    pub last_report: Option<JobReport>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub kind: JobKind,
    pub run_id: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub outcome: Outcome,
    pub attempts: u32,
    pub error: Option<String>,
    pub report: Option<JobReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub format: u32,
    /// The daemon process that wrote the file last.
    pub pid: Option<u32>,
    pub updated: Option<DateTime<Utc>>,
    #[serde(default)]
    pub jobs: BTreeMap<JobKind, JobHistory>,
}

impl History {
    pub fn job(&self, kind: JobKind) -> Option<&JobHistory> {
        self.jobs.get(&kind)
    }

    pub fn start(&mut self, kind: JobKind, run_id: &str, since: DateTime<Utc>) {
        self.jobs.entry(kind).or_default().running = Some(Running {
            run_id: run_id.to_string(),
            since,
            pid: std::process::id(),
        });
    }

    pub fn finish(&mut self, r: &RunRecord) {
        let j = self.jobs.entry(r.kind).or_default();
        j.running = None;
        j.last_run_id = Some(r.run_id.clone());
        j.last_start = Some(r.start);
        j.last_end = Some(r.end);
        j.last_outcome = Some(r.outcome);
        j.last_attempts = r.attempts;
        j.last_duration_secs = Some((r.end - r.start).num_milliseconds() as f64 / 1000.0);
        j.last_error = r.error.clone();
        match r.outcome {
            Outcome::Success => {
                j.last_success = Some(r.end);
                j.last_report = r.report.clone();
            }
            Outcome::Failed | Outcome::Cancelled => j.last_failure = Some(r.end),
            Outcome::Skipped => {}
        }
    }

    /// Forget runs whose process died before it could record their end.
    pub fn clear_dead_runs(&mut self) {
        for j in self.jobs.values_mut() {
            if j.running.as_ref().is_some_and(|r| !r.alive()) {
                j.running = None;
            }
        }
    }
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Read the history; absent = empty. A damaged file is reported and replaced.
pub fn load(state_dir: &Path) -> anyhow::Result<History> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => match serde_json::from_slice::<History>(&bytes) {
            Ok(h) => Ok(h),
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "the daemon's job history is damaged; starting a new one");
                Ok(History::default())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// Apply `change` to the history on disk and return the result. Read-modify-write under
/// the `daemon-state` lock, so a daemon and a `daemon --run-once` recording different
/// jobs never lose each other's updates.
pub fn update(state_dir: &Path, change: impl FnOnce(&mut History)) -> anyhow::Result<History> {
    let _lock = crate::lock::acquire(
        state_dir,
        "daemon-state",
        crate::lock::Wait::Up(std::time::Duration::from_secs(30)),
    )?;
    let mut h = load(state_dir)?;
    change(&mut h);
    store(state_dir, &h)?;
    Ok(h)
}

/// Write `value` as pretty JSON into `path` (a file in `dir`) atomically: a temp file
/// beside it, fsynced, renamed over it, the directory fsynced. Readers see the old file
/// or the new one, never a part. Shared by the state files in `backup.state_dir`.
pub fn write_json_atomically<T: Serialize>(
    dir: &Path,
    path: &Path,
    value: &T,
) -> anyhow::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".state-")
        .tempfile_in(dir)
        .with_context(|| format!("create a temp file in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Write the history atomically.
fn store(state_dir: &Path, h: &History) -> anyhow::Result<()> {
    let mut h = h.clone();
    h.format = FORMAT;
    h.pid = Some(std::process::id());
    h.updated = Some(Utc::now());
    let p = path(state_dir);
    std::fs::create_dir_all(state_dir).with_context(|| {
        format!(
            "create state directory {} (backup.state_dir)",
            state_dir.display()
        )
    })?;
    write_json_atomically(state_dir, &p, &h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(outcome: Outcome, secs: i64) -> RunRecord {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap();
        RunRecord {
            kind: JobKind::Physical,
            run_id: format!("r{secs}"),
            start,
            end: start + chrono::Duration::seconds(secs),
            outcome,
            attempts: 1,
            error: (outcome != Outcome::Success).then(|| "boom".into()),
            report: (outcome == Outcome::Success).then(|| JobReport {
                summary: "ok".into(),
                bytes: Some(42),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn outcomes_update_the_right_timestamps() {
        let mut h = History::default();
        h.start(JobKind::Physical, "r10", Utc::now());
        assert!(h.job(JobKind::Physical).unwrap().running.is_some());
        h.finish(&record(Outcome::Success, 10));
        let j = h.job(JobKind::Physical).unwrap().clone();
        assert!(j.running.is_none());
        assert_eq!(j.last_outcome, Some(Outcome::Success));
        assert_eq!(j.last_duration_secs, Some(10.0));
        assert_eq!(j.last_report.as_ref().unwrap().bytes, Some(42));
        assert!(j.last_failure.is_none());

        // A skip changes neither the last success nor the last failure.
        h.finish(&record(Outcome::Skipped, 0));
        let k = h.job(JobKind::Physical).unwrap();
        assert_eq!(k.last_success, j.last_success);
        assert_eq!(k.last_failure, None);
        assert_eq!(k.last_report, j.last_report);

        h.finish(&record(Outcome::Cancelled, 5));
        let k = h.job(JobKind::Physical).unwrap();
        assert!(k.last_failure.is_some());
        assert_eq!(k.last_error.as_deref(), Some("boom"));
    }

    #[test]
    fn round_trips_through_the_state_dir_and_tolerates_damage() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().jobs.is_empty());
        let mut h = History::default();
        h.finish(&record(Outcome::Failed, 3));
        store(d.path(), &h).unwrap();
        let back = load(d.path()).unwrap();
        assert_eq!(back.jobs, h.jobs);
        assert_eq!(back.pid, Some(std::process::id()));
        // No temp files left next to it.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(".daemon-state-")),
            "{names:?}"
        );
        assert!(names.contains(&FILE.to_string()));
        let h2 = update(d.path(), |h| h.start(JobKind::Logical, "x", Utc::now())).unwrap();
        assert_eq!(h2.jobs.len(), 2);
        assert_eq!(load(d.path()).unwrap().jobs.len(), 2);
        std::fs::write(path(d.path()), b"{not json").unwrap();
        assert!(load(d.path()).unwrap().jobs.is_empty());
    }
}
