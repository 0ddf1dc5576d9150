//! Prometheus text exposition (format 0.0.4) of what the daemon knows: its job history,
//! the last observation of PostgreSQL and the repository, alert delivery.
//!
//! The exposition is rendered from one [`Snapshot`] by a pure function, so the metric
//! names, label escaping and number formatting are tested without a server. Every
//! metric is listed in docs/daemon.md.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::daemon::observe::{secs_between, Observation};
use crate::jobs::history::{History, Outcome};
use crate::jobs::JobKind;

/// Everything `/metrics` shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub started: DateTime<Utc>,
    pub version: &'static str,
    pub history: History,
    /// Scheduled jobs and their next occurrence.
    pub next_runs: BTreeMap<JobKind, Option<DateTime<Utc>>>,
    /// Seconds between a scheduled job's next occurrence and the one after it: how often
    /// the schedule runs it now (alert rules derive "overdue" from it).
    pub intervals: BTreeMap<JobKind, f64>,
    /// `retention.<kind>.keep_within` in seconds, by backup kind (`physical`, `logical`):
    /// how far back the retention policy promises recovery.
    pub keep_within: BTreeMap<&'static str, f64>,
    /// Runs since the daemon started, by outcome.
    pub runs: BTreeMap<(JobKind, Outcome), u64>,
    /// Ticks skipped because the previous run of the job was still running.
    pub skipped_ticks: BTreeMap<JobKind, u64>,
    pub observation: Option<Observation>,
    /// Whether the newest verified backup is older than `notify.max_age` (None = not set).
    pub too_old: Option<bool>,
    pub last_reload: Option<(DateTime<Utc>, bool)>,
    pub alerts_sent: u64,
    pub alerts_failed: u64,
    /// WAL waiting for each repository with `required = false`.
    pub wal_backlog: Vec<crate::ops::wal::backlog::BacklogStatus>,
}

impl Snapshot {
    pub fn new(started: DateTime<Utc>, history: History) -> Snapshot {
        Snapshot {
            started,
            version: env!("CARGO_PKG_VERSION"),
            history,
            next_runs: BTreeMap::new(),
            wal_backlog: Vec::new(),
            intervals: BTreeMap::new(),
            keep_within: BTreeMap::new(),
            runs: BTreeMap::new(),
            skipped_ticks: BTreeMap::new(),
            observation: None,
            too_old: None,
            last_reload: None,
            alerts_sent: 0,
            alerts_failed: 0,
        }
    }
}

/// Writes metric families; each family's HELP/TYPE once, then its samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A family with one sample per present value.
    fn gauge_per<'a, I>(&mut self, name: &str, help: &str, label: &str, values: I)
    where
        I: IntoIterator<Item = (&'a str, Option<f64>)>,
    {
        let values: Vec<_> = values
            .into_iter()
            .filter_map(|(l, v)| Some((l, v?)))
            .collect();
        if values.is_empty() {
            return;
        }
        self.family(name, "gauge", help);
        for (l, v) in values {
            self.sample(name, &[(label, l)], v);
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.family(name, "gauge", help);
            self.sample(name, &[], v);
        }
    }
}

/// Label values escape `\`, `"` and newlines.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text escapes `\` and newlines.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The exposition at `now`.
pub fn render(s: &Snapshot, now: DateTime<Utc>) -> String {
    let mut o = Out {
        text: String::with_capacity(8192),
    };
    o.family(
        "backupctl_build_info",
        "gauge",
        "Always 1; the version label says which backupctl runs.",
    );
    o.sample("backupctl_build_info", &[("version", s.version)], 1.0);
    o.gauge_per(
        "backupctl_wal_backlog_files",
        "WAL files waiting for a repository with required = false (see docs/configuration.md).",
        "repository",
        s.wal_backlog
            .iter()
            .map(|b| (b.repository.as_str(), Some(b.files as f64))),
    );
    o.gauge_per(
        "backupctl_wal_backlog_lost_files",
        "WAL files that can no longer reach a repository with required = false.",
        "repository",
        s.wal_backlog
            .iter()
            .map(|b| (b.repository.as_str(), Some(b.lost.len() as f64))),
    );
    o.gauge(
        "backupctl_daemon_start_timestamp_seconds",
        "When the daemon started (Unix time).",
        Some(ts(s.started)),
    );
    if let Some((at, ok)) = s.last_reload {
        o.gauge(
            "backupctl_config_last_reload_success",
            "1 if the last SIGHUP reload succeeded, 0 if the new config was refused (the old one is still in use).",
            Some(flag(ok)),
        );
        o.gauge(
            "backupctl_config_last_reload_timestamp_seconds",
            "When the config was last reloaded (Unix time).",
            Some(ts(at)),
        );
    }
    jobs(&mut o, s);
    o.gauge_per(
        "backupctl_retention_keep_within_seconds",
        "retention.<kind>.keep_within in seconds: how far back retention keeps backups of this kind (absent when the rule has no keep_within).",
        "kind",
        s.keep_within.iter().map(|(k, v)| (*k, Some(*v))),
    );
    if let Some(obs) = &s.observation {
        observation(&mut o, obs, now);
    }
    o.gauge(
        "backupctl_backup_too_old",
        "1 if the newest verified backup is older than notify.max_age (or none exists), else 0.",
        s.too_old.map(flag),
    );
    o.family(
        "backupctl_alerts_sent_total",
        "counter",
        "Alerts the webhook accepted.",
    );
    o.sample("backupctl_alerts_sent_total", &[], s.alerts_sent as f64);
    o.family(
        "backupctl_alerts_failed_total",
        "counter",
        "Alerts given up on after every delivery attempt failed.",
    );
    o.sample("backupctl_alerts_failed_total", &[], s.alerts_failed as f64);
    o.family(
        "backupctl_notifications_sent_total",
        "counter",
        "Notifications (failures, successes, recoveries, alerts) the webhook accepted.",
    );
    o.sample(
        "backupctl_notifications_sent_total",
        &[],
        s.alerts_sent as f64,
    );
    o.family(
        "backupctl_notifications_failed_total",
        "counter",
        "Notifications not delivered: every attempt failed or timed out (notify.timeout).",
    );
    o.sample(
        "backupctl_notifications_failed_total",
        &[],
        s.alerts_failed as f64,
    );
    o.text
}

fn jobs(o: &mut Out, s: &Snapshot) {
    // Scheduled jobs and any job with history.
    let mut kinds: Vec<JobKind> = s.next_runs.keys().copied().collect();
    kinds.extend(s.history.jobs.keys().copied());
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        return;
    }
    let h = |k: JobKind| s.history.job(k).cloned().unwrap_or_default();
    let per = |f: &dyn Fn(JobKind) -> Option<f64>| -> Vec<(&'static str, Option<f64>)> {
        kinds.iter().map(|k| (k.as_str(), f(*k))).collect()
    };
    o.gauge_per(
        "backupctl_job_scheduled",
        "1 for each job [schedule] runs.",
        "job",
        per(&|k| s.next_runs.contains_key(&k).then_some(1.0)),
    );
    o.gauge_per(
        "backupctl_job_next_run_timestamp_seconds",
        "Next scheduled run (Unix time).",
        "job",
        per(&|k| s.next_runs.get(&k).copied().flatten().map(ts)),
    );
    o.gauge_per(
        "backupctl_job_interval_seconds",
        "Seconds between the job's next scheduled run and the one after it.",
        "job",
        per(&|k| s.intervals.get(&k).copied()),
    );
    o.gauge_per(
        "backupctl_job_running",
        "1 while a run of the job is in progress.",
        "job",
        per(&|k| Some(flag(h(k).running.is_some()))),
    );
    o.gauge_per(
        "backupctl_job_last_start_timestamp_seconds",
        "Start of the job's last finished run (Unix time).",
        "job",
        per(&|k| h(k).last_start.map(ts)),
    );
    o.gauge_per(
        "backupctl_job_last_end_timestamp_seconds",
        "End of the job's last finished run (Unix time).",
        "job",
        per(&|k| h(k).last_end.map(ts)),
    );
    o.gauge_per(
        "backupctl_job_last_success_timestamp_seconds",
        "End of the job's last successful run (Unix time).",
        "job",
        per(&|k| h(k).last_success.map(ts)),
    );
    o.gauge_per(
        "backupctl_job_last_failure_timestamp_seconds",
        "End of the job's last failed or cancelled run (Unix time).",
        "job",
        per(&|k| h(k).last_failure.map(ts)),
    );
    o.gauge_per(
        "backupctl_job_last_duration_seconds",
        "Duration of the job's last finished run, retries included.",
        "job",
        per(&|k| h(k).last_duration_secs),
    );
    o.gauge_per(
        "backupctl_job_last_attempts",
        "Attempts the job's last run made (1 + retries).",
        "job",
        per(&|k| h(k).last_outcome.map(|_| h(k).last_attempts as f64)),
    );
    o.gauge_per(
        "backupctl_job_last_bytes",
        "Bytes the job's last successful run stored (backups) or removed (retention).",
        "job",
        per(&|k| h(k).last_report.and_then(|r| r.bytes).map(|b| b as f64)),
    );
    let with_outcome: Vec<JobKind> = kinds
        .iter()
        .copied()
        .filter(|k| h(*k).last_outcome.is_some())
        .collect();
    if !with_outcome.is_empty() {
        o.family(
            "backupctl_job_last_outcome",
            "gauge",
            "1 for the outcome of the job's last run (success, failed, skipped, cancelled), 0 for the others.",
        );
        for k in with_outcome {
            let last = h(k).last_outcome;
            for out in Outcome::ALL {
                o.sample(
                    "backupctl_job_last_outcome",
                    &[("job", k.as_str()), ("outcome", out.as_str())],
                    flag(last == Some(out)),
                );
            }
        }
    }
    o.family(
        "backupctl_job_runs_total",
        "counter",
        "Finished runs since the daemon started, by outcome.",
    );
    for k in &kinds {
        for out in Outcome::ALL {
            let n = s.runs.get(&(*k, out)).copied().unwrap_or(0);
            o.sample(
                "backupctl_job_runs_total",
                &[("job", k.as_str()), ("outcome", out.as_str())],
                n as f64,
            );
        }
    }
    o.family(
        "backupctl_job_skipped_ticks_total",
        "counter",
        "Scheduled runs skipped because the previous run was still running.",
    );
    for k in &kinds {
        let n = s.skipped_ticks.get(k).copied().unwrap_or(0);
        o.sample(
            "backupctl_job_skipped_ticks_total",
            &[("job", k.as_str())],
            n as f64,
        );
    }
}

fn observation(o: &mut Out, obs: &Observation, now: DateTime<Utc>) {
    o.gauge(
        "backupctl_observation_timestamp_seconds",
        "When PostgreSQL and the repository were last looked at (Unix time).",
        Some(ts(obs.at)),
    );
    o.gauge(
        "backupctl_postgres_up",
        "1 if the last look at PostgreSQL (pg_stat_archiver) succeeded.",
        Some(flag(obs.archiver.is_ok())),
    );
    if let Ok(a) = &obs.archiver {
        o.gauge(
            "backupctl_wal_archive_lag_seconds",
            "Seconds from pg_stat_archiver.last_archived_time to the observation.",
            a.lag_secs(obs.at),
        );
        o.gauge(
            "backupctl_wal_archive_failing",
            "1 if PostgreSQL's last archive attempt failed (last_failed_time is newer than last_archived_time).",
            Some(flag(a.failing())),
        );
        o.gauge(
            "backupctl_wal_last_archived_timestamp_seconds",
            "pg_stat_archiver.last_archived_time (Unix time).",
            a.last_archived_time.map(ts),
        );
        o.gauge(
            "backupctl_wal_ready_segments",
            "WAL segments in pg_wal waiting to be archived (.ready files in pg_wal/archive_status); absent when the role may not list that directory (needs pg_monitor or superuser).",
            a.ready_segments.map(|n| n as f64),
        );
        o.gauge(
            "backupctl_wal_archived_count",
            "pg_stat_archiver.archived_count (since the statistics were last reset); its rate is the archiving rate.",
            Some(a.archived_count as f64),
        );
        o.gauge(
            "backupctl_wal_archive_failed_count",
            "pg_stat_archiver.failed_count (since the statistics were last reset).",
            Some(a.failed_count as f64),
        );
    }
    o.gauge(
        "backupctl_repository_up",
        "1 if the last look at the repository succeeded.",
        Some(flag(obs.repo.is_ok())),
    );
    let Ok(r) = &obs.repo else {
        return;
    };
    let kinds: Vec<(&'static str, &crate::daemon::observe::KindFacts)> =
        r.kinds.iter().map(|(k, f)| (k.as_str(), f)).collect();
    o.gauge_per(
        "backupctl_backups",
        "Complete backups in the repository.",
        "kind",
        kinds.iter().map(|(k, f)| (*k, Some(f.count as f64))),
    );
    o.gauge(
        "backupctl_incomplete_backups",
        "Backups without a manifest (unfinished or abandoned).",
        Some(r.incomplete as f64),
    );
    o.gauge(
        "backupctl_unreadable_manifests",
        "Backups whose manifest exists but cannot be used (not JSON, altered, or a newer format); they are not restored from and never deleted by retention. `backupctl list` names them.",
        Some(r.unreadable_manifests as f64),
    );
    o.gauge_per(
        "backupctl_newest_backup_timestamp_seconds",
        "Stop time of the newest complete backup (Unix time).",
        "kind",
        kinds
            .iter()
            .map(|(k, f)| (*k, f.newest.as_ref().map(|(_, t)| ts(*t)))),
    );
    o.gauge_per(
        "backupctl_oldest_backup_timestamp_seconds",
        "Stop time of the oldest complete backup (Unix time).",
        "kind",
        kinds
            .iter()
            .map(|(k, f)| (*k, f.oldest.as_ref().map(|(_, t)| ts(*t)))),
    );
    o.gauge_per(
        "backupctl_newest_verified_backup_age_seconds",
        "Seconds since the stop time of the newest backup whose verification succeeded.",
        "kind",
        kinds.iter().map(|(k, f)| {
            (
                *k,
                f.newest_verified
                    .as_ref()
                    .map(|(_, t)| secs_between(*t, now)),
            )
        }),
    );
    o.gauge_per(
        "backupctl_verification_last_success",
        "1 if the most recent verification of a backup of this kind succeeded, 0 if it failed.",
        "kind",
        kinds
            .iter()
            .map(|(k, f)| (*k, f.last_verification.as_ref().map(|v| flag(v.ok)))),
    );
    o.gauge_per(
        "backupctl_verification_last_timestamp_seconds",
        "When the most recent verification of a backup of this kind ran (Unix time).",
        "kind",
        kinds
            .iter()
            .map(|(k, f)| (*k, f.last_verification.as_ref().map(|v| ts(v.time)))),
    );
    o.gauge_per(
        "backupctl_verification_last_duration_seconds",
        "Measured restore time of the most recent verification (download to queryable server).",
        "kind",
        kinds
            .iter()
            .map(|(k, f)| (*k, f.last_verification.as_ref().map(|v| v.duration_secs))),
    );
    o.gauge(
        "backupctl_recoverable_windows",
        "Recoverable windows on the current timeline (more than one means a WAL gap).",
        Some(r.windows as f64),
    );
    o.gauge(
        "backupctl_wal_gaps",
        "Gaps in the archived WAL since the oldest physical backup.",
        Some(r.gaps as f64),
    );
    o.gauge(
        "backupctl_wal_verified_timestamp_seconds",
        "The last time `verify --wal` found every archived WAL object intact: checksum, decompression and page headers (Unix time).",
        r.wal_verified_at.map(ts),
    );
    let timelines: Vec<(String, _)> = r
        .timelines
        .iter()
        .map(|(t, span)| (t.to_string(), span))
        .collect();
    o.gauge_per(
        "backupctl_timeline_recoverable_from_timestamp_seconds",
        "Per timeline: the earliest time point-in-time recovery can reach on it (Unix time).",
        "timeline",
        timelines
            .iter()
            .map(|(t, (from, _))| (t.as_str(), Some(ts(*from)))),
    );
    o.gauge_per(
        "backupctl_timeline_recoverable_to_timestamp_seconds",
        "Per timeline: the latest time point-in-time recovery can reach on it (Unix time).",
        "timeline",
        timelines
            .iter()
            .map(|(t, (_, to))| (t.as_str(), to.map(ts))),
    );
    if let Some(w) = &r.window {
        o.gauge(
            "backupctl_recoverable_window_start_timestamp_seconds",
            "Earliest time point-in-time recovery can reach in the newest window (Unix time).",
            Some(ts(w.from)),
        );
        o.gauge(
            "backupctl_recoverable_window_end_timestamp_seconds",
            "Latest time point-in-time recovery can reach: archive time of the last continuous WAL segment (Unix time).",
            w.to.map(ts),
        );
        o.gauge(
            "backupctl_recoverable_window_timeline",
            "Timeline of the newest recoverable window (it changes when a standby is promoted or a restore opens a new timeline).",
            Some(w.timeline as f64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::observe::{Archiver, RepoFacts};
    use crate::jobs::history::RunRecord;
    use crate::jobs::JobReport;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    /// Every sample line: `name{labels} value`.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn escaping_and_numbers() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1_700_000_000.0), "1700000000");
        assert_eq!(number(0.25), "0.25");
        let mut o = Out {
            text: String::new(),
        };
        o.sample("m", &[("job", "we\"ird\\")], 1.0);
        assert_eq!(o.text, "m{job=\"we\\\"ird\\\\\"} 1\n");
    }

    #[test]
    fn a_successful_run_and_an_observation_show_up() {
        let mut h = History::default();
        h.finish(&RunRecord {
            kind: JobKind::Physical,
            run_id: "r1".into(),
            start: t(0),
            end: t(90),
            outcome: Outcome::Success,
            attempts: 2,
            error: None,
            report: Some(JobReport {
                summary: "backup b".into(),
                bytes: Some(123_456),
                ..Default::default()
            }),
        });
        let mut s = Snapshot::new(t(-100), h);
        s.next_runs.insert(JobKind::Physical, Some(t(3600)));
        s.intervals.insert(JobKind::Physical, 86400.0);
        s.keep_within.insert("physical", 2_592_000.0);
        s.runs.insert((JobKind::Physical, Outcome::Success), 1);
        s.observation = Some(Observation {
            at: t(100),
            archiver: Ok(Archiver {
                archive_mode: "on".into(),
                archived_count: 5,
                failed_count: 2,
                last_archived_wal: None,
                last_archived_time: Some(t(40)),
                last_failed_time: Some(t(50)),
                ready_segments: Some(3),
            }),
            repo: Ok(RepoFacts {
                unreadable_manifests: 2,
                wal_verified_at: Some(t(30)),
                timelines: [(1, (t(5), Some(t(20)))), (2, (t(20), None))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
        });
        let text = render(&s, t(100));
        let lines = samples(&text);
        for want in [
            "backupctl_job_last_success_timestamp_seconds{job=\"physical\"} 1700000090",
            "backupctl_job_last_start_timestamp_seconds{job=\"physical\"} 1700000000",
            "backupctl_job_last_duration_seconds{job=\"physical\"} 90",
            "backupctl_job_last_bytes{job=\"physical\"} 123456",
            "backupctl_job_last_attempts{job=\"physical\"} 2",
            "backupctl_job_last_outcome{job=\"physical\",outcome=\"success\"} 1",
            "backupctl_job_last_outcome{job=\"physical\",outcome=\"failed\"} 0",
            "backupctl_job_runs_total{job=\"physical\",outcome=\"success\"} 1",
            "backupctl_job_next_run_timestamp_seconds{job=\"physical\"} 1700003600",
            "backupctl_job_running{job=\"physical\"} 0",
            "backupctl_wal_archive_lag_seconds 60",
            "backupctl_wal_archive_failing 1",
            "backupctl_wal_ready_segments 3",
            "backupctl_wal_archived_count 5",
            "backupctl_job_interval_seconds{job=\"physical\"} 86400",
            "backupctl_retention_keep_within_seconds{kind=\"physical\"} 2592000",
            "backupctl_wal_verified_timestamp_seconds 1700000030",
            "backupctl_postgres_up 1",
            "backupctl_repository_up 1",
            "backupctl_unreadable_manifests 2",
            "backupctl_timeline_recoverable_from_timestamp_seconds{timeline=\"1\"} 1700000005",
            "backupctl_timeline_recoverable_to_timestamp_seconds{timeline=\"1\"} 1700000020",
            "backupctl_timeline_recoverable_from_timestamp_seconds{timeline=\"2\"} 1700000020",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        // An open end has no sample rather than a made-up time.
        assert!(
            !text.contains("backupctl_timeline_recoverable_to_timestamp_seconds{timeline=\"2\"}")
        );
        // No failure yet: that family has no sample at all rather than a fake zero.
        assert!(!text.contains("backupctl_job_last_failure_timestamp_seconds{"));
        // Every sample's family is declared exactly once, before its samples.
        let mut declared = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(declared.insert(name.to_string()), "{name} declared twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} used before its TYPE line");
            }
        }
    }

    #[test]
    fn unreachable_sides_say_so_without_stale_numbers() {
        let mut s = Snapshot::new(t(0), History::default());
        s.observation = Some(Observation {
            at: t(10),
            archiver: Err("connection refused".into()),
            repo: Err("bucket missing".into()),
        });
        let text = render(&s, t(10));
        assert!(text.contains("\nbackupctl_postgres_up 0\n"), "{text}");
        assert!(text.contains("\nbackupctl_repository_up 0\n"), "{text}");
        assert!(!text.contains("backupctl_wal_archive_lag_seconds"));
        assert!(!text.contains("backupctl_backups{"));
    }
}
