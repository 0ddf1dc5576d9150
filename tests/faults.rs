//! The fault matrix: every command that writes is killed with SIGKILL at points the test
//! chooses (failpoints, `src/failpoint.rs`: the binary stops there and says so, and the
//! test kills it), and the repository is made to fail through `repo/faulty.rs`, runs out
//! of space, or goes away for a minute under load. Each case asserts what
//! docs/reliability.md promises: nothing that looks complete is broken, no data is lost,
//! the next run succeeds, and what the user sees names the cause.
//!
//! Needs the `failpoints` feature (`scripts/test` enables it).
#![cfg(feature = "failpoints")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::setup::{Setup, KEEP_LAST_1};
use common::{
    as_pg, backupctl, backupctl_bin, backupctl_env, json, pg_bin, pg_tempdir, stderr, stdout,
    switch_wal_and_wait, Backend, Cluster, ClusterOptions, TestRepo,
};

// ---------------------------------------------------------------------------------------
// Helpers

/// Run `backupctl args…` with the failpoint `point` armed, wait until the binary says it
/// stopped there, and kill it with SIGKILL. Returns what it printed on stderr.
fn kill_at(config: &Path, point: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let mut cmd = Command::new(backupctl_bin());
    cmd.arg("--config").arg(config).args(args);
    cmd.env("BACKUPCTL_STOP_AT", point);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = as_pg(&mut cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let name = point.split('@').next().unwrap();
    let wanted = format!("stopped at failpoint {name}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(&wanted) {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!(
                    "backupctl {args:?} never reached failpoint {point} ({e:?}, {status}):\n{seen}"
                );
            }
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    seen
}

fn must(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The ids of complete backups (`list --json`), and of incomplete ones.
fn listing(config: &Path) -> (Vec<String>, Vec<String>) {
    let v = json(&backupctl(config, &["--json", "list"]));
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|b| b.get("id").unwrap_or(b).as_str().unwrap().to_string())
            .collect()
    };
    (ids("backups"), ids("incomplete_backups"))
}

/// `verify --all` passes and test-restored `n` backups.
fn verify_all(s: &Setup, n: usize) {
    let out = must("verify --all", s.run(&["--json", "verify", "--all"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let backups = v["backups"].as_array().unwrap();
    assert_eq!(backups.len(), n, "{v}");
    assert!(backups.iter().all(|b| b["outcome"] == "ok"), "{v}");
}

/// Data worth more than one stretch of a stored object once compressed (so that
/// `repo.put.mid-object` is reached), in table `filler` of `db`.
fn add_filler(c: &Cluster, db: &str, rows: u32) {
    c.psql(
        db,
        &format!(
            "CREATE TABLE IF NOT EXISTS filler (id serial PRIMARY KEY, v text);
             INSERT INTO filler (v) SELECT md5(random()::text) || md5(random()::text)
               FROM generate_series(1, {rows})"
        ),
    );
}

/// The points a backup passes, for `backend` (a local object is written in stretches; an
/// S3 object appears whole or not at all).
fn backup_points(backend: Backend) -> Vec<&'static str> {
    let mut p = vec!["backup.started"];
    if backend == Backend::Local {
        p.push("repo.put.mid-object");
    }
    p.extend(["backup.before-manifest", "backup.after-manifest"]);
    p
}

both_backends!(
    repository_faults_during_wal_push_and_fetch,
    repository_faults_during_backup_and_restore,
    a_lagging_listing_never_lets_retention_delete_the_newest_backup,
    killed_physical_backups_leave_nothing_that_looks_complete,
    killed_logical_backups_leave_nothing_that_looks_complete,
    killed_wal_push_never_stores_a_wrong_segment,
    killed_restore_leaves_a_directory_postgres_refuses,
    killed_retention_strands_no_backup,
);

// ---------------------------------------------------------------------------------------
// SIGKILL at chosen points

fn killed_physical_backups_leave_nothing_that_looks_complete(backend: Backend) {
    let s = Setup::new(backend);
    add_filler(&s.cluster, "postgres", 60_000);
    let args = ["backup", "--kind", "physical", "--no-verify"];
    let mut complete = vec![];
    for point in backup_points(backend) {
        kill_at(&s.config, point, &args, &[]);
        let (ids, incomplete) = listing(&s.config);
        if point == "backup.after-manifest" {
            // Everything was stored, the manifest last: the backup is complete.
            assert_eq!(ids.len(), complete.len() + 1, "{point}: {ids:?}");
            complete = ids;
        } else {
            assert_eq!(
                ids, complete,
                "{point}: a killed backup is listed as complete"
            );
        }
        if point == "backup.before-manifest" {
            // Its parts are there without a manifest: shown as incomplete, by id.
            assert_eq!(incomplete.len(), 1, "{point}: {incomplete:?}");
        }
    }
    // The next backup runs (the killed one's lock and server-side backup are gone), and
    // every backup listed as complete restores.
    s.sql("CREATE TABLE after_kills AS SELECT 42 AS answer");
    let last = s.backup_no_verify();
    let (ids, _) = listing(&s.config);
    assert_eq!(ids.len(), complete.len() + 1);
    assert!(ids.contains(&last));
    verify_all(&s, ids.len());
    let r = s.restore_start(&[]);
    assert_eq!(r.psql("postgres", "SELECT answer FROM after_kills"), "42");
    assert_eq!(
        r.psql("postgres", "SELECT count(*) FROM filler"),
        s.sql("SELECT count(*) FROM filler")
    );
}

fn killed_logical_backups_leave_nothing_that_looks_complete(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE DATABASE app");
    add_filler(&s.cluster, "app", 60_000);
    let args = ["backup", "--kind", "logical", "--no-verify"];
    let mut complete = vec![];
    for point in backup_points(backend) {
        kill_at(&s.config, point, &args, &[]);
        let (ids, _) = listing(&s.config);
        if point == "backup.after-manifest" {
            assert_eq!(ids.len(), complete.len() + 1, "{point}: {ids:?}");
            complete = ids;
        } else {
            assert_eq!(
                ids, complete,
                "{point}: a killed backup is listed as complete"
            );
        }
    }
    let out = must("logical backup after the kills", s.run(&args));
    let id = out.trim().to_string();
    verify_all(&s, complete.len() + 1);
    // The dump restores with every row.
    must(
        "restore the logical backup",
        s.run(&[
            "restore",
            "--logical",
            &id,
            "--database",
            "app",
            "--dbname",
            "app_copy",
            "--create",
        ]),
    );
    assert_eq!(
        s.cluster.psql(
            "app_copy",
            "SELECT count(*), md5(string_agg(v, '' ORDER BY id)) FROM filler"
        ),
        s.cluster.psql(
            "app",
            "SELECT count(*), md5(string_agg(v, '' ORDER BY id)) FROM filler"
        )
    );
}

fn killed_wal_push_never_stores_a_wrong_segment(backend: Backend) {
    // A cluster that does not archive: the test plays the archiver.
    let t = TestRepo::new(backend);
    let c = Cluster::new(ClusterOptions::default());
    let config = t.write_config("backup.toml", &c.postgres_toml());
    // More than a segment of hard-to-compress WAL; the segment before the current one is
    // complete and full of it.
    add_filler(&c, "postgres", 150_000);
    let segment = c.psql(
        "postgres",
        "SELECT pg_walfile_name(pg_current_wal_lsn() - 16 * 1024 * 1024)",
    );
    let path = c.pgdata.join("pg_wal").join(&segment);
    let original = std::fs::read(&path).unwrap();
    let fetched = pg_tempdir();
    let fetch = |n: u32| -> Option<Vec<u8>> {
        let dest = fetched.path().join(format!("fetched-{n}"));
        let out = backupctl(
            &config,
            &["wal-fetch", &segment, &dest.display().to_string()],
        );
        if out.status.success() {
            Some(std::fs::read(&dest).unwrap())
        } else {
            // Not archived (yet): wal-fetch says so with exit 1, never with other bytes.
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            None
        }
    };
    let mut points = vec!["wal-push.before-upload"];
    if backend == Backend::Local {
        points.push("repo.put.mid-object");
    }
    points.push("wal-push.after-upload");
    for (n, point) in points.into_iter().enumerate() {
        kill_at(
            &config,
            point,
            &["wal-push", &path.display().to_string()],
            &[],
        );
        match fetch(n as u32) {
            Some(bytes) => {
                assert!(bytes == original, "{point}: wal-fetch returned other bytes");
                assert_eq!(
                    point, "wal-push.after-upload",
                    "stored before it was complete"
                );
            }
            None => assert_ne!(point, "wal-push.after-upload", "stored, then lost"),
        }
        // PostgreSQL calls wal-push again: it succeeds, and the segment is the original.
        must(
            "wal-push again",
            backupctl(&config, &["wal-push", &path.display().to_string()]),
        );
        assert!(
            fetch(100 + n as u32).as_deref() == Some(&original[..]),
            "{point}"
        );
        // Start the next point from an empty WAL directory again.
        t.delete(&stored_key(&t, &segment));
    }
}

/// The repository key of archived `segment`, whatever its compression suffix.
fn stored_key(t: &TestRepo, segment: &str) -> String {
    t.list_keys("wal/")
        .into_iter()
        .find(|k| k.rsplit('/').next().unwrap().starts_with(segment))
        .unwrap_or_else(|| panic!("{segment} not stored"))
}

fn killed_restore_leaves_a_directory_postgres_refuses(backend: Backend) {
    let s = Setup::new(backend);
    add_filler(&s.cluster, "postgres", 20_000);
    s.backup_no_verify();
    s.sql("CREATE TABLE after_backup AS SELECT 7 AS n");
    switch_wal_and_wait(&s.cluster);
    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    let pg = pgdata.display().to_string();
    for point in ["restore.mid-copy", "restore.before-recovery-config"] {
        kill_at(&s.config, point, &["restore", "--pgdata", &pg], &[]);
        // Files are there, but not pg_control: PostgreSQL refuses to start on it instead
        // of running crash recovery over a half-restored copy.
        assert!(pgdata.join("PG_VERSION").exists(), "{point}");
        assert!(!pgdata.join("global/pg_control").exists(), "{point}");
        let out = as_pg(
            Command::new(pg_bin("postgres"))
                .arg("-D")
                .arg(&pgdata)
                .args(["-c", "config_file=/dev/null", "-c", "listen_addresses="]),
        )
        .output()
        .unwrap();
        assert!(!out.status.success(), "{point}: postgres started");
        assert!(
            stderr(&out).contains("pg_control"),
            "{point}: {}",
            stderr(&out)
        );
    }
    // The next restore into the same directory says what it found and succeeds.
    let port = common::free_port().to_string();
    let out = s.run(&["restore", "--pgdata", &pg, "--start", "--port", &port]);
    let restored = common::Restored {
        pgdata: pgdata.clone(),
        socket_dir: s.cluster.socket_dir.clone(),
        port: port.parse().unwrap(),
        dir: None,
    };
    let text = must("restore after the kills", out.clone());
    assert!(
        stderr(&out).contains("interrupted restore"),
        "{text}\n{}",
        stderr(&out)
    );
    assert_eq!(restored.psql("postgres", "SELECT n FROM after_backup"), "7");
    restored.stop();
}

fn killed_retention_strands_no_backup(backend: Backend) {
    let s = Setup::with_config(backend, KEEP_LAST_1);
    s.sql("CREATE TABLE t AS SELECT 1 AS v");
    let first = s.backup_no_verify();
    s.sql("INSERT INTO t VALUES (2)");
    let second = s.backup_no_verify();
    kill_at(&s.config, "retention.mid-delete", &["retention"], &[]);
    // The first backup's manifest is gone: it is no longer offered for restores, and
    // it is shown as incomplete; the second is untouched.
    let (ids, incomplete) = listing(&s.config);
    assert_eq!(ids, vec![second.clone()]);
    assert_eq!(incomplete, vec![first.clone()], "{ids:?}");
    // The next run finishes the job.
    must("retention after the kill", s.run(&["retention"]));
    let (ids, incomplete) = listing(&s.config);
    assert_eq!(ids, vec![second.clone()]);
    assert!(incomplete.is_empty(), "{incomplete:?}");
    assert!(s.t.list_keys(&format!("backups/{first}")).is_empty());
    let r = s.restore_start(&[]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "2");
}

// ---------------------------------------------------------------------------------------
// Jobs on the database

#[test]
fn killed_archival_loses_no_row() {
    let s = Setup::with_config(
        Backend::Local,
        "[[archive]]\ntable = \"public.events\"\ncolumn = \"at\"\nolder_than = \"1 year\"\nbatch_size = 1000\n",
    );
    s.sql(
        "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, v text);
         INSERT INTO events SELECT g, now() - interval '3 years' + g * interval '1 minute', md5(g::text)
           FROM generate_series(1, 5000) g;
         INSERT INTO events SELECT 100000 + g, now() - interval '1 day', 'recent'
           FROM generate_series(1, 100) g;",
    );
    let fingerprint = "SELECT count(*) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM \
                       (SELECT id, v FROM public.events UNION ALL SELECT id, v FROM archive.events) x";
    let all = s.sql(
        "SELECT count(*) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM public.events",
    );
    kill_at(&s.config, "archive.mid-transaction", &["archive"], &[]);
    // The killed batch rolled back with its session: every row is exactly once somewhere.
    assert_eq!(s.sql(fingerprint), all);
    assert_eq!(s.sql("SELECT count(*) FROM archive.events"), "0");
    // Killed in its third batch: the first two are committed, whole.
    kill_at(&s.config, "archive.mid-transaction@3", &["archive"], &[]);
    assert_eq!(s.sql(fingerprint), all);
    assert_eq!(s.sql("SELECT count(*) FROM archive.events"), "2000");
    must("archive after the kill", s.run(&["archive"]));
    assert_eq!(s.sql(fingerprint), all);
    assert_eq!(s.sql("SELECT count(*) FROM public.events"), "100");
    assert_eq!(s.sql("SELECT count(*) FROM archive.events"), "5000");
}

/// An export killed before its manifest leaves an object nothing uses (retention removes
/// it after `incomplete_after`); one killed after it leaves its rows in the database,
/// and the next run finds the export made and only drops them. No row is lost or
/// exported twice.
fn killed_export_loses_no_row_and_makes_no_second_copy(backend: Backend) {
    let s = Setup::with_config(
        backend,
        "[[archive]]\ntable = \"public.events\"\ncolumn = \"at\"\nolder_than = \"1 year\"\nexport_after = \"2 years\"\n",
    );
    // Rows in three months, three years ago, and recent ones.
    s.sql(
        "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, v text);
         INSERT INTO events SELECT g, date_trunc('month', now()) - interval '36 months' + g * interval '30 minutes', md5(g::text)
           FROM generate_series(1, 4000) g;
         INSERT INTO events SELECT 100000 + g, now() - interval '1 day', 'recent'
           FROM generate_series(1, 100) g;",
    );
    let in_db =
        "SELECT count(*) || ':' || coalesce(md5(string_agg(id || v, ',' ORDER BY id)), '') FROM \
                 (SELECT id, v FROM public.events UNION ALL SELECT id, v FROM archive.events) x";
    let all = s.sql(
        "SELECT count(*) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM public.events",
    );
    let exports = || -> Vec<serde_json::Value> {
        let out = s.run(&["--json", "list"]);
        json(&out)["exports"].as_array().unwrap().clone()
    };
    kill_at(&s.config, "export.before-manifest", &["archive"], &[]);
    assert_eq!(s.sql(in_db), all);
    assert!(exports().is_empty());
    let orphan = s.t.list_keys("exports/");
    assert_eq!(orphan.len(), 1, "{orphan:?}");

    kill_at(&s.config, "export.after-manifest", &["archive"], &[]);
    assert_eq!(
        s.sql(in_db),
        all,
        "the rows stay until the export is complete"
    );
    let listed = exports();
    assert_eq!(listed.len(), 1);

    let out = s.run(&["--json", "archive"]);
    let r = json(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    let items = r["tables"][0]["exports"]["items"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(items[0]["status"], "already_exported", "{items:#?}");
    assert_eq!(items[0]["id"], listed[0]["id"]);
    assert!(
        items[1..].iter().all(|i| i["status"] == "exported"),
        "{items:#?}"
    );
    // Every row is in the database or in exactly one export.
    let listed = exports();
    assert_eq!(listed.len(), items.len());
    let exported: i64 = listed.iter().map(|e| e["rows"].as_i64().unwrap()).sum();
    let left: i64 = s
        .sql("SELECT (SELECT count(*) FROM public.events) + (SELECT count(*) FROM archive.events)")
        .parse()
        .unwrap();
    assert_eq!(exported + left, 4100);
    let months: std::collections::BTreeSet<&str> = listed
        .iter()
        .map(|e| e["month"].as_str().unwrap())
        .collect();
    assert_eq!(months.len(), listed.len(), "{listed:#?}");

    // Objects of exports killed before their manifest go with retention once older
    // than incomplete_after (by the time in their id): the one just left stays, one
    // from 2020 goes.
    let old = "exports/20200101T000000Z-events_2020_01-0000/data.dump.zst".to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use backupctl::repo::RepositoryExt;
        let repo = s.t.open().await;
        repo.put_bytes(&old, b"partial".to_vec(), Default::default())
            .await
            .unwrap();
    });
    if s.t.backend == Backend::Local {
        common::chown_to_pg(&s.t.dir.path().join("repo"));
    }
    let out = s.run(&["--json", "retention"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&out)["exports"]["unfinished"],
        serde_json::json!(["20200101T000000Z-events_2020_01-0000"])
    );
    let keys = s.t.list_keys("exports/");
    assert!(
        !keys.contains(&old) && keys.contains(&orphan[0]),
        "{keys:?}"
    );
    assert_eq!(exports().len(), items.len());
}

#[test]
fn killed_export_loses_no_row_and_makes_no_second_copy_local() {
    killed_export_loses_no_row_and_makes_no_second_copy(Backend::Local);
}

#[test]
fn killed_export_loses_no_row_and_makes_no_second_copy_s3() {
    killed_export_loses_no_row_and_makes_no_second_copy(Backend::S3);
}

/// A stored export that does not read back intact (every read truncated) is deleted
/// and nothing is dropped from the database; the next run exports it.
#[test]
fn an_export_that_does_not_read_back_intact_drops_nothing() {
    let s = Setup::with_config(
        Backend::Local,
        "[[archive]]\ntable = \"public.events\"\ncolumn = \"at\"\nolder_than = \"1 year\"\nexport_after = \"2 years\"\n",
    );
    s.sql(
        "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, v text);
         INSERT INTO events SELECT g, date_trunc('month', now()) - interval '36 months' + g * interval '5 minutes', md5(g::text)
           FROM generate_series(1, 4000) g;",
    );
    let out = backupctl_env(
        &s.config,
        &["--json", "archive"],
        &faults("truncate:get:1+:1000:eof"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = json(&out);
    let items = r["tables"][0]["exports"]["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!items.is_empty());
    for i in &items {
        assert_eq!(i["status"], "failed", "{i:#}");
        let d = i["detail"].as_str().unwrap();
        assert!(
            d.contains("by reading it back") && d.contains("nothing was dropped"),
            "{d}"
        );
    }
    assert_eq!(s.sql("SELECT count(*) FROM archive.events"), "4000");
    assert!(s.t.list_keys("exports/").is_empty());
    must("archive without faults", s.run(&["archive"]));
    assert_eq!(s.sql("SELECT count(*) FROM archive.events"), "0");
}

#[test]
fn killed_daemon_job_is_rerun_by_the_next_daemon() {
    let s = Setup::with_config(
        Backend::Local,
        "[schedule]\nphysical = \"0 3 * * *\"\n[daemon]\nretry_attempts = 1\nretry_delay = \"1s\"\n",
    );
    s.sql("CREATE TABLE t AS SELECT 5 AS v");
    kill_at(&s.config, "backup.started", &["daemon", "--run-once"], &[]);
    assert!(listing(&s.config).0.is_empty());
    // The history does not claim the killed run is still going.
    let info = json(&s.run(&["--json", "info"]));
    let job = &info["daemon"]["jobs"][0];
    assert!(job["running"].is_null(), "{info}");
    let out = must("daemon after the kill", s.run(&["daemon", "--run-once"]));
    assert!(out.starts_with("physical   success"), "{out}");
    assert_eq!(listing(&s.config).0.len(), 1);
}

// ---------------------------------------------------------------------------------------
// The repository failing (repo/faulty.rs, through BACKUPCTL_REPO_FAULTS)

fn faults(spec: &str) -> Vec<(&'static str, String)> {
    vec![("BACKUPCTL_REPO_FAULTS", spec.to_string())]
}

fn repository_faults_during_wal_push_and_fetch(backend: Backend) {
    let t = TestRepo::new(backend);
    let c = Cluster::new(ClusterOptions::default());
    let config = t.write_config("backup.toml", &c.postgres_toml());
    add_filler(&c, "postgres", 20_000);
    let segment = c.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let path = c.pgdata.join("pg_wal").join(&segment).display().to_string();
    let original = std::fs::read(&path).unwrap();
    let out_dir = pg_tempdir();
    let dest = out_dir.path().join("fetched").display().to_string();
    let push = |spec: &str| backupctl_env(&config, &["wal-push", &path], &faults(spec));
    let fetch = |spec: &str| backupctl_env(&config, &["wal-fetch", &segment, &dest], &faults(spec));

    // Every upload refused: wal-push fails (PostgreSQL keeps the file and calls it
    // again), naming the segment and the request; nothing is stored.
    let out = push("fail:put:1+:permanent");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("upload") && err.contains(&segment), "{err}");
    assert_eq!(
        fetch("").status.code(),
        Some(1),
        "stored after a failed push"
    );
    must("wal-push", push(""));
    t.delete(&stored_key(&t, &segment));

    // The repository's own retries are spent (a transient failure reaching the
    // command), or the response to a write that succeeded is lost: the call fails, and
    // PostgreSQL's next call stores the segment, or recognises the stored copy as
    // identical. Either way exit 0 then, with the original bytes stored.
    for spec in ["fail:put:1", "timeout-after-write:put:1"] {
        let out = push(spec);
        assert_eq!(out.status.code(), Some(1), "{spec}: {}", stderr(&out));
        assert!(stderr(&out).contains(&segment), "{spec}: {}", stderr(&out));
        must("wal-push after a failed one", push(""));
        must("wal-fetch", fetch(""));
        assert!(std::fs::read(&dest).unwrap() == original, "{spec}");
        std::fs::remove_file(&dest).unwrap();
        if spec.starts_with("fail") {
            t.delete(&stored_key(&t, &segment));
        }
    }

    // Slow but working: fine.
    must("wal-fetch with latency", fetch("latency:200"));
    assert!(std::fs::read(&dest).unwrap() == original);
    std::fs::remove_file(&dest).unwrap();

    // A body cut short is never handed to PostgreSQL as the segment; a repository that
    // fails is not "not archived" (exit 1 would end recovery early as if the archive
    // ended): exit 126 stops recovery, naming the cause.
    for spec in ["truncate:get:1+:1000:eof", "fail:any:1+:permanent"] {
        let out = fetch(spec);
        assert_eq!(out.status.code(), Some(126), "{spec}: {}", stderr(&out));
        assert!(stderr(&out).contains(&segment), "{spec}: {}", stderr(&out));
        assert!(
            !Path::new(&dest).exists(),
            "{spec}: a partial file was left"
        );
    }
}

fn repository_faults_during_backup_and_restore(backend: Backend) {
    let s = Setup::new(backend);
    add_filler(&s.cluster, "postgres", 20_000);
    // The repository refuses the second upload on: the backup fails naming it, and
    // leaves neither a manifest nor its other objects.
    let out = backupctl_env(
        &s.config,
        &["backup", "--kind", "physical", "--no-verify"],
        &faults("fail:put:2+:permanent"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("injected failure"),
        "{}",
        stderr(&out)
    );
    let (ids, incomplete) = listing(&s.config);
    assert!(
        ids.is_empty() && incomplete.is_empty(),
        "{ids:?} {incomplete:?}"
    );
    // Slow requests: still a complete, restorable backup.
    let out = backupctl_env(
        &s.config,
        &["backup", "--kind", "physical", "--no-verify"],
        &faults("latency:20"),
    );
    must("backup with latency", out);
    switch_wal_and_wait(&s.cluster);
    // A restore whose download is cut short fails naming the object, and empties what
    // it wrote; the same restore without the fault succeeds. The cut comes after the
    // manifest's size (it lists every file of the backup), inside the data parts.
    let manifest_size = std::fs::metadata(s.object_path(&format!(
        "backups/{}/manifest.json",
        listing(&s.config).0[0]
    )))
    .map(|m| m.len())
    .unwrap_or(100_000);
    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    let pg = pgdata.display().to_string();
    let out = backupctl_env(
        &s.config,
        &["restore", "--pgdata", &pg],
        &faults(&format!("truncate:get:1+:{}:eof", manifest_size + 1000)),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("base."), "{}", stderr(&out));
    assert!(
        common::walk(&pgdata).is_empty(),
        "{:?}",
        common::walk(&pgdata)
    );
    let r = s.restore_start(&[]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM filler"), "20000");
}

fn a_lagging_listing_never_lets_retention_delete_the_newest_backup(backend: Backend) {
    let s = Setup::with_config(backend, KEEP_LAST_1);
    s.sql("CREATE TABLE t AS SELECT 1 AS v");
    let first = s.backup_no_verify();
    s.sql("INSERT INTO t VALUES (2)");
    let second = s.backup_no_verify();
    // Every listing leaves out the newest object (the newest backup's manifest, or a
    // WAL segment): the newest backup looks incomplete and recent, so it is kept.
    let out = backupctl_env(
        &s.config,
        &["--json", "retention"],
        &faults("list-omits-newest:list:1+"),
    );
    let text = must("retention with a lagging listing", out);
    let (ids, _) = listing(&s.config);
    assert!(ids.contains(&second), "{ids:?}\n{text}");
    // With the listing caught up, the policy applies.
    must("retention", s.run(&["retention"]));
    assert_eq!(listing(&s.config).0, vec![second.clone()]);
    assert!(s.t.list_keys(&format!("backups/{first}")).is_empty());
    let r = s.restore_start(&[]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "2");
}

// ---------------------------------------------------------------------------------------
// Out of space, and the S3 server gone for a minute

/// A small tmpfs mounted at `path` for the test's lifetime (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (and a note on stderr) when the tests do not run as root.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        if common::pg_user().is_none() {
            eprintln!("skipped: mounting a small tmpfs (a full disk) needs root");
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", path.display());
        common::chown_to_pg(path);
        Some(Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_repository_fails_loudly_and_archiving_resumes_when_there_is_room() {
    let t = TestRepo::new(Backend::Local);
    let Some(disk) = Tmpfs::mount(&t.dir.path().join("repo"), "3m") else {
        return;
    };
    let config = t.write_config("backup.toml", "");
    let c = Cluster::new(ClusterOptions {
        archive_command: Some(common::archive_command(&config)),
        ..Default::default()
    });
    let config = t.write_config("backup.toml", &c.postgres_toml());
    add_filler(&c, "postgres", 60_000);
    let out = backupctl(&config, &["backup", "--kind", "physical", "--no-verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "{}",
        stderr(&out)
    );
    // Nothing complete, and what the failed backup wrote is gone again.
    let (ids, incomplete) = listing(&config);
    assert!(
        ids.is_empty() && incomplete.is_empty(),
        "{ids:?} {incomplete:?}"
    );
    let leftovers: Vec<String> = common::walk(&t.dir.path().join("repo"))
        .into_iter()
        .filter(|p| p.contains("/backups/"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Archiving fails meanwhile; PostgreSQL keeps the WAL. With room again, it resumes
    // by itself and the next backup succeeds.
    disk.resize("200m");
    let id = must(
        "backup with room",
        backupctl(&config, &["backup", "--kind", "physical", "--no-verify"]),
    );
    switch_wal_and_wait(&c);
    let (ids, _) = listing(&config);
    assert_eq!(ids, vec![id.trim().to_string()]);
    let v = json(&backupctl(&config, &["--json", "list"]));
    assert!(v["wal_gaps"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn a_full_restore_target_fails_naming_it_and_is_emptied() {
    let s = Setup::new(Backend::Local);
    add_filler(&s.cluster, "postgres", 20_000);
    s.backup_no_verify();
    let dir = pg_tempdir();
    let target = dir.path().join("small");
    let Some(disk) = Tmpfs::mount(&target, "10m") else {
        return;
    };
    let pgdata = target.join("restored");
    let pg = pgdata.display().to_string();
    let out = s.run(&["restore", "--pgdata", &pg]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("was emptied again"), "{err}");
    assert!(
        common::walk(&pgdata).is_empty(),
        "{:?}",
        common::walk(&pgdata)
    );
    disk.resize("300m");
    must("restore with room", s.run(&["restore", "--pgdata", &pg]));
    assert!(pgdata.join("global/pg_control").exists());
}

#[test]
fn an_s3_outage_under_load_loses_no_wal_and_pitr_inside_it_is_exact() {
    let mut s = Setup::new(Backend::S3);
    s.sql("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())");
    s.cluster.pgbench_init(2);
    s.backup_no_verify();
    let load = s
        .cluster
        .pgbench_load(&["-c", "2", "-j", "1", "-T", "75", "-R", "300"]);
    let mut mark = 0;
    let mut add_mark = |s: &Setup| {
        mark += 1;
        s.sql(&format!("INSERT INTO marks (id) VALUES ({mark})"));
        mark
    };
    add_mark(&s);
    s.t.s3.as_mut().unwrap().stop();
    let outage = Instant::now();
    // Marks every ~2 s through the outage; the target is the server's clock between
    // two of them, half-way through.
    let mut target = None;
    while outage.elapsed() < Duration::from_secs(60) {
        let m = add_mark(&s);
        if target.is_none() && outage.elapsed() >= Duration::from_secs(30) {
            target = Some((m, s.now()));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let failed: i64 = s
        .sql("SELECT failed_count FROM pg_stat_archiver")
        .parse()
        .unwrap();
    assert!(
        failed > 0,
        "archiving never failed: the outage did not happen"
    );
    s.t.s3.as_mut().unwrap().resume();
    add_mark(&s);
    load.finish();
    // Archiving resumes by itself: everything up to now arrives, with no gap.
    switch_wal_and_wait(&s.cluster);
    let v = json(&s.run(&["--json", "list"]));
    assert!(v["wal_gaps"].as_array().unwrap().is_empty(), "{v}");
    // A PITR to a moment inside the outage has exactly the marks committed before it.
    let (before, at) = target.unwrap();
    let r = s.restore_start(&["--target-time", &at]);
    assert_eq!(
        r.psql("postgres", "SELECT count(*), max(id) FROM marks"),
        format!("{before}|{before}")
    );
}
