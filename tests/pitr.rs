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

impl Setup {
    /// Table `t`: row 1 before a physical backup, row 2 before the returned target time,
    /// row 3 after it; all archived.
    fn rows_around_a_target(&self) -> String {
        self.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
        self.sql("INSERT INTO t VALUES (1, 'before backup')");
        self.backup();
        self.sql("INSERT INTO t VALUES (2, 'timeline 1, before target')");
        std::thread::sleep(Duration::from_millis(1100));
        let target = self.now();
        std::thread::sleep(Duration::from_millis(1100));
        self.sql("INSERT INTO t VALUES (3, 'timeline 1 only')");
        switch_wal_and_wait(&self.cluster);
        target
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
    a_restored_copy_never_archives_into_the_repository,
    latest_follows_the_timeline_production_archives,
    a_wal_gap_between_start_and_stop_leaves_the_backup_incomplete,
    a_restore_holds_a_lease_and_a_missing_planned_segment_stops_recovery,
    bad_restore_requests_are_refused,
    tablespaces_are_backed_up_and_relocated,
    symlinked_config_is_restored_as_a_file_and_the_original_left_alone,
    compression_is_chosen_per_kind,
);

/// `[compression.<kind>]`: WAL in gzip, physical backups in the section's zstd, logical
/// dumps in gzip at level 9; each is stored so, and a PITR reads them all back.
fn compression_is_chosen_per_kind(backend: Backend) {
    let s = Setup::with_config(
        backend,
        "[compression]\nalgorithm = \"zstd\"\n\
         [compression.wal]\nalgorithm = \"gzip\"\nlevel = 1\n\
         [compression.logical]\nalgorithm = \"gzip\"\nlevel = 9\n",
    );
    s.sql("CREATE TABLE t (id int PRIMARY KEY)");
    s.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let id = s.backup_no_verify();
    let logical = s
        .ok(&["backup", "--kind", "logical", "--no-verify"])
        .trim()
        .to_string();
    s.sql("INSERT INTO t SELECT generate_series(101, 150)");
    switch_wal_and_wait(&s.cluster);

    let info = |id: &str| -> serde_json::Value {
        serde_json::from_str(&s.ok(&["--json", "info", id])).unwrap()
    };
    assert_eq!(info(&id)["compression"]["algorithm"], "zstd");
    assert_eq!(
        (
            info(&logical)["compression"]["algorithm"].clone(),
            info(&logical)["compression"]["level"].clone()
        ),
        (serde_json::json!("gzip"), serde_json::json!(9))
    );
    let wal = s.t.list_keys("wal/");
    // Segments: `wal/<timeline+log>/<24 hex digits><suffix>`.
    let segments: Vec<&String> = wal
        .iter()
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap_or_default();
            name.split('.').count() == 2 && name.split('.').next().unwrap().len() == 24
        })
        .collect();
    assert!(
        !segments.is_empty() && segments.iter().all(|k| k.ends_with(".gz")),
        "{wal:?}"
    );

    let r = s.restore_start(&["--backup", &id]);
    assert_eq!(r.psql("postgres", "SELECT count(*) FROM t"), "150");
    r.stop();
}

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
        // Data checksums as the source has them (initdb turns them on from 18).
        let (major, checksums) = s
            .sql("SELECT current_setting('server_version_num')::int / 10000 || ' ' || current_setting('data_checksums')")
            .split_once(' ')
            .map(|(m, c)| (m.parse::<u32>().unwrap(), c.to_string()))
            .unwrap();
        assert_eq!(checksums, if major >= 18 { "on" } else { "off" });
        assert_eq!(r.psql("postgres", "SHOW data_checksums"), checksums);
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
    s.cluster.pgbench_init(5);
    let load = s.cluster.pgbench_load(&["-c", "4", "-j", "2", "-T", "20"]);
    std::thread::sleep(Duration::from_secs(3));
    let id = s.backup();
    load.finish();
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
    // The free space prefetching leaves is set here, so that what is spooled does not
    // depend on how full this machine's disk is (with the default, 1 GiB, a CI machine
    // short of space spooled nothing); `no_room` asks for more than any disk has.
    let config_reserving = |name: &str, reserve_mib: u64| {
        s.t.write_config(
            name,
            &format!(
                "{}\n[wal]\nfetch_concurrency = 2\nfetch_reserve_mib = {reserve_mib}\n",
                s.cluster.postgres_toml()
            ),
        )
    };
    let config = config_reserving("prefetch.toml", 0);
    let no_room = config_reserving("no-room.toml", 1 << 40);
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
    let spooled = || {
        let mut names: Vec<String> = std::fs::read_dir(pg_wal.join(".backupctl-prefetch"))
            .expect("a prefetch spool")
            .flatten()
            .flat_map(|boot| std::fs::read_dir(boot.path()).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // The background prefetcher's lock and temp files.
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    };

    // Prefetching that would leave less than the reserve free does not start; the
    // requested segment is restored all the same.
    let out = check_output(
        "wal-fetch short of space",
        backupctl(
            &no_room,
            &["-v", "wal-fetch", &segs[0], dest.to_str().unwrap()],
        ),
    );
    assert!(
        stderr(&out).contains("little free space: no WAL prefetch"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20);
    assert_eq!(spooled(), Vec::<String>::new());

    // The call returns once its own segment is written; a background process spools
    // the following ones meanwhile.
    check_output("wal-fetch first", fetch(&segs[0]));
    let expected = vec![segs[1].clone(), segs[3].clone()];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while spooled() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        spooled(),
        expected,
        "the sound following segments are spooled, the corrupt one is not"
    );
    // Once the prefetcher is done: nothing else arrives.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(spooled(), expected);

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

/// The background prefetcher lives through recovery: as wal-fetch calls take segments
/// from the spool, it keeps the 8 after the last one taken spooled, over the same
/// connections. (A prefetcher that fetched its 8 and exited was not restarted while 4
/// or more were left, so the spool ran down.) A call that jumps elsewhere moves it
/// there; the end of the archive stops it.
#[test]
fn wal_fetch_prefetcher_follows_recovery() {
    let s = Setup::new(Backend::Local);
    let config = s.t.write_config(
        "prefetch.toml",
        &format!(
            "{}\n[wal]\nfetch_concurrency = 2\nfetch_reserve_mib = 0\n",
            s.cluster.postgres_toml()
        ),
    );
    s.sql("CREATE TABLE t (g int)");
    let mut segs = vec![];
    for _ in 0..13 {
        s.sql("INSERT INTO t SELECT generate_series(1, 100)");
        segs.push(s.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        switch_wal_and_wait(&s.cluster);
    }
    for pair in segs.windows(2) {
        assert!(pair[0] < pair[1], "consecutive segments: {segs:?}");
    }
    let work = pg_tempdir();
    let pg_wal = work.path().join("pg_wal");
    as_pg(Command::new("mkdir").arg(&pg_wal)).status().unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    let fetch = |seg: &str| {
        check_output(
            "wal-fetch",
            backupctl(&config, &["-v", "wal-fetch", seg, dest.to_str().unwrap()]),
        )
    };
    let spool = || -> PathBuf {
        std::fs::read_dir(pg_wal.join(".backupctl-prefetch"))
            .expect("a prefetch spool")
            .flatten()
            .next()
            .expect("this boot's spool")
            .path()
    };
    let spooled = || {
        let mut names: Vec<String> = std::fs::read_dir(spool())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    };
    let wait_for = |expected: &[String], what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while spooled() != expected && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(spooled(), expected, "{what}");
    };

    fetch(&segs[0]);
    wait_for(&segs[1..=8], "the 8 segments after the first are spooled");
    for seg in &segs[1..=3] {
        let out = fetch(seg);
        assert!(stderr(&out).contains("prefetched"), "{}", stderr(&out));
    }
    wait_for(
        &segs[4..=11],
        "the spool follows recovery: the 8 after the last segment taken",
    );

    // The directory is removed and made again at the same path (a restore tried
    // again): the prefetcher of the old one stops rather than serve the new one.
    let prefetchers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("--prefetch") && c.contains(dest.to_str().unwrap()))
            .count()
    };
    assert_eq!(prefetchers(), 1, "one prefetcher serves the spool");
    let old_spool = spool();
    std::fs::remove_dir_all(&pg_wal).unwrap();
    as_pg(Command::new("mkdir").arg("-p").arg(&old_spool))
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while prefetchers() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old prefetcher stops once its spool is replaced"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Recovery asks for a segment beyond the spool: the prefetcher moves there, drops
    // what recovery has passed, and stops at the end of the archive.
    let out = fetch(&segs[12]);
    assert!(
        stderr(&out).contains("restored from the archive"),
        "{}",
        stderr(&out)
    );
    wait_for(&[], "segments before recovery's position are dropped");
    let lock = std::fs::File::open(spool().join(".prefetch.lock")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lock.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefetcher exits at the end of the archive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A segment larger than the default (64 MiB, barely compressible) goes to S3 without
/// being held whole in memory: compressed once for its checksum, then again into a
/// multipart upload. The copy fetched back is the segment, and wal-push's peak RSS
/// stays well under what holding it would take (145 MiB before).
#[test]
fn a_large_segment_streams_to_s3_in_bounded_memory() {
    let s = Setup::with(
        Backend::S3,
        ClusterOptions {
            initdb_args: vec!["--wal-segsize=64".into()],
            ..Default::default()
        },
        "",
    );
    let start = s.sql("SELECT pg_current_wal_lsn()");
    // 1 KiB of random bytes a row (no TOAST compression below 2 KiB): 150 MB of WAL.
    s.sql(
        "CREATE TABLE r AS SELECT (SELECT string_agg(decode(md5(random()::text || g || i), 'hex'), ''::bytea) \
         FROM generate_series(1, 64) i) AS b FROM generate_series(1, 150000) g",
    );
    let seg = s.sql(&format!(
        "SELECT pg_walfile_name('{start}'::pg_lsn + 67108864)"
    ));
    switch_wal_and_wait(&s.cluster);
    let segment = s.cluster.pgdata.join("pg_wal").join(&seg);
    let original = std::fs::read(&segment).unwrap();
    assert_eq!(original.len(), 64 << 20);
    // Archived by PostgreSQL already: removed, so that this wal-push uploads it again.
    let object = s.object_path(&format!("wal/{}/{seg}.zst", &seg[..16]));
    std::fs::remove_file(&object).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_backupctl"))
        .args(["--config", s.config.to_str().unwrap(), "-v", "wal-push"])
        .arg(&segment)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // VmHWM is the peak so far; read until the process has gone (a zombie has none).
    let status = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    while let Some(kib) = std::fs::read_to_string(&status).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    }) {
        peak_kib = peak_kib.max(kib);
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = check_output(
        "wal-push of a 64 MiB segment",
        child.wait_with_output().unwrap(),
    );
    assert!(stderr(&out).contains("archived"), "{}", stderr(&out));
    assert!(object.exists(), "stored again");
    eprintln!(
        "wal-push of a 64 MiB segment: peak RSS {} MiB",
        peak_kib >> 10
    );
    // The compressed segment alone is about 64 MiB; this (debug) binary's own pages
    // and buffers (S3 parts in flight) come to about 60 MiB.
    assert!(
        peak_kib > 0 && peak_kib < 96 << 10,
        "wal-push peak RSS {peak_kib} KiB for a 64 MiB segment"
    );

    let work = pg_tempdir();
    let dest = work.path().join("restored");
    let out = backupctl(&s.config, &["wal-fetch", &seg, dest.to_str().unwrap()]);
    check_output("wal-fetch of the 64 MiB segment", out);
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "the segment comes back as it was"
    );
}

/// A call whose segment the background prefetcher is fetching at that moment waits for
/// that copy rather than fetch the segment a second time over a new connection. The
/// "prefetcher" here is this test: it holds the spool's lock and marks the segment,
/// whose repository copy is corrupt, so a call that fetched it itself would fail; the
/// sound copy arrives in the spool a second later.
#[test]
fn wal_fetch_waits_for_the_segment_the_prefetcher_is_fetching() {
    let s = Setup::new(Backend::Local);
    let config = s.t.write_config(
        "prefetch.toml",
        &format!(
            "{}\n[wal]\nfetch_concurrency = 2\nfetch_reserve_mib = 0\n",
            s.cluster.postgres_toml()
        ),
    );
    let (_copy_dir, seg, _copy, sound) = s.archived_segment_copy();
    flip_byte(
        &s.object_path(&format!("wal/{}/{seg}.zst", &seg[..16])),
        0.5,
    );

    let work = pg_tempdir();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let spool = work
        .path()
        .join("pg_wal/.backupctl-prefetch")
        .join(boot_id.trim());
    as_pg(Command::new("mkdir").arg("-p").arg(&spool))
        .status()
        .unwrap();
    let lock_path = spool.join(".prefetch.lock");
    let marker = spool.join(format!(".fetching-{seg}"));
    std::fs::write(&lock_path, b"").unwrap();
    std::fs::write(&marker, b"").unwrap();
    common::chown_to_pg(&spool);
    let lock = std::fs::File::open(&lock_path).unwrap();
    lock.lock().unwrap();

    let dest = work.path().join("pg_wal/RECOVERYXLOG");
    let call = common::spawn_backupctl(&config, &["-v", "wal-fetch", &seg, dest.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(1));
    let tmp = spool.join(".backupctl-arriving");
    std::fs::write(&tmp, &sound).unwrap();
    common::chown_to_pg(&tmp);
    std::fs::rename(&tmp, spool.join(&seg)).unwrap();
    std::fs::remove_file(&marker).unwrap();

    let out = check_output("wal-fetch", call.wait_with_output().unwrap());
    assert!(stderr(&out).contains("prefetched"), "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap() == sound,
        "the prefetcher's copy"
    );
    drop(lock);
}

fn timelines_after_pitr(backend: Backend) {
    let s = Setup::new(backend);
    let target = s.rows_around_a_target();

    // PITR creates timeline 2; the promoted server, restored as the new primary,
    // archives into the same repository.
    let r = s.restore_start(&["--target-time", &target, "--new-primary"]);
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
    r.stop();

    // Every archived object of both timelines reads as intact: the history file, the
    // backup history file, and timeline 2's first segment, which begins with timeline
    // 1's pages.
    let out = s.run(&["--json", "verify", "--wal"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &report["wal"]["content"];
    assert_eq!(c["failures"], serde_json::json!([]), "{report}");
    assert_eq!(c["checked"], c["objects"], "{report}");
    let keys = s.t.list_keys("wal/");
    assert!(
        keys.iter().any(|k| k.ends_with(".history"))
            && keys.iter().any(|k| k.ends_with(".backup.zst"))
            && keys.iter().any(|k| k.contains("/00000002")),
        "{keys:?}"
    );
}

/// Wait until the restored server has archived `seg` (or a later segment).
fn wait_restored_archived(r: &common::Restored, seg: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while r.psql(
        "postgres",
        &format!("SELECT coalesce(last_archived_wal, '') >= '{seg}' FROM pg_stat_archiver"),
    ) != "t"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "segment {seg} not archived by the restored server"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Regression: `restore --start` left archive_command on, so the throwaway copy promoted
/// to timeline 2 and archived its history file and WAL into the production repository;
/// "latest" then restored the copy's timeline instead of production's newer data.
fn a_restored_copy_never_archives_into_the_repository(backend: Backend) {
    let s = Setup::new(backend);
    let target = s.rows_around_a_target();

    let r = s.restore_start(&["--target-time", &target]);
    assert_eq!(r.psql("postgres", "SHOW archive_mode"), "off");
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2"
    );
    // The copy writes and switches WAL: nothing of it may reach the repository.
    r.psql("postgres", "INSERT INTO t VALUES (100)");
    r.psql("postgres", "SELECT pg_switch_wal()");
    r.psql("postgres", "CHECKPOINT");
    std::thread::sleep(Duration::from_secs(2));
    r.stop();
    let keys = s.t.list_keys("wal/");
    assert!(
        keys.iter()
            .all(|k| !k.rsplit('/').next().unwrap().starts_with("00000002")),
        "the copy archived into the repository: {keys:?}"
    );
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info"])).unwrap();
    assert_eq!(info["wal"]["timelines"], serde_json::json!([1]), "{info}");

    // Production goes on; "latest" restores its newest row.
    s.sql("INSERT INTO t VALUES (4)");
    switch_wal_and_wait(&s.cluster);
    let r = s.restore_start(&[]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2,3,4"
    );
}

/// Regression: a timeline another server created in the repository (a copy restored
/// with --new-primary and then abandoned) made "latest" follow it, although production
/// kept archiving timeline 1 afterwards: restores lost production's newer data.
fn latest_follows_the_timeline_production_archives(backend: Backend) {
    let s = Setup::new(backend);
    let target = s.rows_around_a_target();

    // A copy that archives timeline 2, then is abandoned.
    let r = s.restore_start(&["--target-time", &target, "--new-primary"]);
    r.psql("postgres", "INSERT INTO t VALUES (100)");
    let seg = r.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    wait_restored_archived(&r, &seg);
    r.stop();

    // Production archives timeline 1 after that.
    std::thread::sleep(Duration::from_millis(1100));
    s.sql("INSERT INTO t VALUES (4)");
    switch_wal_and_wait(&s.cluster);

    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info"])).unwrap();
    let tls = info["wal"]["timeline_history"].as_array().unwrap().clone();
    let current: Vec<u64> = tls
        .iter()
        .filter(|t| t["current"] == true)
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(current, vec![1], "{info}");
    let tl2 = tls
        .iter()
        .find(|t| t["timeline"] == 2)
        .expect("timeline 2 listed");
    assert_eq!(tl2["parent"], 1, "{info}");
    assert!(s.ok(&["info"]).contains("branched from 1 at"));

    let r = s.restore_start(&[]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2,3,4"
    );
    r.stop();
    // A time after the branch on timeline 1 restores too (it used to wait for timeline
    // 2's WAL forever).
    let after = s.now();
    s.sql("INSERT INTO t VALUES (5)");
    switch_wal_and_wait(&s.cluster);
    let r = s.restore_start(&["--target-time", &after]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2,3,4"
    );
}

/// Regression: a physical backup waited only for its stop segment, so a segment between
/// its start and stop that never reached the repository (wal-push stores files ahead in
/// parallel; one can fail after its retries while later ones succeed) still gave a
/// manifest, and retention counted a backup that cannot be restored.
///
/// The backup is frozen (SIGSTOP) while it copies the data directory; meanwhile the
/// segment it started in is "archived" by an archive_command that drops it, and the next
/// one is archived normally. Then the backup goes on.
fn a_wal_gap_between_start_and_stop_leaves_the_backup_incomplete(backend: Backend) {
    let s = Setup::new(backend);
    // Do not wait the default minutes for WAL that will never come.
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replacen("[backup]\n", "[backup]\narchive_timeout = \"5s\"\n", 1),
    )
    .unwrap();
    let skip = pg_tempdir();
    let skip_file = skip.path().join("skip");
    // Drops (exit 0 without storing) the file named in skip_file, archives the rest.
    let wrapper = format!(
        "if [ \"%f\" = \"$(cat {} 2>/dev/null)\" ]; then exit 0; fi; {}",
        skip_file.display(),
        common::archive_command(&s.config)
    );
    s.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        wrapper.replace('\'', "''")
    ));
    s.sql("SELECT pg_reload_conf()");
    // Enough data that copying it takes a while.
    s.sql(
        "CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g",
    );
    switch_wal_and_wait(&s.cluster);

    let mut child =
        common::spawn_backupctl(&s.config, &["backup", "--kind", "physical", "--no-verify"]);
    // Wait until the backup has started (its session's last statement is
    // pg_backup_start) and freeze it there, before pg_backup_stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let started = s.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_backup_start%' AND state = 'idle'",
        );
        if started == "1" {
            common::signal(&child, "STOP");
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("backup ended ({st}) before it could be frozen");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let frozen_before_stop = s.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_backup_start%' AND state = 'idle'",
    );
    assert_eq!(
        frozen_before_stop, "1",
        "the backup reached pg_backup_stop before it froze"
    );
    // The segment the backup started in is lost; the next one is archived.
    let lost = s.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    std::fs::write(&skip_file, &lost).unwrap();
    common::chown_to_pg(&skip_file);
    switch_wal_and_wait(&s.cluster);
    s.sql("INSERT INTO big VALUES (0, 'after the gap')");
    switch_wal_and_wait(&s.cluster);
    common::signal(&child, "CONT");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&lost) && err.contains("missing"), "{err}");
    // No manifest: the backup is not listed as complete.
    let listing: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "list"])).unwrap();
    assert_eq!(listing["backups"], serde_json::json!([]), "{listing}");
}

/// Regressions: (1) a restore took no lease, so retention deleted the backup being
/// restored and the WAL after it; (2) wal-fetch exited 1 ("not archived") for a segment
/// the restore had planned recovery through, so PostgreSQL promoted part-way through
/// history instead of stopping.
fn a_restore_holds_a_lease_and_a_missing_planned_segment_stops_recovery(backend: Backend) {
    let s = Setup::with_config(backend, common::setup::KEEP_LAST_1);
    s.sql("CREATE TABLE t (id int PRIMARY KEY)");
    s.sql("INSERT INTO t VALUES (1)");
    let a = s.backup();
    for id in 2..=3 {
        s.sql(&format!("INSERT INTO t VALUES ({id})"));
        switch_wal_and_wait(&s.cluster);
    }
    // Restore (not started: the restored server recovers later, when started).
    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    s.ok(&["restore", "--pgdata", pgdata.to_str().unwrap()]);

    // A newer backup; retention with keep_last = 1 must still keep the leased one.
    let b = s.backup();
    let out = s.ok(&["--json", "retention"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listing: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "list"])).unwrap();
    let ids: Vec<&str> = listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str()], "{report}");
    assert!(out.contains("leased by a restore"), "{out}");

    // A segment the restore planned through disappears anyway (another tool, a hand).
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info", &a])).unwrap();
    let stop = info["physical"]["stop_wal"].as_str().unwrap();
    let seg = backupctl::pg::wal::Segment::parse(stop, 16 << 20).unwrap();
    let next = backupctl::pg::wal::Segment {
        tli: seg.tli,
        segno: seg.segno + 1,
    }
    .name(16 << 20);
    let key =
        s.t.list_keys("wal/")
            .into_iter()
            .find(|k| k.rsplit('/').next().unwrap().starts_with(&next))
            .unwrap_or_else(|| panic!("{next} not archived"));
    s.t.delete(&key);

    // Recovery stops (FATAL) instead of promoting without rows 2 and 3.
    let port = common::free_port();
    let log = dir.path().join("recovery.log");
    let st = as_pg(
        Command::new(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&pgdata)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {port} -k {}", dir.path().display()))
            .args(["-w", "-t", "120", "start"]),
    )
    .status()
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = as_pg(Command::new(pg_bin("pg_ctl")).arg("-D").arg(&pgdata).args([
        "-m",
        "immediate",
        "stop",
    ]))
    .status();
    assert!(!st.success(), "the server started:\n{text}");
    assert!(
        text.contains(&format!("WAL segment {next} is not in the repository")),
        "{text}"
    );
    assert!(!text.contains("database system is ready"), "{text}");
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

/// PGDATA's postgresql.conf is a link to a file outside it (as with a configuration kept
/// under /etc): the backup holds the file's contents, and the restore writes a regular
/// file — never through a link into the production server's configuration, which the
/// restore edits (`data_directory` is commented out).
fn symlinked_config_is_restored_as_a_file_and_the_original_left_alone(backend: Backend) {
    let s = Setup::new(backend);
    let etc = s.cluster.dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    common::chown_to_pg(&etc);
    let outside = etc.join("postgresql.conf");
    let conf = s.cluster.pgdata.join("postgresql.conf");
    std::fs::rename(&conf, &outside).unwrap();
    // A setting the restore comments out in its copy (it names the original's directory).
    let mut text = std::fs::read_to_string(&outside).unwrap();
    text.push_str(&format!(
        "data_directory = '{}'\n",
        s.cluster.pgdata.display()
    ));
    std::fs::write(&outside, &text).unwrap();
    std::os::unix::fs::symlink(&outside, &conf).unwrap();
    let before = std::fs::read(&outside).unwrap();

    s.backup();
    switch_wal_and_wait(&s.cluster);
    let r = s.restore_start(&["--target", "immediate"]);
    assert_eq!(r.psql("postgres", "SELECT 1"), "1");

    assert!(
        std::fs::read(&outside).unwrap() == before,
        "the original configuration outside PGDATA was changed:\n{}",
        std::fs::read_to_string(&outside).unwrap()
    );
    let restored = r.pgdata.join("postgresql.conf");
    let md = std::fs::symlink_metadata(&restored).unwrap();
    assert!(md.file_type().is_file(), "restored as {:?}", md.file_type());
    let got = std::fs::read_to_string(&restored).unwrap();
    assert!(got.starts_with(&text[..text.len() / 2]), "{got}");
    assert!(
        got.contains("# data_directory") && got.contains("disabled by backupctl restore"),
        "{got}"
    );
}
