//! Alerts: a JSON POST to `notify.webhook_url` (or the URL in `notify.webhook_url_file`)
//! when a job fails, when a verification fails, and when the newest verified backup is
//! older than `notify.max_age`.
//!
//! Sending never blocks a job: alerts go into a queue that a background task delivers,
//! one at a time, retrying transport errors and 5xx/408/429 answers with exponential
//! backoff for about ten minutes. The payload carries what an on-call person needs (host,
//! cluster, job, run id, error chain) and nothing secret: no config, no connection
//! strings with passwords. The webhook URL itself may embed a token, so it is never
//! logged; error messages are scrubbed of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::jobs::JobKind;
use crate::webhook::{target, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    JobFailed,
    VerificationFailed,
    BackupTooOld,
    /// `backupctl migrate`: the migration failed (the database was restored or not).
    MigrationFailed,
}

/// The JSON body of one POST.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub source: &'static str,
    pub version: &'static str,
    pub event: Event,
    pub severity: &'static str,
    pub time: DateTime<Utc>,
    pub host: String,
    pub cluster: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

impl Alert {
    pub fn new(cfg: &Config, event: Event, summary: String) -> Alert {
        Alert {
            source: "backupctl",
            version: env!("CARGO_PKG_VERSION"),
            event,
            severity: "critical",
            time: Utc::now(),
            host: crate::host::local_hostname(),
            cluster: cfg.repository.cluster.clone(),
            summary,
            job: None,
            run_id: None,
            attempts: None,
            error: None,
            backup_ids: vec![],
            failures: vec![],
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The alert queue and its delivery task.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Alert>,
    target: Arc<RwLock<Option<Target>>>,
    pub sent: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
}

const QUEUE: usize = 256;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Backoff 1 s, 2 s, 4 s … capped at 2 min: about ten minutes over 10 attempts.
const ATTEMPTS: u32 = 10;

impl Notifier {
    /// Start the delivery task with the `[notify]` settings of `cfg`.
    pub fn start(cfg: &Config) -> anyhow::Result<Notifier> {
        let target = Arc::new(RwLock::new(target(cfg)?));
        let client = https_client()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let n = Notifier {
            tx,
            target,
            sent: Arc::default(),
            failed: Arc::default(),
            pending: Arc::default(),
        };
        tokio::spawn(deliver_all(rx, client, n.clone()));
        Ok(n)
    }

    pub fn enabled(&self) -> bool {
        self.target.read().map(|t| t.is_some()).unwrap_or(false)
    }

    /// Apply a reloaded config's `[notify]` (an invalid one is refused, the old kept).
    pub fn reconfigure(&self, cfg: &Config) -> anyhow::Result<()> {
        let t = target(cfg)?;
        if let Ok(mut w) = self.target.write() {
            *w = t;
        }
        Ok(())
    }

    /// Queue an alert; returns at once. The alert is also logged at ERROR, so it is in
    /// the journal whether or not a webhook is configured.
    pub fn send(&self, alert: Alert) {
        tracing::error!(event = ?alert.event, job = ?alert.job, run = alert.run_id.as_deref().unwrap_or("-"), "ALERT: {}", alert.summary);
        if !self.enabled() {
            return;
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(alert) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.failed.fetch_add(1, Ordering::SeqCst);
            tracing::error!("alert dropped: the delivery queue is full or closed ({e})");
        }
    }

    /// Wait up to `limit` for queued alerts to be delivered (at shutdown).
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pending = self.pending.load(Ordering::SeqCst),
                    "exiting with undelivered alerts"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn https_client() -> anyhow::Result<HttpsClient> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .context("load the system's CA certificates for the webhook (install ca-certificates)")?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn deliver_all(mut rx: mpsc::Receiver<Alert>, client: HttpsClient, n: Notifier) {
    while let Some(alert) = rx.recv().await {
        let body = match serde_json::to_vec(&alert) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode alert");
                n.pending.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
        };
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=ATTEMPTS {
            // Read the target per attempt: a reload may have fixed or removed it.
            let Some(target) = n.target.read().ok().and_then(|t| t.clone()) else {
                break;
            };
            match post(&client, &target, body.clone()).await {
                Ok(()) => {
                    n.sent.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(event = ?alert.event, attempt, "alert delivered");
                    break;
                }
                Err((msg, retry)) => {
                    let msg = target.scrub(&msg);
                    if !retry || attempt == ATTEMPTS {
                        n.failed.fetch_add(1, Ordering::SeqCst);
                        tracing::error!(event = ?alert.event, attempt, error = %msg, "giving up delivering the alert to the webhook");
                        break;
                    }
                    tracing::warn!(event = ?alert.event, attempt, error = %msg, "alert delivery failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(120));
                }
            }
        }
        n.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One POST. `Err((message, worth retrying))`.
async fn post(client: &HttpsClient, target: &Target, body: Bytes) -> Result<(), (String, bool)> {
    let req = http::Request::post(target.uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("backupctl/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| (format!("build request: {e}"), false))?;
    let resp = tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(req))
        .await
        .map_err(|_| (format!("no answer within {ATTEMPT_TIMEOUT:?}"), true))?
        .map_err(|e| (error_chain(&e), true))?;
    let status = resp.status();
    // Read (and drop) the body so the connection can be reused.
    let _ = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect()).await;
    if status.is_success() {
        Ok(())
    } else {
        let retry = status.is_server_error()
            || status == http::StatusCode::REQUEST_TIMEOUT
            || status == http::StatusCode::TOO_MANY_REQUESTS;
        Err((format!("the webhook answered {status}"), retry))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        // Not validated: `target` must refuse bad URLs on its own (the file's content is
        // only known at run time).
        Config::parse(toml, None).unwrap()
    }

    #[test]
    fn url_errors_never_show_the_url() {
        for bad in [
            "ftp://h/x?token=SECRET1",
            "not a url SECRET1",
            "https:///SECRET1",
        ] {
            let c = cfg(&format!("[notify]\nwebhook_url = \"{bad}\"\n"));
            let e = format!("{:#}", target(&c).err().expect(bad));
            assert!(!e.contains("SECRET1"), "{e}");
            assert!(e.contains("notify.webhook_url"), "{e}");
        }
        assert!(target(&cfg("")).unwrap().is_none());
    }

    #[test]
    fn url_from_file_and_scrubbing() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("hook");
        std::fs::write(&f, "https://hooks.example.com/services/T0/B0/SECRET2\n").unwrap();
        let c = cfg(&format!(
            "[notify]\nwebhook_url_file = \"{}\"\n",
            f.display()
        ));
        let t = target(&c).unwrap().unwrap();
        assert_eq!(t.uri.host(), Some("hooks.example.com"));
        let msg = t.scrub(
            "POST https://hooks.example.com/services/T0/B0/SECRET2 failed; /services/T0/B0/SECRET2",
        );
        assert!(!msg.contains("SECRET2"), "{msg}");
        let missing = cfg("[notify]\nwebhook_url_file = \"/nonexistent/hook\"\n");
        assert!(format!("{:#}", target(&missing).err().unwrap()).contains("/nonexistent/hook"));
    }

    #[test]
    fn payload_shape() {
        let c = cfg("");
        let mut a = Alert::new(&c, Event::JobFailed, "physical backup failed".into());
        a.job = Some(JobKind::Physical);
        a.attempts = Some(3);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["event"], "job_failed");
        assert_eq!(v["job"], "physical");
        assert_eq!(v["source"], "backupctl");
        assert_eq!(v["cluster"], "main");
        assert!(v.get("backup_ids").is_none());
    }
}
