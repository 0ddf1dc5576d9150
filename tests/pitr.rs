//! Point-in-time recovery against real PostgreSQL 15 clusters archiving with
//! `backupctl wal-push`, on both repository backends: restores to a time, a restore point
//! and an LSN; backups under write load; corruption and gaps; timelines; bad requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::setup::Setup;
use common::{
    as_pg, backupctl, check_output, pg_bin, pg_tempdir, stderr, switch_wal_and_wait, Backend,
    Cluster, ClusterOptions, TestRepo,
};
use tempfile::TempDir;

impl Setup {
    /// Write a segment's worth of WAL, archive it, and fetch it back into a `pg_wal`
    /// directory the postgres user owns: (that directory's temp dir, the segment's
    /// name, the copy's path, its bytes).
    fn archived_segment_copy(&self) -> (TempDir, String, PathBuf, Vec<u8>) {
        self.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
        let seg = self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        switch_wal_and_wait(&self.cluster);
        let work = pg_tempdir();
        let wal_dir = work.path().join("pg_wal");
        std::fs::create_dir(&wal_dir).unwrap();
        common::chown_to_pg(&wal_dir);
        let copy = wal_dir.join(&seg);
        self.ok(&["wal-fetch", &seg, copy.to_str().unwrap()]);
        let original = std::fs::read(&copy).unwrap();
        (work, seg, copy, original)
    }
}

fn flip_byte(path: &Path, at_fraction: f64) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = ((bytes.len() as f64) * at_fraction) as usize;
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

both_backends!(
    pitr_to_time_restore_point_and_lsn,
    backup_under_write_load_restores_consistently,
    corrupted_object_fails_restore_naming_it,
    missing_wal_segment_is_refused_naming_the_gap,
    wal_push_is_idempotent_and_never_overwrites,
    wal_push_pushes_ready_segments_ahead,
    wal_fetch_missing_is_quiet_and_corruption_is_loud,
    wal_fetch_prefetches_the_following_segments,
    timelines_after_pitr,
    bad_restore_requests_are_refused,
    tablespaces_are_backed_up_and_relocated,
);

fn pitr_to_time_restore_point_and_lsn(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    s.sql("INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g");
    let id = s.backup();
    assert!(id.ends_with("-physical"), "{id}");

    s.sql("INSERT INTO t (id) VALUES (101)"); // T1
    s.sql("INSERT INTO t (id) VALUES (102)"); // T2
    s.sql("SELECT pg_create_restore_point('after_102')");
    let lsn = s.sql("SELECT pg_current_wal_insert_lsn()");
    std::thread::sleep(Duration::from_millis(1100));
    let target = s.now();
    std::thread::sleep(Duration::from_millis(1100));
    s.sql("INSERT INTO t (id) VALUES (103)"); // T3
    switch_wal_and_wait(&s.cluster);

    for extra in [
        vec!["--target-time", target.as_str()],
        vec!["--target-name", "after_102"],
        vec!["--target-lsn", lsn.as_str()],
    ] {
        let r = s.restore_start(&extra);
        assert_eq!(
            r.psql("postgres", "SELECT count(*), max(id) FROM t"),
            "102|102",
            "restore {extra:?}"
        );
        // Promoted: writable.
        r.psql("postgres", "INSERT INTO t (id) VALUES (1000)");
        assert_eq!(r.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
        r.stop();
    }

    // list/info know the backup and the window.
    let listing: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "list"])).unwrap();
    assert_eq!(listing["backups"][0]["id"], id.as_str());
    assert_eq!(listing["backups"][0]["kind"], "physical");
    assert!(
        !listing["recoverable_windows"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{listing}"
    );
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info", &id])).unwrap();
    assert_eq!(info["id"], id.as_str());
    assert!(info["objects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["sha256"].as_str().unwrap().len() == 64));
    let human = s.ok(&["list"]);
    assert!(
        human.contains(&id) && human.contains("recoverable window"),
        "{human}"
    );
}

fn backup_under_write_load_restores_consistently(backend: Backend) {
    let s = Setup::new(backend);
    let conn = |cmd: &mut Command| {
        cmd.arg("-h").arg(&s.cluster.socket_dir).args([
            "-p",
            &s.cluster.port.to_string(),
            "-U",
            "postgres",
        ]);
    };
    let mut init = Command::new(pg_bin("pgbench"));
    conn(&mut init);
    check_output(
        "pgbench -i",
        init.args(["-i", "-s", "5", "-q", "postgres"])
            .output()
            .unwrap(),
    );

    let mut bench = Command::new(pg_bin("pgbench"));
    conn(&mut bench);
    let bench = bench
        .args(["-c", "4", "-j", "2", "-T", "20", "-n", "postgres"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let id = s.backup();
    let out = bench.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    switch_wal_and_wait(&s.cluster);

    let archiver = s.sql("SELECT failed_count, archived_count FROM pg_stat_archiver");
    let (failed, archived) = archiver.split_once('|').unwrap();
    assert_eq!(
        failed,
        "0",
        "archiver failures under load:\n{}",
        s.cluster.server_log()
    );
    assert!(archived.parse::<u32>().unwrap() >= 3, "{archiver}");

    let want_history = s.sql("SELECT count(*) FROM pgbench_history");
    let r = s.restore_start(&["--backup", &id]);
    // Every pgbench transaction moves the same delta in all three tables and history.
    let check = r.psql(
        "postgres",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
            AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history) \
            AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history), \
            (SELECT count(*) FROM pgbench_history)",
    );
    assert_eq!(
        check,
        format!("t|{want_history}"),
        "restored state is not the latest consistent one"
    );
    assert_eq!(
        r.psql("postgres", "SELECT count(*) FROM pgbench_accounts"),
        "500000"
    );
}

fn corrupted_object_fails_restore_naming_it(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    let id = s.backup();
    switch_wal_and_wait(&s.cluster);
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info", &id])).unwrap();
    let object = info["objects"][0]["name"].as_str().unwrap().to_string();
    flip_byte(&s.object_path(&format!("backups/{id}/{object}")), 0.5);

    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    let out = s.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target",
        "immediate",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&object), "error does not name {object}: {err}");
    assert!(err.contains("checksum"), "{err}");
    // Nothing half-restored is left to be mistaken for a data directory.
    assert!(std::fs::read_dir(&pgdata)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true));
}

fn missing_wal_segment_is_refused_naming_the_gap(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE TABLE t (id int)");
    s.backup();
    let mut segments = vec![];
    for i in 0..4 {
        s.sql(&format!("INSERT INTO t VALUES ({i})"));
        segments.push(s.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        switch_wal_and_wait(&s.cluster);
    }
    std::thread::sleep(Duration::from_millis(1100));
    let target = s.now();
    s.sql("INSERT INTO t VALUES (99)");
    switch_wal_and_wait(&s.cluster);
    let victim = &segments[1];
    let key = format!("wal/{}/{victim}.zst", &victim[..16]);
    std::fs::remove_file(s.object_path(&key)).unwrap();
    if backend == Backend::Local {
        let _ = std::fs::remove_file(
            s.object_path(&format!("wal/{}/.{victim}.zst.meta", &victim[..16])),
        );
    }

    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    let out = s.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-time",
        &target,
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(victim.as_str()) && err.contains("missing"),
        "{err}"
    );
    assert!(err.contains("recoverable window"), "{err}");
    assert!(!pgdata.exists());
    let listing = s.ok(&["list"]);
    assert!(
        listing.contains("WAL gap") && listing.contains(victim.as_str()),
        "{listing}"
    );
}

fn wal_push_is_idempotent_and_never_overwrites(backend: Backend) {
    let s = Setup::new(backend);
    // A copy of the archived segment, as PostgreSQL would hand it over again after a crash.
    let (work, seg, copy, original) = s.archived_segment_copy();
    s.ok(&["wal-push", copy.to_str().unwrap()]);
    s.ok(&["wal-push", copy.to_str().unwrap()]);
    // Compressed at another level the stored bytes differ, but the content is the same.
    let relevelled = s.t.write_config(
        "relevelled.toml",
        &format!("{}\n[compression]\nlevel = 1\n", s.cluster.postgres_toml()),
    );
    let out = backupctl(&relevelled, &["wal-push", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Under another algorithm too, and it is not stored a second time beside the first.
    let gzipped = s.t.write_config(
        "gzipped.toml",
        &format!(
            "{}\n[compression]\nalgorithm = \"gzip\"\n",
            s.cluster.postgres_toml()
        ),
    );
    let out = backupctl(&gzipped, &["wal-push", copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = |suffix: &str| s.object_path(&format!("wal/{}/{seg}{suffix}", &seg[..16]));
    assert!(stored(".zst").exists());
    assert!(!stored(".gz").exists(), "stored twice");

    // A segment shorter than its header says is refused.
    std::fs::write(&copy, &original[..original.len() / 2]).unwrap();
    let out = s.run(&["wal-push", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("damaged segment"), "{}", stderr(&out));
    std::fs::write(&copy, &original).unwrap();

    // Same name, different content: refused (at either level), and the archive keeps
    // the original.
    let mut changed = original.clone();
    changed[100_000] ^= 0xff;
    std::fs::write(&copy, &changed).unwrap();
    for config in [&s.config, &relevelled, &gzipped] {
        let out = backupctl(config, &["wal-push", copy.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("refusing to overwrite"),
            "{}",
            stderr(&out)
        );
    }
    let back = work.path().join("back");
    s.ok(&["wal-fetch", &seg, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "archived segment changed"
    );

    // WAL from another cluster never enters this repository.
    let other = Cluster::new(ClusterOptions::default());
    let other_seg = other.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let out = as_pg(
        Command::new(common::backupctl_bin())
            .arg("--config")
            .arg(&s.config)
            .args(["wal-push", &format!("pg_wal/{other_seg}")]),
    )
    .current_dir(&other.pgdata)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("system identifier"),
        "{}",
        stderr(&out)
    );
}

/// The repository refuses the write (here: a directory the archiving user cannot write
/// to): wal-push exits 1 naming the repository error, and leaves neither the object nor
/// a temp file; once writable again the same file archives normally.
#[test]
fn wal_push_into_an_unwritable_repository_fails_and_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new(Backend::Local);
    let (work, seg, copy, original) = s.archived_segment_copy();

    // Take the archived copy away and make its directory read-only.
    let object = s.object_path(&format!("wal/{}/{seg}.zst", &seg[..16]));
    let dir = object.parent().unwrap().to_path_buf();
    std::fs::remove_file(&object).unwrap();
    let _ = std::fs::remove_file(dir.join(format!(".{seg}.zst.meta")));
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = entries();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = s.run(&["wal-push", copy.to_str().unwrap()]);
    let after = entries();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("archive {seg}"))
            && err.contains("ermission denied")
            && err.contains("Fix: give the user backupctl runs as"),
        "{err}"
    );
    assert_eq!(after, before, "something was left in {}", dir.display());

    s.ok(&["wal-push", copy.to_str().unwrap()]);
    let back = work.path().join("back");
    s.ok(&["wal-fetch", &seg, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "archived segment differs"
    );
}

/// wal-push also stores the next `.ready` segments (in parallel) and leaves a marker for
/// each, so the archiver's next calls return at once; a marker counts only for the same
/// file, once.
fn wal_push_pushes_ready_segments_ahead(backend: Backend) {
    let t = TestRepo::new(backend);
    // Archiving fails at first, so PostgreSQL builds a backlog of `.ready` segments.
    let cluster = Cluster::new(ClusterOptions {
        archive_command: Some("false".into()),
        ..Default::default()
    });
    let config = t.write_config(
        "backup.toml",
        &format!("{}\n[wal]\npush_concurrency = 2\n", cluster.postgres_toml()),
    );
    let mut segments = vec![];
    for i in 0..5 {
        cluster.psql("postgres", &format!("CREATE TABLE t{i} AS SELECT 1 AS x"));
        segments.push(cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let ready = |seg: &str| {
        cluster
            .pgdata
            .join("pg_wal/archive_status")
            .join(format!("{seg}.ready"))
            .exists()
    };
    assert!(segments.iter().all(|s| ready(s)), "{segments:?}");
    let push = |seg: &str| {
        let out = as_pg(
            Command::new(common::backupctl_bin())
                .arg("--config")
                .arg(&config)
                .args(["-v", "wal-push", &format!("pg_wal/{seg}")]),
        )
        .current_dir(&cluster.pgdata)
        .output()
        .unwrap();
        let out = check_output(&format!("wal-push {seg}"), out);
        // What PostgreSQL does once archive_command succeeded.
        let status = cluster.pgdata.join("pg_wal/archive_status");
        std::fs::rename(
            status.join(format!("{seg}.ready")),
            status.join(format!("{seg}.done")),
        )
        .unwrap();
        out
    };
    let fetched = pg_tempdir();
    let archived = || -> Vec<String> {
        segments
            .iter()
            .filter(|s| {
                let to = fetched.path().join(s.as_str());
                let out = backupctl(&config, &["wal-fetch", s, to.to_str().unwrap()]);
                let _ = std::fs::remove_file(&to);
                out.status.success()
            })
            .cloned()
            .collect()
    };
    let markers = t.dir.path().join("state/wal-pushed");
    let marker_names = || -> Vec<String> {
        let mut names = vec![];
        for repo in std::fs::read_dir(&markers).into_iter().flatten().flatten() {
            for m in std::fs::read_dir(repo.path()).unwrap().flatten() {
                names.push(m.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        names
    };

    // The archiver asks for the oldest; the next three ready ones go along (two rounds
    // of push_concurrency = 2).
    push(&segments[0]);
    assert_eq!(archived(), segments[..4].to_vec());
    assert_eq!(marker_names(), segments[1..4].to_vec());

    // The next call finds its marker: nothing to do, and the marker is used up.
    let out = push(&segments[1]);
    assert!(
        stderr(&out).contains("already archived ahead of this call"),
        "{}",
        stderr(&out)
    );
    assert!(!marker_names().contains(&segments[1]));

    // A file that changed since it was pushed ahead (here: only its mtime) is not
    // trusted to the marker: it is pushed again, which is idempotent for the same bytes.
    let third = cluster.pgdata.join("pg_wal").join(&segments[2]);
    let f = std::fs::File::options().append(true).open(&third).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let out = push(&segments[2]);
    assert!(
        !stderr(&out).contains("already archived ahead"),
        "{}",
        stderr(&out)
    );
    // ... and that call pushed the last one ahead (the fourth still has its marker).
    assert_eq!(archived(), segments.to_vec());
    assert_eq!(marker_names(), segments[3..].to_vec());
}

fn wal_fetch_missing_is_quiet_and_corruption_is_loud(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let seg = s.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    switch_wal_and_wait(&s.cluster);
    let work = pg_tempdir();
    let dest = work.path().join("RECOVERYXLOG");

    let out = s.run(&[
        "wal-fetch",
        "0000000100000000000000FE",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "", "a missing segment must exit quietly");
    let out = s.run(&["wal-fetch", "00000009.history", dest.to_str().unwrap()]);
    assert_eq!((out.status.code(), stderr(&out).as_str()), (Some(1), ""));

    flip_byte(
        &s.object_path(&format!("wal/{}/{seg}.zst", &seg[..16])),
        0.5,
    );
    // Exit 126: PostgreSQL stops recovery rather than ending it early at this segment.
    let out = s.run(&["wal-fetch", &seg, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains("checksum") && stderr(&out).contains(&seg),
        "{}",
        stderr(&out)
    );
    assert!(
        !dest.exists(),
        "a corrupt segment must not be handed to PostgreSQL"
    );

    // A configuration it cannot read must not pass for "not archived" either.
    let missing = work.path().join("missing.toml");
    let out = backupctl(&missing, &["wal-fetch", &seg, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

fn wal_fetch_prefetches_the_following_segments(backend: Backend) {
    let s = Setup::new(backend);
    let config = s.t.write_config(
        "prefetch.toml",
        &format!(
            "{}\n[wal]\nfetch_concurrency = 2\n",
            s.cluster.postgres_toml()
        ),
    );
    s.sql("CREATE TABLE t (g int)");
    let mut segs = vec![];
    for _ in 0..4 {
        s.sql("INSERT INTO t SELECT generate_series(1, 1000)");
        segs.push(s.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        switch_wal_and_wait(&s.cluster);
    }
    let object = |seg: &str| s.object_path(&format!("wal/{}/{seg}.zst", &seg[..16]));
    // The third is corrupt in the repository: it must not be spooled, and it does not
    // stop the fourth from being spooled.
    flip_byte(&object(&segs[2]), 0.5);

    let work = pg_tempdir();
    let pg_wal = work.path().join("pg_wal");
    as_pg(Command::new("mkdir").arg(&pg_wal)).status().unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let fetch = |seg: &str| backupctl(&config, &["-v", "wal-fetch", seg, dest.to_str().unwrap()]);
    check_output("wal-fetch first", fetch(&segs[0]));
    let mut spooled: Vec<String> = std::fs::read_dir(pg_wal.join(".backupctl-prefetch"))
        .expect("a prefetch spool")
        .flatten()
        .flat_map(|boot| std::fs::read_dir(boot.path()).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    spooled.sort();
    assert_eq!(
        spooled,
        vec![segs[1].clone(), segs[3].clone()],
        "the sound following segments are spooled, the corrupt one is not"
    );

    // The second now comes from the spool: the repository's copy is broken meanwhile.
    flip_byte(&object(&segs[1]), 0.5);
    let out = check_output("wal-fetch from the spool", fetch(&segs[1]));
    assert!(stderr(&out).contains("prefetched"), "{}", stderr(&out));
    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(bytes.len(), 16 << 20);
    assert_eq!(
        (u64::from_str_radix(&segs[1][8..16], 16).unwrap() << 32)
            | (u64::from_str_radix(&segs[1][16..], 16).unwrap() << 24),
        u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        "the page address of the segment asked for"
    );
    // A spooled file is handed over once; the corrupt one fails loudly, stopping
    // recovery (126), or for a standby, which retries, with 1.
    for seg in [&segs[1], &segs[2]] {
        let out = fetch(seg);
        assert_eq!(out.status.code(), Some(126));
        assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    }
    as_pg(Command::new("touch").arg(work.path().join("standby.signal")))
        .status()
        .unwrap();
    let out = fetch(&segs[2]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

fn timelines_after_pitr(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    s.sql("INSERT INTO t VALUES (1, 'before backup')");
    s.backup();
    s.sql("INSERT INTO t VALUES (2, 'timeline 1, before target')");
    std::thread::sleep(Duration::from_millis(1100));
    let target = s.now();
    std::thread::sleep(Duration::from_millis(1100));
    s.sql("INSERT INTO t VALUES (3, 'timeline 1 only')");
    switch_wal_and_wait(&s.cluster);

    // PITR creates timeline 2; the promoted server archives into the same repository.
    let r = s.restore_start(&["--target-time", &target]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2"
    );
    r.psql("postgres", "INSERT INTO t VALUES (4, 'timeline 2')");
    let seg = r.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = r.psql(
            "postgres",
            &format!("SELECT coalesce(last_archived_wal, '') >= '{seg}' FROM pg_stat_archiver"),
        );
        if done == "t" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timeline 2 segment not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    r.stop();
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info"])).unwrap();
    assert_eq!(
        info["wal"]["timelines"],
        serde_json::json!([1, 2]),
        "{info}"
    );
    assert!(
        s.run(&[
            "wal-fetch",
            "00000002.history",
            pg_tempdir().path().join("h").to_str().unwrap()
        ])
        .status
        .success(),
        "00000002.history is not in the {backend:?} repository"
    );

    // Latest follows timeline 2 and sees its write.
    let r = s.restore_start(&[]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2,4"
    );
    r.stop();
    // The old timeline, by time, still restores.
    let r = s.restore_start(&["--target-time", &target, "--target-timeline", "1"]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2"
    );
    r.stop();
    // And timeline 1 to its end holds row 3.
    let r = s.restore_start(&["--target-timeline", "1"]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2,3"
    );
}

fn bad_restore_requests_are_refused(backend: Backend) {
    let s = Setup::new(backend);
    s.sql("CREATE TABLE t (id int)");
    let dir = pg_tempdir();
    let fresh = dir.path().join("fresh");
    let fresh_s = fresh.to_str().unwrap();

    // No backup yet.
    let out = s.run(&["restore", "--pgdata", fresh_s, "--target", "immediate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no complete physical backup"),
        "{}",
        stderr(&out)
    );

    s.backup();
    switch_wal_and_wait(&s.cluster);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--pgdata",
                s.cluster.pgdata.to_str().unwrap(),
                "--target",
                "immediate",
            ],
            "is running",
        ),
        (
            vec![
                "--pgdata",
                s.t.dir.path().to_str().unwrap(),
                "--target",
                "immediate",
            ],
            "not empty",
        ),
        (
            vec!["--pgdata", fresh_s, "--target-time", "2026-11-22 10:00:00"],
            "no time zone",
        ),
        (
            vec![
                "--pgdata",
                fresh_s,
                "--target-time",
                "2001-01-01 00:00:00+00",
            ],
            "recoverable window",
        ),
        (
            vec![
                "--pgdata",
                fresh_s,
                "--target-time",
                "2099-01-01 00:00:00+00",
            ],
            "after the last archived WAL",
        ),
        (
            vec!["--pgdata", fresh_s, "--target-lsn", "not-an-lsn"],
            "LSN",
        ),
        (
            vec!["--pgdata", fresh_s, "--backup", "20000101T000000Z-physical"],
            "does not exist",
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["restore"];
        full.extend(args.iter());
        let out = s.run(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(want),
            "{args:?}: want {want:?} in {}",
            stderr(&out)
        );
        assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    }
    assert!(!fresh.exists());
    // The running cluster was not touched.
    assert_eq!(s.sql("SELECT count(*) FROM t"), "0");
}

fn tablespaces_are_backed_up_and_relocated(backend: Backend) {
    let s = Setup::new(backend);
    let ts_dir = pg_tempdir();
    s.sql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts_dir.path().display()
    ));
    s.sql("CREATE TABLE big TABLESPACE extra AS SELECT g AS id FROM generate_series(1, 5000) g");
    let id = s.backup();
    switch_wal_and_wait(&s.cluster);
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info", &id])).unwrap();
    assert_eq!(info["physical"]["tablespaces"][0]["name"], "extra");

    // The original location is in use: restoring there is refused with the fix.
    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    let out = s.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target",
        "immediate",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--tablespace-map"),
        "{}",
        stderr(&out)
    );

    let new_ts = pg_tempdir();
    let new_loc = new_ts.path().join("moved");
    let map = format!("{}={}", ts_dir.path().display(), new_loc.display());
    let r = s.restore_start(&["--target", "immediate", "--tablespace-map", &map]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM big"), "5000");
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"
        ),
        new_loc.display().to_string()
    );
}
