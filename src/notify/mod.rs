//! Notifications: a POST to `notify.webhook_url` (or the URL in `notify.webhook_url_file`)
//! when a job of the daemon or the CLI fails, succeeds or recovers (as `notify.on`
//! selects), when a verification fails, and when the newest verified backup is older
//! than `notify.max_age`. The body is JSON or a Slack payload ([`message`]).
//!
//! Sending never blocks a job: alerts go into a queue that a background task delivers,
//! one at a time, each attempt limited to `notify.timeout`, retrying transport errors
//! and 5xx/408/429 answers with exponential backoff for about ten minutes (a CLI
//! command waits at most `notify.timeout` in all, then exits with its own code). A
//! failed delivery is logged once at WARN, scrubbed of the webhook URL (it may embed a
//! token), and counted. It lives in layer 1 so the CLI and the daemon share it.

pub mod message;
pub mod state;

pub use message::{Alert, Event, Outcome};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::webhook::{target, Target};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What `[notify]` says about delivery; replaced on a reload.
#[derive(Clone)]
struct Settings {
    target: Option<Target>,
    format: String,
    on: Vec<String>,
    timeout: Duration,
}

impl Settings {
    fn of(cfg: &Config) -> anyhow::Result<Settings> {
        Ok(Settings {
            target: target(cfg)?,
            format: cfg.notify.format.clone(),
            on: cfg.notify.on.clone(),
            timeout: cfg.notify.timeout,
        })
    }
}

/// The alert queue and its delivery task.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Alert>,
    settings: Arc<RwLock<Settings>>,
    pub sent: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pending: Arc<AtomicU64>,
}

const QUEUE: usize = 256;
/// Backoff 1 s, 2 s, 4 s … capped at 2 min: about ten minutes over 10 attempts.
const ATTEMPTS: u32 = 10;

impl Notifier {
    /// Start the delivery task with the `[notify]` settings of `cfg`.
    pub fn start(cfg: &Config) -> anyhow::Result<Notifier> {
        let settings = Arc::new(RwLock::new(Settings::of(cfg)?));
        let client = https_client()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let n = Notifier {
            tx,
            settings,
            sent: Arc::default(),
            failed: Arc::default(),
            pending: Arc::default(),
        };
        tokio::spawn(deliver_all(rx, client, n.clone()));
        Ok(n)
    }

    pub fn enabled(&self) -> bool {
        self.settings().map(|s| s.target.is_some()).unwrap_or(false)
    }

    fn settings(&self) -> Option<Settings> {
        self.settings.read().ok().map(|s| s.clone())
    }

    /// Apply a reloaded config's `[notify]` (an invalid one is refused, the old kept).
    pub fn reconfigure(&self, cfg: &Config) -> anyhow::Result<()> {
        let t = Settings::of(cfg)?;
        if let Ok(mut w) = self.settings.write() {
            *w = t;
        }
        Ok(())
    }

    /// Queue an alert if `notify.on` selects its outcome; returns at once. A failure is
    /// also logged at ERROR, so it is in the journal whether or not a webhook is
    /// configured.
    pub fn send(&self, alert: Alert) {
        let job = alert.job.clone().unwrap_or_else(|| "-".into());
        let run = alert.run_id.clone().unwrap_or_else(|| "-".into());
        if alert.result == Outcome::Failure {
            tracing::error!(event = ?alert.event, job, run, "ALERT: {}", alert.summary);
        }
        let Some(s) = self.settings() else { return };
        let Some(outcome) = alert.result.gate(&s.on) else {
            return;
        };
        if s.target.is_none() {
            return;
        }
        let alert = alert.as_outcome(outcome);
        tracing::debug!(event = ?alert.event, job, run, "queueing the notification");
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(alert) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.failed.fetch_add(1, Ordering::SeqCst);
            tracing::error!("alert dropped: the delivery queue is full or closed ({e})");
        }
    }

    /// Wait up to `limit` for queued alerts to be delivered (at shutdown).
    pub async fn drain(&self, limit: Duration) {
        if !self.wait_delivered(limit).await {
            tracing::warn!(
                pending = self.pending.load(Ordering::SeqCst),
                "exiting with undelivered alerts"
            );
        }
    }

    /// Whether every queued alert was delivered (or given up on) within `limit`.
    async fn wait_delivered(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// A CLI command's end: wait at most `notify.timeout` for the delivery; what is
    /// still pending then is logged once at WARN and counted as failed.
    pub async fn finish(&self) {
        let limit = self.settings().map(|s| s.timeout).unwrap_or_default();
        if !self.wait_delivered(limit).await {
            let n = self.pending.load(Ordering::SeqCst);
            self.failed.fetch_add(n, Ordering::SeqCst);
            tracing::warn!(
                "the notification was not delivered within notify.timeout ({}): the webhook did not answer; the command's result is unchanged",
                humantime::format_duration(limit)
            );
        }
    }
}

/// Record how the jobs `keys` ended (see [`state::record`]) and say what that is: a
/// failure, a success, or a recovery (the first success after failures). The state
/// file failing to update costs only the recovery: it is logged, not returned.
pub fn job_outcome(cfg: &Config, keys: &[&str], ok: bool) -> Outcome {
    let before = state::record(&cfg.backup.state_dir, keys, ok).unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot record the job's outcome in backup.state_dir: a recovery will not be noticed");
        0
    });
    match (ok, before) {
        (false, _) => Outcome::Failure,
        (true, 0) => Outcome::Success,
        (true, _) => Outcome::Recovery,
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
        deliver(&client, &n, &alert).await;
        n.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Deliver one alert: attempts limited to `notify.timeout` each, retried with backoff
/// when worth it; the outcome logged once.
async fn deliver(client: &HttpsClient, n: &Notifier, alert: &Alert) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        // Read the settings per attempt: a reload may have fixed or removed the target.
        let Some(Settings {
            target: Some(target),
            format,
            timeout,
            ..
        }) = n.settings()
        else {
            return;
        };
        let body = match alert.body(&format) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the notification");
                return;
            }
        };
        match post(client, &target, body, timeout).await {
            Ok(()) => {
                n.sent.fetch_add(1, Ordering::SeqCst);
                tracing::info!(event = ?alert.event, attempt, "notification delivered");
                return;
            }
            Err((msg, retry)) => {
                let msg = target.scrub(&msg);
                if !retry || attempt == ATTEMPTS {
                    n.failed.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(event = ?alert.event, attempt, error = %msg, "giving up delivering the notification to the webhook");
                    return;
                }
                tracing::debug!(event = ?alert.event, attempt, error = %msg, "notification delivery failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(120));
            }
        }
    }
}

/// One POST. `Err((message, worth retrying))`.
async fn post(
    client: &HttpsClient,
    target: &Target,
    body: Bytes,
    timeout: Duration,
) -> Result<(), (String, bool)> {
    let req = http::Request::post(target.uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("backupctl/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| (format!("build request: {e}"), false))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| {
            (
                format!(
                    "no answer within notify.timeout ({})",
                    humantime::format_duration(timeout)
                ),
                true,
            )
        })?
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
}
