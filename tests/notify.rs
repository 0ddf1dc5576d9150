//! Notifications of CLI jobs through a webhook on a loopback port, against a real
//! PostgreSQL: a Slack-format failure carrying the real cause, then the recovery; a
//! pre-migration backup's success naming its backup id; `--no-notify`; a webhook that
//! never answers does not hold the job past `notify.timeout` nor change its exit code;
//! a daemon run's failure names the next scheduled run, and its next success (another
//! process) is a recovery.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::setup::Setup;
use common::webhook::{Hanging, Webhook};
use common::{backupctl, stderr, stdout, Backend};

/// Rewrite the config with `[notify]` = `notify` after the cluster's `[postgres]`.
fn with_notify(s: &Setup, notify: &str) -> PathBuf {
    s.t.write_config(
        "backup.toml",
        &format!("{}\n[notify]\n{notify}", s.cluster.postgres_toml()),
    )
}

fn hook_url(port: u16) -> String {
    format!("webhook_url = \"http://127.0.0.1:{port}/services/T0KEN-SECRET\"\n")
}

fn all_output(out: &Output) -> String {
    format!("{}\n{}", stdout(out), stderr(out))
}

#[test]
fn slack_failure_names_the_cause_and_the_next_success_is_a_recovery() {
    let mut s = Setup::new(Backend::Local);
    let hook = Webhook::start();
    let config = with_notify(
        &s,
        &format!(
            "{}format = \"slack\"\non = [\"failure\", \"recovery\"]\n",
            hook_url(hook.port)
        ),
    );
    // PostgreSQL stopped: the backup fails with its own exit code, and says why.
    s.cluster.stop();
    let out = backupctl(&config, &["backup", "--no-verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let posts = hook.accepted();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let body = posts[0].as_object().unwrap();
    assert_eq!(body.len(), 1, "a Slack payload has only `text`: {body:?}");
    let text = body["text"].as_str().unwrap();
    let host = backupctl::host::local_hostname();
    for want in [
        "physical FAILED",
        &format!("on host {host}"),
        "(cluster main)",
        "cause: ",
        "connect to PostgreSQL",
        "next: ",
        "backupctl check",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert!(!text.contains("see the report"), "{text}");
    assert!(!text.contains("T0KEN"), "{text}");

    // PostgreSQL back: the next backup is the first success after a failure.
    s.cluster.start();
    let out = backupctl(&config, &["backup", "--no-verify"]);
    assert!(out.status.success(), "{}", all_output(&out));
    let id = stdout(&out).trim().to_string();
    let posts = hook.accepted();
    assert_eq!(posts.len(), 2, "{posts:?}");
    let text = posts[1]["text"].as_str().unwrap();
    assert!(text.contains("physical RECOVERED"), "{text}");
    assert!(text.contains(&format!("backup: {id}")), "{text}");
    // Another success is neither a recovery nor (with this `on`) sent.
    let out = backupctl(&config, &["backup", "--no-verify"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(hook.accepted().len(), 2, "{:?}", hook.accepted());
    assert!(!all_output(&out).contains("T0KEN"));
}

#[test]
fn pre_migration_backup_success_names_the_backup_and_no_notify_sends_nothing() {
    let s = Setup::new(Backend::Local);
    let hook = Webhook::start();
    let config = with_notify(&s, &format!("{}on = [\"success\"]\n", hook_url(hook.port)));
    let out = backupctl(
        &config,
        &["backup", "--label", "pre-migration", "--no-verify"],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    let id = stdout(&out).trim().to_string();
    let posts = hook.accepted();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let a = &posts[0];
    assert_eq!(a["event"], "job_succeeded", "{a}");
    assert_eq!(a["result"], "success", "{a}");
    assert_eq!(a["job"], "physical", "{a}");
    assert_eq!(a["cluster"], "main", "{a}");
    assert_eq!(a["host"], backupctl::host::local_hostname().as_str(), "{a}");
    assert_eq!(a["backup_ids"], serde_json::json!([id]), "{a}");
    assert!(a["duration_seconds"].as_f64().is_some(), "{a}");
    let text = a["text"].as_str().unwrap();
    assert!(text.contains("label pre-migration"), "{text}");
    assert!(text.contains(&id), "{text}");

    // --no-notify: the command waits for delivery before exiting, so nothing arrives
    // later either.
    for args in [
        &[
            "--no-notify",
            "backup",
            "--label",
            "pre-migration",
            "--no-verify",
        ][..],
        &["backup", "--no-notify", "--no-verify"][..],
    ] {
        let out = backupctl(&config, args);
        assert!(out.status.success(), "{args:?}: {}", all_output(&out));
    }
    assert_eq!(hook.accepted().len(), 1, "{:?}", hook.accepted());
}

/// Wait for `child` to exit, failing after a deadline far beyond `notify.timeout`.
fn wait_exit(mut child: std::process::Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the job waited for the webhook:\n{}", all_output(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hanging_webhook_does_not_hold_the_job_nor_change_its_exit_code() {
    let mut s = Setup::new(Backend::Local);
    let hook = Hanging::start();
    let config = with_notify(
        &s,
        &format!(
            "{}on = [\"failure\", \"success\"]\ntimeout = \"1s\"\n",
            hook_url(hook.port)
        ),
    );
    // A success stays exit 0, printing its backup id.
    let out = wait_exit(common::spawn_backupctl(&config, &["backup", "--no-verify"]));
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        stdout(&out).trim().ends_with("-physical"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("not delivered within notify.timeout (1s)"),
        "{err}"
    );
    assert_eq!(err.matches("WARN").count(), 1, "{err}");
    assert!(!err.contains("T0KEN"), "{err}");
    assert!(*hook.connections.lock().unwrap() >= 1);

    // A failure stays exit 1.
    s.cluster.stop();
    let out = wait_exit(common::spawn_backupctl(&config, &["backup", "--no-verify"]));
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    assert!(stderr(&out).contains("not delivered within notify.timeout"));
}

#[test]
fn daemon_run_failure_names_the_next_run_and_its_next_success_is_a_recovery() {
    let mut s = Setup::new(Backend::Local);
    let hook = Webhook::start();
    let config = with_notify(
        &s,
        &format!(
            "{}on = [\"failure\", \"recovery\"]\n\
             [schedule]\nphysical = \"0 3 * * *\"\n\
             [daemon]\nretry_attempts = 1\nretry_delay = \"1s\"\n",
            hook_url(hook.port)
        ),
    );
    s.cluster.stop();
    let out = backupctl(&config, &["daemon", "--run-once"]);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let posts = hook.accepted();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let a = &posts[0];
    assert_eq!(a["event"], "job_failed", "{a}");
    assert_eq!(a["job"], "physical", "{a}");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("connect to PostgreSQL"),
        "{a}"
    );
    let next = a["next_action"].as_str().unwrap();
    assert!(next.contains("the next scheduled run is at"), "{next}");
    assert!(a["text"].as_str().unwrap().contains(next), "{a}");

    s.cluster.start();
    let out = backupctl(&config, &["daemon", "--run-once", "--json"]);
    assert!(out.status.success(), "{}", all_output(&out));
    let posts = hook.accepted();
    assert_eq!(posts.len(), 2, "{posts:?}");
    let a = &posts[1];
    assert_eq!(a["event"], "job_recovered", "{a}");
    assert_eq!(a["result"], "recovery", "{a}");
    let id = a["backup_ids"][0].as_str().unwrap();
    assert!(id.ends_with("-physical"), "{a}");
    assert!(all_output(&out).contains(id), "{}", all_output(&out));
}

#[test]
fn cli_verify_failure_names_the_damaged_object() {
    let s = Setup::new(Backend::Local);
    let hook = Webhook::start();
    let config = with_notify(&s, &hook_url(hook.port));
    let id = s.backup_no_verify();
    let manifest: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "info", &id])).unwrap();
    let object = manifest["objects"][0]["name"].as_str().unwrap().to_string();
    std::fs::remove_file(s.object_path(&format!("backups/{id}/{object}"))).unwrap();
    let out = backupctl(&config, &["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let posts = hook.accepted();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let a = &posts[0];
    assert_eq!(a["event"], "job_failed", "{a}");
    assert_eq!(a["job"], "verify", "{a}");
    let err = a["error"].as_str().unwrap();
    assert!(err.contains(&id) && err.contains(&object), "{err}");
}

/// `restore` and `archive` run from the command line notify their failures with the
/// cause, as the daemon's jobs do.
#[test]
fn cli_restore_and_archive_failures_are_sent_with_their_cause() {
    let s = Setup::new(Backend::Local);
    let hook = Webhook::start();
    let config = s.t.write_config(
        "backup.toml",
        &format!(
            "{}\n[notify]\n{}\n[[archive]]\ntable = \"public.no_such_table\"\nolder_than = \"1 year\"\n",
            s.cluster.postgres_toml(),
            hook_url(hook.port)
        ),
    );
    s.backup_no_verify();

    let busy = common::pg_tempdir();
    std::fs::write(busy.path().join("PG_VERSION"), "15").unwrap();
    let out = backupctl(
        &config,
        &["restore", "--pgdata", busy.path().to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", all_output(&out));
    let out = backupctl(&config, &["archive"]);
    assert!(!out.status.success(), "{}", all_output(&out));

    let posts = hook.accepted();
    let by_job = |job: &str| {
        posts
            .iter()
            .find(|p| p["job"] == job)
            .unwrap_or_else(|| panic!("no {job} notification in {posts:?}"))
            .clone()
    };
    let restore = by_job("restore");
    assert_eq!(restore["event"], "job_failed", "{restore}");
    let err = restore["error"].as_str().unwrap();
    assert!(err.contains(&busy.path().display().to_string()), "{err}");
    let archive = by_job("archive");
    assert_eq!(archive["event"], "job_failed", "{archive}");
    let err = archive["error"].as_str().unwrap();
    assert!(err.contains("no_such_table"), "{err}");
}
