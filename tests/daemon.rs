//! The daemon against real PostgreSQL 15 clusters and both repository kinds: scheduled
//! backups with second-level cron, `/metrics` and `info --json` reflecting each run, the
//! systemd notify protocol, SIGTERM during a backup (cancelled cleanly within the grace
//! period: no manifest, no objects, no unfinished upload, the backup session gone),
//! SIGHUP with a broken config (kept running, ERROR logged), one webhook POST per failed
//! run, and `daemon --run-once`.
//!
//! Every wait is "until a condition holds" with a generous deadline: no timed assertions.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backupctl::manifest::Catalog;
use chrono::{Timelike, Utc};
use common::webhook::Webhook;
use common::{
    as_pg, backupctl, backupctl_bin, chown_to_pg, pg_tempdir, stderr, stdout, Backend, Cluster,
    ClusterOptions, TestRepo,
};

const DEADLINE: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------
// Helpers: the daemon process, its notify socket, HTTP.

/// A `backupctl daemon` child; SIGKILLed on drop if still running.
struct DaemonProc {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl DaemonProc {
    fn start(config: &Path, args: &[&str], env: &[(&str, String)]) -> DaemonProc {
        let dir = pg_tempdir();
        let log = dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(backupctl_bin());
        cmd.arg("--config").arg(config).arg("daemon").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(file);
        let child = as_pg(&mut cmd).spawn().unwrap();
        DaemonProc {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait for the process to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Poll `f` until it returns Some; panic with the daemon's log at the deadline.
    fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `NOTIFY_SOCKET` the daemon (running as postgres) can send to.
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = pg_tempdir();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let messages = Arc::new(Mutex::new(vec![]));
        let m = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                m.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifySocket {
            path,
            messages,
            _dir: dir,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            // Two seconds: pings every second.
            ("WATCHDOG_USEC", "2000000".into()),
        ]
    }

    fn saw(&self, needle: &str) -> bool {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.lines().any(|l| l.starts_with(needle)))
    }
}

/// `GET path` on loopback; (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The value of the sample `name{labels}` (labels as written, e.g. `job="physical"`).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(port: u16) -> Option<String> {
    http_get(port, "/metrics")
        .filter(|(st, _)| *st == 200)
        .map(|(_, b)| b)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn physical_backups(config: &Path) -> Vec<serde_json::Value> {
    let list = json(&backupctl(config, &["list", "--json"]));
    list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "physical")
        .cloned()
        .collect()
}

/// A 6-field cron expression that fires at `offsets` seconds from now, once (it names
/// the day and month), all within the current minute: waits for a second ≤ 25 first.
fn once_at(offsets: &[u32]) -> String {
    while Utc::now().second() > 25 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = Utc::now();
    let secs: Vec<String> = offsets
        .iter()
        .map(|o| (now.second() + o).to_string())
        .collect();
    format!(
        "{} {} {} {} {} *",
        secs.join(","),
        now.minute(),
        now.hour(),
        now.format("%-d"),
        now.format("%-m")
    )
}

/// A 6-field cron expression that fires once, at `base + offsets` (all in one minute).
fn once_from(base: chrono::DateTime<Utc>, offsets: &[u32]) -> String {
    let first = base + chrono::Duration::seconds(offsets[0] as i64);
    let secs: Vec<String> = offsets
        .iter()
        .map(|o| {
            let t = base + chrono::Duration::seconds(*o as i64);
            assert_eq!(
                t.minute(),
                first.minute(),
                "offsets {offsets:?} span two minutes"
            );
            t.second().to_string()
        })
        .collect();
    format!(
        "{} {} {} {} {} *",
        secs.join(","),
        first.minute(),
        first.hour(),
        first.format("%-d"),
        first.format("%-m")
    )
}

fn archiving_cluster(t: &TestRepo) -> Cluster {
    let config = t.write_config("backup.toml", "");
    Cluster::new(ClusterOptions {
        archive_command: Some(common::archive_command(&config)),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// Scheduled backups, metrics, info, systemd.

fn scheduled_backups_show_in_metrics_and_info(backend: Backend) {
    let t = TestRepo::new(backend);
    let cluster = archiving_cluster(&t);
    let port = common::free_port();
    let notify = NotifySocket::new();
    // Two physical backups and a logical one, then verification of the newest of each
    // kind (and WAL continuity), then retention keeping one backup of each kind.
    while Utc::now().second() > 20 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let base = Utc::now();
    let schedule = once_from(base, &[3, 12]);
    let logical = once_from(base, &[3]);
    let verify = once_from(base, &[40]);
    let retention = once_from(base, &[58]);
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[schedule]\ntimezone = \"UTC\"\nphysical = \"{schedule}\"\nlogical = \"{logical}\"\n\
             verify = \"{verify}\"\nretention = \"{retention}\"\n\
             [retention.physical]\nkeep_last = 1\n[retention.logical]\nkeep_last = 1\n[verify]\nafter_backup = false\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n[daemon]\nshutdown_grace = \"30s\"\n",
            cluster.postgres_toml()
        ),
    );
    let mut d = DaemonProc::start(&config, &[], &notify.env());
    d.wait_for("READY=1", |_| notify.saw("READY=1").then_some(()));
    assert!(notify.saw("STATUS=idle; next: "));

    let runs = |m: &str, job: &str, outcome: &str| {
        metric(
            m,
            "backupctl_job_runs_total",
            &format!("job=\"{job}\",outcome=\"{outcome}\""),
        )
    };
    // Both physical occurrences and the logical one run.
    d.wait_for("backups in /metrics", |d| {
        assert!(d.running(), "daemon exited:\n{}", d.log());
        let m = metrics(port)?;
        let running = metric(&m, "backupctl_job_running", "job=\"physical\"")?;
        (runs(&m, "physical", "success")? == 2.0
            && runs(&m, "logical", "success")? == 1.0
            && running == 0.0)
            .then_some(())
    });
    // Then verification and retention.
    let text = d.wait_for("verify and retention in /metrics", |d| {
        assert!(d.running(), "daemon exited:\n{}", d.log());
        let m = metrics(port)?;
        for job in ["physical", "logical", "verify", "retention"] {
            assert_eq!(runs(&m, job, "failed"), Some(0.0), "{job}:\n{}", d.log());
        }
        let physical = metric(&m, "backupctl_backups", "kind=\"physical\"")?;
        // The verify job read every archived WAL object and found it intact.
        metric(&m, "backupctl_wal_verified_timestamp_seconds", "")?;
        (runs(&m, "verify", "success")? == 1.0
            && runs(&m, "retention", "success")? == 1.0
            && physical == 1.0)
            .then_some(m)
    });
    // Notification counters exist from the start (no webhook here: nothing sent).
    for name in [
        "backupctl_notifications_sent_total",
        "backupctl_notifications_failed_total",
    ] {
        assert_eq!(metric(&text, name, ""), Some(0.0), "{name}: {text}");
    }
    for kind in ["physical", "logical"] {
        assert_eq!(
            metric(
                &text,
                "backupctl_verification_last_success",
                &format!("kind=\"{kind}\"")
            ),
            Some(1.0),
            "{kind}: {text}"
        );
        assert!(
            metric(
                &text,
                "backupctl_newest_verified_backup_age_seconds",
                &format!("kind=\"{kind}\"")
            )
            .is_some(),
            "{kind}: {text}"
        );
        assert_eq!(
            metric(&text, "backupctl_backups", &format!("kind=\"{kind}\"")),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "backupctl_job_last_outcome",
            "job=\"retention\",outcome=\"success\""
        ),
        Some(1.0)
    );
    assert!(
        d.log().contains("1 backup(s)") && d.log().contains("deleted"),
        "{}",
        d.log()
    );
    assert!(notify.saw("STATUS=running: physical backup (run physical-"));
    assert!(notify.saw("WATCHDOG=1"));
    assert_eq!(
        metric(
            &text,
            "backupctl_job_runs_total",
            "job=\"physical\",outcome=\"failed\""
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "backupctl_job_last_outcome",
            "job=\"physical\",outcome=\"success\""
        ),
        Some(1.0)
    );
    // Retention kept the newest physical backup (the verified one).
    let backups = physical_backups(&config);
    assert_eq!(backups.len(), 1, "{backups:?}");
    let newest = &backups[0];
    assert_eq!(newest["verified"], "ok", "{newest}");
    // Bytes and times are the newest backup's.
    assert_eq!(
        metric(&text, "backupctl_job_last_bytes", "job=\"physical\""),
        newest["stored_bytes"].as_f64()
    );
    let stop = chrono::DateTime::parse_from_rfc3339(newest["stop_time"].as_str().unwrap()).unwrap();
    let last_success = metric(
        &text,
        "backupctl_job_last_success_timestamp_seconds",
        "job=\"physical\"",
    )
    .unwrap();
    assert!(
        last_success >= stop.timestamp() as f64,
        "{last_success} vs {stop}"
    );
    // The recoverable window starts at the remaining backup's end.
    let oldest_stop =
        chrono::DateTime::parse_from_rfc3339(backups[0]["stop_time"].as_str().unwrap()).unwrap();
    let start = metric(
        &text,
        "backupctl_recoverable_window_start_timestamp_seconds",
        "",
    )
    .unwrap();
    assert_eq!(start.floor() as i64, oldest_stop.timestamp(), "{text}");
    assert!(metric(
        &text,
        "backupctl_recoverable_window_end_timestamp_seconds",
        ""
    )
    .is_some());
    assert_eq!(metric(&text, "backupctl_postgres_up", ""), Some(1.0));
    assert_eq!(
        metric(&text, "backupctl_wal_archive_failing", ""),
        Some(0.0)
    );
    assert!(metric(&text, "backupctl_wal_archive_lag_seconds", "").is_some());
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));

    // info --json: the daemon's view from its history file.
    let info = json(&backupctl(&config, &["info", "--json"]));
    let job = info["daemon"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "physical")
        .unwrap()
        .clone();
    assert_eq!(job["last_outcome"], "success", "{job}");
    assert_eq!(job["schedule"], schedule.as_str());
    assert_eq!(job["last_report"]["backup_ids"][0], newest["id"], "{job}");
    let next = chrono::DateTime::parse_from_rfc3339(job["next_run"].as_str().unwrap()).unwrap();
    assert!(next > Utc::now(), "{job}");
    // The run id in the journal is the one in the history.
    let run_id = job["last_run_id"].as_str().unwrap();
    assert!(d.log().contains(run_id), "{}", d.log());

    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.log());
    assert!(notify.saw("STOPPING=1"));
}

#[test]
fn scheduled_backups_show_in_metrics_and_info_local() {
    scheduled_backups_show_in_metrics_and_info(Backend::Local);
}

#[test]
fn scheduled_backups_show_in_metrics_and_info_s3() {
    scheduled_backups_show_in_metrics_and_info(Backend::S3);
}

// ---------------------------------------------------------------------------------------
// SIGTERM during a backup.

/// Multipart uploads open on the s3s-fs server (it keeps `.upload-<id>.json` in its root
/// until the upload is completed or aborted; it does not implement ListMultipartUploads).
fn s3_uploads(t: &TestRepo) -> Vec<String> {
    let root = t.s3.as_ref().unwrap().root.path();
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload-") && n.ends_with(".json"))
        .collect()
}

/// Hidden temp files of unfinished local puts under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p);
            }
        }
    }
    out
}

fn sigterm_during_a_backup_cancels_it_cleanly(backend: Backend) {
    let t = TestRepo::new(backend);
    let cluster = archiving_cluster(&t);
    // ~120 MiB of half-compressible rows and zstd level 19 on one worker: the copy takes
    // long enough to be interrupted in the middle of an upload.
    cluster.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad \
         FROM generate_series(1, 1200000) g",
    );
    common::switch_wal_and_wait(&cluster);
    let schedule = once_at(&[4]);
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[compression]\nalgorithm = \"zstd\"\nlevel = 19\n\
             [schedule]\nphysical = \"{schedule}\"\n[daemon]\nshutdown_grace = \"1s\"\n",
            cluster.postgres_toml()
        ),
    );
    // One copy worker (write_config owns the [backup] section).
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[backup]\n", "[backup]\nworkers = 1\n"),
    )
    .unwrap();

    let mut d = DaemonProc::start(&config, &[], &[]);
    // An upload of the backup is in flight: a temp file (local) or an open multipart
    // upload (S3) under backups/.
    let repo_dir = t.dir.path().join("repo");
    d.wait_for("an upload in flight", |d| {
        assert!(d.running(), "daemon exited:\n{}", d.log());
        match backend {
            Backend::Local => {
                let tmps = temp_files(&repo_dir.join("main/backups"));
                (!tmps.is_empty()).then_some(())
            }
            Backend::S3 => (!s3_uploads(&t).is_empty()).then_some(()),
        }
    });
    assert!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backupctl'"
        ) != "0"
    );
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("cancelled the physical backup after daemon.shutdown_grace"),
        "{log}"
    );

    // No complete-looking backup, no objects, nothing unfinished.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = t.open().await;
        let cat = Catalog::load(repo.as_ref()).await.unwrap();
        assert!(
            cat.complete.is_empty(),
            "a manifest exists: {:?}",
            cat.complete
        );
        assert!(
            cat.incomplete.is_empty(),
            "objects left: {:?}",
            cat.incomplete
        );
        assert!(repo.list("backups/").await.unwrap().is_empty());
    });
    // WAL archiving shares the server: let the archiver finish what it has, then no
    // upload may be open (the backup's was aborted).
    common::switch_wal_and_wait(&cluster);
    match backend {
        Backend::Local => assert_eq!(temp_files(&repo_dir), Vec::<PathBuf>::new()),
        Backend::S3 => assert_eq!(s3_uploads(&t), Vec::<String>::new()),
    }
    // PostgreSQL ended the backup with the session; nothing of ours is connected.
    assert!(
        cluster
            .server_log()
            .contains("aborting backup due to backend exiting before pg_backup_stop was called"),
        "{}",
        cluster.server_log()
    );
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backupctl'"
        ),
        "0"
    );
    let info = json(&backupctl(&config, &["info", "--json"]));
    let job = &info["daemon"]["jobs"][0];
    assert_eq!(job["last_outcome"], "cancelled", "{info}");
    assert!(job["running"].is_null(), "{job}");
}

#[test]
fn sigterm_during_a_backup_cancels_it_cleanly_local() {
    sigterm_during_a_backup_cancels_it_cleanly(Backend::Local);
}

#[test]
fn sigterm_during_a_backup_cancels_it_cleanly_s3() {
    sigterm_during_a_backup_cancels_it_cleanly(Backend::S3);
}

// ---------------------------------------------------------------------------------------
// SIGHUP.

#[test]
fn sighup_with_a_broken_config_keeps_running_then_applies_a_good_one() {
    let t = TestRepo::new(Backend::Local);
    let cluster = archiving_cluster(&t);
    let port = common::free_port();
    let notify = NotifySocket::new();
    let base = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        cluster.postgres_toml()
    );
    let config = t.write_config("backup.toml", &base);
    let mut d = DaemonProc::start(&config, &[], &notify.env());
    d.wait_for("READY=1", |_| notify.saw("READY=1").then_some(()));
    assert!(notify.saw("STATUS=idle; no job scheduled"));

    // Broken: an hour that does not exist.
    t.write_config(
        "backup.toml",
        &format!("{base}\n[schedule]\nphysical = \"0 25 * * *\"\n"),
    );
    d.signal(rustix::process::Signal::HUP);
    d.wait_for("the refusal in the log", |d| {
        let log = d.log();
        log.lines()
            .any(|l| {
                l.contains("ERROR")
                    && l.contains("reload refused")
                    && l.contains("schedule.physical")
            })
            .then_some(())
    });
    assert!(d.running(), "{}", d.log());
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    let m = metrics(port).unwrap();
    assert_eq!(
        metric(&m, "backupctl_config_last_reload_success", ""),
        Some(0.0),
        "{m}"
    );
    assert!(notify.saw("RELOADING=1"));

    // A good config with a schedule: the daemon picks it up and runs it.
    let schedule = once_at(&[5]);
    t.write_config(
        "backup.toml",
        &format!("{base}\n[schedule]\nphysical = \"{schedule}\"\n"),
    );
    d.signal(rustix::process::Signal::HUP);
    d.wait_for("a backup on the reloaded schedule", |d| {
        let m = metrics(port)?;
        assert!(d.running(), "{}", d.log());
        (metric(&m, "backupctl_config_last_reload_success", "")? == 1.0
            && metric(
                &m,
                "backupctl_job_runs_total",
                "job=\"physical\",outcome=\"success\"",
            )? == 1.0)
            .then_some(())
    });
    assert_eq!(physical_backups(&config).len(), 1);
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.log());
}

// ---------------------------------------------------------------------------------------
// Alerts.

/// A loopback webhook: answers 503 to the first request, 200 to the rest; keeps every
/// request body with the status it got.
#[test]
fn webhook_gets_one_post_per_failed_run_and_no_secrets() {
    let t = TestRepo::new(Backend::Local);
    // The first delivery is answered 503: the notifier retries.
    let hook = Webhook::answering(|n| if n == 0 { 503 } else { 200 });
    // PostgreSQL is down: a socket directory with no server. A password file gives the
    // payload a secret to leak; the webhook URL carries a token that must never be logged.
    let nothing = pg_tempdir();
    let pw = t.dir.path().join("pgpassword");
    std::fs::write(&pw, "hunter2-not-for-webhooks\n").unwrap();
    chown_to_pg(&pw);
    let config = t.write_config(
        "backup.toml",
        &format!(
            "[postgres]\nhost = \"{}\"\nport = 5999\npassword_file = \"{}\"\n\
             [schedule]\nphysical = \"*/4 * * * * *\"\n\
             [daemon]\nretry_attempts = 1\nretry_delay = \"1s\"\n\
             [notify]\nwebhook_url = \"http://127.0.0.1:{}/hooks/T0KEN-SECRET?key=T0KEN-SECRET\"\nmax_age = \"2s\"\n",
            nothing.path().display(),
            pw.display(),
            hook.port
        ),
    );
    let mut d = DaemonProc::start(&config, &[], &[]);
    d.wait_for("three accepted job_failed alerts", |d| {
        assert!(d.running(), "{}", d.log());
        let n = hook
            .accepted()
            .iter()
            .filter(|a| a["event"] == "job_failed")
            .count();
        (n >= 3).then_some(())
    });
    d.signal(rustix::process::Signal::TERM);
    assert_eq!(d.wait_exit(), Some(0), "{}", d.log());
    let log = d.log();

    let accepted = hook.accepted();
    let failed: Vec<&serde_json::Value> = accepted
        .iter()
        .filter(|a| a["event"] == "job_failed")
        .collect();
    // One POST per failed run: distinct run ids, as many as the daemon logged alerts for.
    let ids: BTreeSet<&str> = failed
        .iter()
        .map(|a| a["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), failed.len(), "duplicate deliveries: {failed:?}");
    let alerted = log
        .lines()
        .filter(|l| l.contains("ALERT:") && l.contains("JobFailed"))
        .count();
    assert_eq!(failed.len(), alerted, "{log}");
    for a in &failed {
        assert_eq!(a["job"], "physical");
        assert_eq!(a["attempts"], 2, "{a}");
        assert_eq!(a["cluster"], "main");
        let err = a["error"].as_str().unwrap();
        assert!(err.contains("connect to PostgreSQL"), "{err}");
    }
    // Exactly one "too old" alert (no verified backup after max_age), not one per look.
    let too_old: Vec<_> = accepted
        .iter()
        .filter(|a| a["event"] == "backup_too_old")
        .collect();
    assert_eq!(too_old.len(), 1, "{accepted:?}");
    // The first request got a 503 and was retried: nothing was lost.
    let all = hook.requests.lock().unwrap().clone();
    assert_eq!(all[0].0, 503);
    assert_eq!(all.len(), accepted.len() + 1);
    // No secrets anywhere.
    for (_, body) in &all {
        assert!(!body.contains("hunter2"), "{body}");
        assert!(!body.contains("T0KEN"), "{body}");
    }
    assert!(!log.contains("T0KEN"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}

/// Archive and partitions failures under the daemon carry their real cause into the
/// history and the webhook (the daemon prints no report to point at): a month blocked
/// by rows in the default partition alerts on the first run, with the SQL that resolves
/// it, and is not retried (only an operator can fix it); with PostgreSQL stopped the
/// archive job names the connection failure, and is retried.
#[test]
fn daemon_job_failures_carry_their_cause_and_operator_only_ones_are_not_retried() {
    let t = TestRepo::new(Backend::Local);
    let hook = Webhook::start();
    let cluster = Cluster::new(ClusterOptions::default());
    cluster.psql(
        "postgres",
        "CREATE TABLE usage (at date NOT NULL, v int) PARTITION BY RANGE (at);
         CREATE TABLE usage_default PARTITION OF usage DEFAULT;
         INSERT INTO usage VALUES (current_date, 1);
         CREATE TABLE events (id int PRIMARY KEY, at timestamptz NOT NULL);",
    );
    let policies = "[[partitions]]\ntable = \"public.usage\"\npremake = 1\ntimezone = \"UTC\"\n\
                    [[archive]]\ntable = \"public.events\"\ncolumn = \"at\"\nolder_than = \"1 year\"\n\
                    [daemon]\nretry_attempts = 1\nretry_delay = \"1s\"\n";
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[schedule]\npartitions = \"0 3 * * *\"\n{policies}[notify]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\n",
            cluster.postgres_toml(),
            hook.port
        ),
    );
    let out = backupctl(&config, &["daemon", "--run-once", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &v["runs"][0];
    assert_eq!(run["job"], "partitions");
    assert_eq!(
        run["attempts"], 1,
        "an operator-only failure is not retried: {run:#}"
    );
    let err = run["error"].as_str().unwrap();
    assert!(
        err.contains("public.usage")
            && err.contains("blocked")
            && err.contains("to resolve, run:")
            && !err.contains("see the report above"),
        "{err}"
    );
    let alerts = hook.accepted();
    let failed: Vec<_> = alerts
        .iter()
        .filter(|a| a["event"] == "job_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{alerts:?}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("to resolve, run:"),
        "{}",
        failed[0]
    );

    // PostgreSQL stopped: the archive job names the connection failure, and retries.
    let nothing = pg_tempdir();
    let config = t.write_config(
        "stopped.toml",
        &format!(
            "[postgres]\nhost = \"{}\"\nport = 5999\n[schedule]\narchive = \"0 3 * * *\"\n{policies}[notify]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\n",
            nothing.path().display(),
            hook.port
        ),
    );
    let out = backupctl(&config, &["daemon", "--run-once", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &v["runs"][0];
    assert_eq!(run["job"], "archive");
    assert_eq!(run["attempts"], 2, "{run:#}");
    let err = run["error"].as_str().unwrap();
    assert!(
        err.contains("public.events") && err.contains("connect to PostgreSQL"),
        "{err}"
    );
    let log = stderr(&out);
    assert!(log.contains("connect to PostgreSQL"), "{log}");
    let alerts = hook.accepted();
    let archive: Vec<_> = alerts
        .iter()
        .filter(|a| a["event"] == "job_failed" && a["job"] == "archive")
        .collect();
    assert_eq!(archive.len(), 1, "{alerts:?}");
    assert!(
        archive[0]["error"]
            .as_str()
            .unwrap()
            .contains("connect to PostgreSQL"),
        "{}",
        archive[0]
    );
}

/// The daemon's first verification, before any backup exists, is not a failure (and
/// sends no alert).
#[test]
fn verification_of_an_empty_repository_is_not_a_failure() {
    let t = TestRepo::new(Backend::Local);
    let hook = Webhook::start();
    let cluster = Cluster::new(ClusterOptions::default());
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[schedule]\nverify = \"0 3 * * *\"\n[notify]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\n",
            cluster.postgres_toml(),
            hook.port
        ),
    );
    let out = backupctl(&config, &["daemon", "--run-once", "--json"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runs"][0]["outcome"], "success", "{v:#}");
    assert!(
        v["runs"][0]["report"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("nothing to verify yet"),
        "{v:#}"
    );
    assert!(hook.accepted().is_empty(), "{:?}", hook.accepted());
}

// ---------------------------------------------------------------------------------------
// --run-once, start-up refusals.

#[test]
fn run_once_runs_the_scheduled_jobs_and_exits() {
    let t = TestRepo::new(Backend::Local);
    let cluster = archiving_cluster(&t);
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[schedule]\nphysical = \"0 3 * * *\"\n[daemon]\nretry_attempts = 1\nretry_delay = \"1s\"\n",
            cluster.postgres_toml()
        ),
    );
    let out = backupctl(&config, &["daemon", "--run-once"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("physical   success   backup "), "{text}");
    assert_eq!(physical_backups(&config).len(), 1);

    // PostgreSQL gone: exit 1, the failure printed, the history says so.
    drop(cluster);
    let out = backupctl(&config, &["daemon", "--run-once", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["runs"][0]["outcome"], "failed");
    assert_eq!(v["runs"][0]["attempts"], 2);
    let info = json(&backupctl(&config, &["info", "--json"]));
    assert_eq!(
        info["daemon"]["jobs"][0]["last_outcome"], "failed",
        "{info}"
    );
}

#[test]
fn start_up_refuses_bad_schedules_and_a_second_daemon() {
    let t = TestRepo::new(Backend::Local);
    // A zone that does not exist is refused, naming the key.
    let config = t.write_config(
        "c.toml",
        "[schedule]\ntimezone = \"Mars/Olympus\"\nphysical = \"0 3 * * *\"\n",
    );
    let out = backupctl(&config, &["daemon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("schedule.timezone"),
        "{}",
        stderr(&out)
    );
    let config = t.write_config("c.toml", "[schedule]\nphysical = \"0 3 * * * * *\"\n");
    let out = backupctl(&config, &["daemon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("schedule.physical"),
        "{}",
        stderr(&out)
    );

    // One daemon per state_dir.
    let config = t.write_config("c.toml", "");
    let notify = NotifySocket::new();
    let mut first = DaemonProc::start(&config, &[], &notify.env());
    first.wait_for("READY=1", |_| notify.saw("READY=1").then_some(()));
    let out = backupctl(&config, &["daemon"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    first.signal(rustix::process::Signal::TERM);
    assert_eq!(first.wait_exit(), Some(0));
}

// ---------------------------------------------------------------------------------------
// The alert rules and the dashboard in config/ against a real /metrics page.

/// The shipped rules file and dashboard, as text.
fn monitoring_files() -> Vec<(&'static str, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        "config/prometheus/backupctl-rules.yml",
        "config/grafana/backupctl-dashboard.json",
    ]
    .into_iter()
    .map(|f| (f, std::fs::read_to_string(root.join(f)).unwrap()))
    .collect()
}

/// Every `backupctl_…` metric name in `text` (recording rules are `backupctl:…`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    for (i, _) in text.match_indices("backupctl_") {
        if i > 0 && word(bytes[i - 1]) {
            continue;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| i + n);
        names.insert(text[i..end].to_string());
    }
    names
}

/// Metric names the daemon exposes (`# TYPE` lines).
fn exported_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_the_alert_rules_and_dashboard_use_is_exported() {
    let mut used = BTreeSet::new();
    for (file, text) in monitoring_files() {
        let names = metric_names(&text);
        assert!(names.len() > 10, "{file}: only {names:?}");
        used.extend(names);
    }

    let t = TestRepo::new(Backend::Local);
    let cluster = archiving_cluster(&t);
    let port = common::free_port();
    while Utc::now().second() > 20 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let base = Utc::now();
    let backups = once_from(base, &[3]);
    let verify = once_from(base, &[25]);
    let config = t.write_config(
        "backup.toml",
        &format!(
            "{}\n[schedule]\ntimezone = \"UTC\"\nphysical = \"{backups}\"\nlogical = \"{backups}\"\n\
             verify = \"{verify}\"\n[retention.physical]\nkeep_within = \"30d\"\n\
             [verify]\nafter_backup = false\n[notify]\nmax_age = \"1d\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            cluster.postgres_toml()
        ),
    );
    let mut d = DaemonProc::start(&config, &[], &[]);
    d.wait_for("a verification in /metrics", |d| {
        assert!(d.running(), "daemon exited:\n{}", d.log());
        let m = metrics(port)?;
        let runs = |job: &str| {
            metric(
                &m,
                "backupctl_job_runs_total",
                &format!("job=\"{job}\",outcome=\"success\""),
            )
        };
        (runs("physical")? == 1.0 && runs("logical")? == 1.0 && runs("verify")? == 1.0)
            .then_some(())
    });
    // Reload metrics appear with the first reload.
    d.signal(rustix::process::Signal::HUP);

    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(d.running(), "daemon exited:\n{}", d.log());
        let page = metrics(port).unwrap_or_default();
        let exported = exported_names(&page);
        let missing: Vec<&String> = used.difference(&exported).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rules or the dashboard use metrics /metrics does not export: {missing:?}\n{page}\ndaemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool checks the dashboard's queries as recording rules; Grafana's variables are
    // replaced by values of the same kind first.
    let (_, text) = monitoring_files().remove(1);
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = vec![];
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 10, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("run promtool (Debian's prometheus package; scripts/test installs it)");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
}
