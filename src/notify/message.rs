//! What one notification says: the JSON payload (`notify.format = "json"`, the fields
//! an on-call tool reads) and the one human message (`text`) that both formats carry —
//! Slack's incoming webhooks accept a body with a `text` field and nothing else is
//! required. The message names the job, host, cluster, result, duration, the backup
//! id or the real cause, and what to do next; it never holds secrets (no config, no
//! connection strings, no webhook URL).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    JobFailed,
    /// A job succeeded (`notify.on` has `"success"`).
    JobSucceeded,
    /// The first success of a job after one or more failures (`"recovery"`).
    JobRecovered,
    VerificationFailed,
    BackupTooOld,
    /// `backupctl migrate`: the migration failed (the database was restored or not).
    MigrationFailed,
}

/// The outcome class `notify.on` selects by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Failure,
    Success,
    Recovery,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Failure => "failure",
            Outcome::Success => "success",
            Outcome::Recovery => "recovery",
        }
    }

    /// What is sent for this outcome under `notify.on`: a recovery is sent as such when
    /// `on` has `"recovery"`, else as a plain success when it has `"success"`.
    pub fn gate(self, on: &[String]) -> Option<Outcome> {
        let wants = |w: Outcome| on.iter().any(|o| o == w.as_str());
        match self {
            Outcome::Recovery if !wants(Outcome::Recovery) => {
                wants(Outcome::Success).then_some(Outcome::Success)
            }
            o => wants(o).then_some(o),
        }
    }
}

/// The JSON body of one POST.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub source: &'static str,
    pub version: &'static str,
    pub event: Event,
    /// `failure`, `success` or `recovery`.
    pub result: Outcome,
    pub severity: &'static str,
    pub time: DateTime<Utc>,
    pub host: String,
    pub cluster: String,
    pub summary: String,
    /// The job as the schedule and `info` name it (`physical`, `verify`, …) or the CLI
    /// command (`restore`, `migrate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// The error chain of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// What the operator should do now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<String>,
}

impl Alert {
    /// A failure alert (severity critical).
    pub fn new(cfg: &Config, event: Event, summary: String) -> Alert {
        Alert {
            source: "backupctl",
            version: env!("CARGO_PKG_VERSION"),
            event,
            result: Outcome::Failure,
            severity: "critical",
            time: Utc::now(),
            host: crate::host::local_hostname(),
            cluster: cfg.repository.cluster.clone(),
            summary,
            job: None,
            run_id: None,
            attempts: None,
            duration_seconds: None,
            error: None,
            backup_ids: vec![],
            failures: vec![],
            next_action: None,
        }
    }

    /// The notification of a job's end: a failure, a success or a recovery.
    pub fn job(
        cfg: &Config,
        job: &str,
        outcome: Outcome,
        summary: String,
        took: Duration,
    ) -> Alert {
        let mut a = Alert::new(
            cfg,
            match outcome {
                Outcome::Failure => Event::JobFailed,
                Outcome::Success => Event::JobSucceeded,
                Outcome::Recovery => Event::JobRecovered,
            },
            summary,
        );
        a.result = outcome;
        a.severity = if outcome == Outcome::Failure {
            "critical"
        } else {
            "info"
        };
        a.job = Some(job.to_string());
        a.duration_seconds = Some((took.as_secs_f64() * 10.0).round() / 10.0);
        if outcome == Outcome::Failure {
            a.next_action =
                Some("find and fix the cause above, then run `backupctl check`".to_string());
        }
        a
    }

    /// Turn a recovery into a plain success (when `notify.on` asks for successes only).
    pub fn as_outcome(mut self, o: Outcome) -> Alert {
        if self.result == Outcome::Recovery && o == Outcome::Success {
            self.event = Event::JobSucceeded;
        }
        self.result = o;
        self
    }

    /// The human message both formats carry.
    pub fn text(&self) -> String {
        let head = match self.result {
            Outcome::Failure => "FAILED",
            Outcome::Success => "succeeded",
            Outcome::Recovery => "RECOVERED",
        };
        let mut t = format!(
            "backupctl: {} {head} on host {} (cluster {})",
            self.job.as_deref().unwrap_or("alert"),
            self.host,
            self.cluster
        );
        if let Some(d) = self.duration_seconds {
            t.push_str(&format!(" after {}", duration(d)));
        }
        t.push_str(&format!("\n{}", self.summary));
        if !self.backup_ids.is_empty() {
            t.push_str(&format!("\nbackup: {}", self.backup_ids.join(", ")));
        }
        if let Some(e) = &self.error {
            t.push_str(&format!("\ncause: {e}"));
        }
        for f in &self.failures {
            t.push_str(&format!("\n- {f}"));
        }
        if let Some(n) = &self.next_action {
            t.push_str(&format!("\nnext: {n}"));
        }
        t
    }

    /// The POST body in `notify.format`.
    pub fn body(&self, format: &str) -> serde_json::Result<Vec<u8>> {
        if format == "slack" {
            return serde_json::to_vec(&serde_json::json!({ "text": self.text() }));
        }
        let mut v = serde_json::to_value(self)?;
        v["text"] = self.text().into();
        serde_json::to_vec(&v)
    }
}

fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let s = secs.round() as u64;
        if s < 3600 {
            format!("{}m {}s", s / 60, s % 60)
        } else {
            format!("{}h {}m", s / 3600, s % 3600 / 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gate_follows_notify_on() {
        use Outcome::*;
        for (o, list, want) in [
            (Failure, &["failure"][..], Some(Failure)),
            (Success, &["failure"][..], None),
            (Recovery, &["failure"][..], None),
            (Success, &["success"][..], Some(Success)),
            (Recovery, &["success"][..], Some(Success)),
            (Recovery, &["recovery"][..], Some(Recovery)),
            (Recovery, &["success", "recovery"][..], Some(Recovery)),
            (Success, &["recovery"][..], None),
            (Failure, &[][..], None),
        ] {
            assert_eq!(o.gate(&on(list)), want, "{o:?} with {list:?}");
        }
    }

    #[test]
    fn payloads_carry_the_message() {
        let c = Config::parse("", None).unwrap();
        let mut a = Alert::job(
            &c,
            "physical",
            Outcome::Failure,
            "physical backup failed".into(),
            Duration::from_millis(2340),
        );
        a.error = Some("connect to PostgreSQL: connection refused".into());
        a.attempts = Some(3);
        let v: serde_json::Value = serde_json::from_slice(&a.body("json").unwrap()).unwrap();
        assert_eq!(v["event"], "job_failed");
        assert_eq!(v["result"], "failure");
        assert_eq!(v["job"], "physical");
        assert_eq!(v["source"], "backupctl");
        assert_eq!(v["cluster"], "main");
        assert_eq!(v["duration_seconds"], 2.3);
        assert!(v.get("backup_ids").is_none());
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("physical FAILED on host"), "{text}");
        assert!(
            text.contains("cause: connect to PostgreSQL: connection refused"),
            "{text}"
        );
        assert!(text.contains("backupctl check"), "{text}");
        let s: serde_json::Value = serde_json::from_slice(&a.body("slack").unwrap()).unwrap();
        assert_eq!(s.as_object().unwrap().len(), 1, "{s}");
        assert_eq!(s["text"], text);
        let ok = Alert::job(
            &c,
            "physical",
            Outcome::Recovery,
            "x".into(),
            Duration::ZERO,
        )
        .as_outcome(Outcome::Success);
        assert_eq!(ok.event, Event::JobSucceeded);
        assert!(ok.next_action.is_none());
    }
}
