//! Verification proves backups restore: test restores into scratch space against real
//! PostgreSQL 15 on both repository backends; corrupt, truncated and missing objects,
//! WAL gaps and damaged archived WAL segments fail naming the cause; WAL found intact is
//! not read again; a killed verification leaves nothing behind after the next run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::setup::Setup;
use common::{as_pg, stderr, stdout, switch_wal_and_wait, Backend};

impl Setup {
    fn manifest(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--json", "info", id])).unwrap()
    }

    fn scratch_root(&self) -> PathBuf {
        self.t.dir.path().join("state/scratch")
    }
}

both_backends!(
    good_logical_backup_verifies_and_tampered_counts_fail,
    good_physical_backup_verifies_with_rto_recorded,
    damaged_objects_fail_verification_naming_the_cause,
    deleted_wal_segment_is_reported_as_a_gap,
    gzip_parts_of_many_frames_verify,
    damaged_archived_wal_fails_naming_the_segment,
);

fn good_physical_backup_verifies_with_rto_recorded(backend: Backend) {
    let s = Setup::with_config(backend, "[verify]\namcheck = true\n");
    s.cluster.psql("postgres", "CREATE DATABASE app");
    s.cluster.psql(
        "app",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g",
    );
    s.cluster.psql("app", "CREATE INDEX ON t (id)");
    let id = s.backup_no_verify();
    let out = s.ok(&["--json", "verify", &id]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = &report["backups"][0];
    assert_eq!(v["outcome"], "ok", "{report}");
    assert!(v["duration_secs"].as_f64().unwrap() > 0.0);
    assert!(v["scratch_bytes"].as_u64().unwrap() > 1 << 20);
    let checked = v["checked"].to_string();
    assert!(
        checked.contains("checksum")
            && checked.contains("app: 1 tables")
            && checked.contains("pg_amcheck"),
        "{checked}"
    );

    // Recorded in the manifest; list shows it.
    let m = s.manifest(&id);
    assert_eq!(m["verification"]["outcome"], "ok");
    assert!(s.ok(&["list"]).contains(" ok"));
    // Scratch space is gone; the production cluster was never touched.
    assert!(std::fs::read_dir(s.scratch_root())
        .unwrap()
        .next()
        .is_none());
    assert_eq!(s.cluster.psql("app", "SELECT count(*) FROM t"), "10000");
}

/// Parts of several blocks (`FRAME_SIZE`), compressed by the shared pool as gzip members,
/// restore (zstd parts go through the same pool in every other physical test).
fn gzip_parts_of_many_frames_verify(backend: Backend) {
    let s = Setup::with_config(backend, "[compression]\nalgorithm = \"gzip\"\n");
    // Small parts, two at a time.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text.replacen(
        "[backup]\n",
        "[backup]\nworkers = 2\npart_size_mib = 4\n",
        1,
    );
    std::fs::write(&s.config, text).unwrap();
    s.cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 200000) g",
    );
    let id = s.backup_no_verify();
    let m = s.manifest(&id);
    let parts: Vec<&serde_json::Value> = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["name"].as_str().unwrap().ends_with(".tar.gz"))
        .collect();
    assert!(parts.len() >= 2, "{m}");
    assert!(
        parts.iter().any(|o| o["size"].as_u64().unwrap() > 3 << 20),
        "no part spans several blocks: {m}"
    );
    let out = s.ok(&["--json", "verify", &id]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["backups"][0]["outcome"], "ok", "{report}");
}

fn damaged_objects_fail_verification_naming_the_cause(backend: Backend) {
    let s = Setup::with_config(backend, "");
    s.cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) FROM generate_series(1, 50000) g",
    );
    let flipped = s.backup_no_verify();
    std::thread::sleep(Duration::from_millis(1100));
    let truncated = s.backup_no_verify();
    std::thread::sleep(Duration::from_millis(1100));
    let missing = s.backup_no_verify();
    let object_of = |id: &str| {
        s.manifest(id)["objects"][0]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let (o1, o2, o3) = (
        object_of(&flipped),
        object_of(&truncated),
        object_of(&missing),
    );
    let p1 = s.object_path(&format!("backups/{flipped}/{o1}"));
    let mut b = std::fs::read(&p1).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(&p1, b).unwrap();
    let p2 = s.object_path(&format!("backups/{truncated}/{o2}"));
    let len = std::fs::metadata(&p2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p2)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::remove_file(s.object_path(&format!("backups/{missing}/{o3}"))).unwrap();

    for (id, object, cause) in [
        (&flipped, &o1, "checksum"),
        (&truncated, &o2, "checksum"),
        (&missing, &o3, "not found"),
    ] {
        let out = s.run(&["verify", id]);
        assert_eq!(out.status.code(), Some(1), "{id}: {}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains("FAILED") && text.contains(object.as_str()) && text.contains(cause),
            "{id}: {text}"
        );
        assert!(
            stderr(&out).contains("verification FAILED"),
            "{}",
            stderr(&out)
        );
        let m = s.manifest(id);
        assert_eq!(m["verification"]["outcome"], "failed");
        assert!(m["verification"]["failures"]
            .to_string()
            .contains(object.as_str()));
    }
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "list"])).unwrap();
    assert!(
        info["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["verified"] == "failed"),
        "{info}"
    );
}

fn deleted_wal_segment_is_reported_as_a_gap(backend: Backend) {
    let s = Setup::with_config(backend, "");
    s.cluster.psql("postgres", "CREATE TABLE t (id int)");
    s.backup_no_verify();
    let mut segs = vec![];
    for i in 0..3 {
        s.cluster
            .psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        segs.push(
            s.cluster
                .psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())"),
        );
        switch_wal_and_wait(&s.cluster);
    }
    let out = s.ok(&["verify", "--wal"]);
    assert!(out.contains("WAL is continuous"), "{out}");
    let victim = &segs[1];
    std::fs::remove_file(s.object_path(&format!("wal/{}/{victim}.zst", &victim[..16]))).unwrap();
    let out = s.run(&["--json", "verify", "--wal"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gaps = report["wal"]["gaps"].to_string();
    assert!(
        gaps.contains(victim.as_str()) && gaps.contains(&segs[0]),
        "{report}"
    );
}

/// `verify --wal` reads every archived WAL object: a flipped byte in a stored (compressed)
/// segment fails naming it, and so does a well-formed object holding another segment's
/// pages under valid checksum metadata (only the page addresses tell). Objects found
/// intact are not read again while unchanged.
fn damaged_archived_wal_fails_naming_the_segment(backend: Backend) {
    let s = Setup::with_config(backend, "");
    s.cluster.psql("postgres", "CREATE TABLE t (id int)");
    s.backup_no_verify();
    let mut segs = vec![];
    for i in 0..3 {
        s.cluster
            .psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        segs.push(
            s.cluster
                .psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())"),
        );
        switch_wal_and_wait(&s.cluster);
    }
    let verify_wal = || -> (std::process::Output, serde_json::Value) {
        let out = s.run(&["--json", "verify", "--wal"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {} {}", stdout(&out), stderr(&out));
        });
        (out, report)
    };
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{v}"));

    // First run: everything read.
    let (out, first) = verify_wal();
    assert!(out.status.success(), "{first} {}", stderr(&out));
    let c = &first["wal"]["content"];
    let objects = num(&c["objects"]);
    assert!(
        objects >= 4,
        "segments and the backup history file: {first}"
    );
    assert_eq!(num(&c["checked"]), objects, "{first}");
    assert_eq!(num(&c["skipped_unchanged"]), 0, "{first}");
    assert!(num(&c["bytes_read"]) > 0, "{first}");
    let verified_at = c["whole_range_verified_at"].as_str().unwrap().to_string();
    let info: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "info"])).unwrap();
    assert_eq!(info["wal_verified_at"], verified_at.as_str(), "{info}");
    assert!(s
        .ok(&["info"])
        .contains("WAL verified:      every archived object read and intact"));

    // Second run: nothing unchanged is read again.
    let (out, second) = verify_wal();
    assert!(out.status.success(), "{second}");
    let c = &second["wal"]["content"];
    let objects2 = num(&c["objects"]);
    assert_eq!(num(&c["skipped_unchanged"]), objects, "{second}");
    assert_eq!(num(&c["checked"]), objects2 - objects, "{second}");
    let verified_at = c["whole_range_verified_at"].as_str().unwrap().to_string();

    let key = |seg: &str| format!("wal/{}/{seg}.zst", &seg[..16]);
    // A change must show in the listing's modification time (S3: whole seconds).
    let wait_past_mtime = |path: &Path| {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        while std::time::SystemTime::now() < mtime + Duration::from_millis(1100) {
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // One byte flipped in the middle of a stored, compressed segment.
    let flipped = &segs[0];
    let path = s.object_path(&key(flipped));
    wait_past_mtime(&path);
    let mut b = std::fs::read(&path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&path, b).unwrap();

    // Another segment's object, with its own (valid) checksum metadata, stored as segs[2].
    let (donor, victim) = (&segs[1], &segs[2]);
    wait_past_mtime(&s.object_path(&key(victim)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use backupctl::repo::{PutOptions, RepositoryExt};
        let repo = s.t.open().await;
        let meta = repo.head(&key(donor)).await.unwrap().unwrap().metadata;
        assert!(meta.contains_key("sha256"), "{meta:?}");
        let bytes = repo.get_bytes(&key(donor)).await.unwrap();
        repo.put_bytes(
            &key(victim),
            bytes,
            PutOptions {
                metadata: meta,
                if_absent: false,
            },
        )
        .await
        .unwrap();
    });
    if backend == Backend::Local {
        common::chown_to_pg(&s.t.dir.path().join("repo"));
    }

    let (out, third) = verify_wal();
    assert_eq!(out.status.code(), Some(1), "{third}");
    let c = &third["wal"]["content"];
    let objects3 = num(&c["objects"]);
    assert_eq!(
        num(&c["checked"]),
        2 + objects3 - objects2,
        "only the two changed objects (and any newly archived): {third}"
    );
    let failures = c["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{third}");
    let failure = |seg: &str| {
        failures
            .iter()
            .find(|f| f["file"] == seg)
            .unwrap_or_else(|| panic!("{seg} not named: {third}"))["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let e = failure(flipped);
    assert!(e.contains("checksum"), "{e}");
    let e = failure(victim);
    assert!(
        e.contains("has address") && e.contains("the page belongs to another segment"),
        "{e}"
    );
    assert!(
        stderr(&out).contains(&format!("WAL {flipped}")),
        "{}",
        stderr(&out)
    );
    // The whole range was not verified by this run.
    assert_eq!(
        c["whole_range_verified_at"],
        verified_at.as_str(),
        "{third}"
    );

    // The text report names both segments, and they fail again: damage is never recorded.
    let out = s.run(&["verify", "--wal"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("FAILURE: WAL {flipped}"))
            && text.contains(&format!("FAILURE: WAL {victim}"))
            && text.contains("2 damaged"),
        "{text}"
    );
}

fn good_logical_backup_verifies_and_tampered_counts_fail(backend: Backend) {
    let s = Setup::with_config(backend, "");
    s.cluster.psql("postgres", "CREATE DATABASE shop");
    s.cluster.psql(
        "shop",
        "CREATE SCHEMA sales; \
         CREATE TABLE sales.customers (id serial PRIMARY KEY, name text UNIQUE); \
         CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             customer int REFERENCES sales.customers, total numeric CHECK (total >= 0)); \
         CREATE INDEX ON sales.orders (customer); \
         CREATE FUNCTION sales.f(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'; \
         INSERT INTO sales.customers (name) SELECT 'c' || g FROM generate_series(1, 300) g; \
         INSERT INTO sales.orders (customer, total) SELECT 1 + g % 300, g FROM generate_series(1, 5000) g;",
    );
    let id = s
        .ok(&["backup", "--kind", "logical", "--no-verify"])
        .trim()
        .to_string();
    let report: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "verify", &id])).unwrap();
    let v = &report["backups"][0];
    assert_eq!(v["outcome"], "ok", "{report}");
    let checked = v["checked"].to_string();
    assert!(
        checked.contains("database shop: all 2 tables' row counts match"),
        "{checked}"
    );
    assert!(
        checked.contains("FK CONSTRAINT")
            && checked.contains("FUNCTION")
            && checked.contains("INDEX"),
        "{checked}"
    );
    assert!(v["duration_secs"].as_f64().unwrap() > 0.0);

    // Tamper with one table's recorded row count: verification must name it.
    let path = s.object_path(&format!("backups/{id}/manifest.json"));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let dbs = m["logical"]["databases"].as_array_mut().unwrap();
    let shop = dbs.iter_mut().find(|d| d["name"] == "shop").unwrap();
    let t = shop["tables"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["table"] == "orders")
        .unwrap();
    t["rows"] = serde_json::json!(4999);
    // Without its own checksum the manifest reads as one written before manifests had
    // one, so the count reaches the restore check (with it, the manifest is refused as
    // altered before anything is restored).
    m.as_object_mut().unwrap().remove("manifest_sha256");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let out = s.run(&["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("sales.orders has 5000 rows restored, the manifest says 4999"),
        "{text}"
    );
}

fn scratch_postmasters(root: &Path) -> Vec<(PathBuf, i32)> {
    let mut out = vec![];
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let pid_file = e.path().join("pgdata/postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            if let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                out.push((e.path(), pid));
            }
        }
    }
    out
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn killed_verification_is_cleaned_up_by_the_next_run() {
    let s = Setup::with_config(Backend::Local, "");
    s.cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 200000) g",
    );
    let id = s.backup_no_verify();
    let mut child = as_pg(
        Command::new(common::backupctl_bin())
            .arg("--config")
            .arg(&s.config)
            .args(["verify", &id]),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // Kill it while its scratch postmaster runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (dir, pid) = loop {
        if let Some(found) = scratch_postmasters(&s.scratch_root())
            .into_iter()
            .find(|(_, p)| alive(*p))
        {
            break found;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "verify finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no scratch postmaster appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.exists());

    // The next run removes the leftovers, then verifies normally.
    let out = s.ok(&["verify", &id]);
    assert!(out.contains("OK"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !alive(pid),
        "the killed run's scratch postmaster {pid} still runs"
    );
    assert!(
        !dir.exists(),
        "stale scratch directory {} left",
        dir.display()
    );
    assert!(std::fs::read_dir(s.scratch_root())
        .unwrap()
        .next()
        .is_none());
}

/// A state directory deep enough that a Unix socket under it would pass the 107-byte
/// limit (as in the demo's temp directories): archiving (markers, identity cache), a
/// backup and its test restore still work.
#[test]
fn a_deep_state_dir_works_end_to_end() {
    let s = Setup::with_config(Backend::Local, "");
    let deep =
        s.t.dir
            .path()
            .join("a-rather-long-directory-name-for-state")
            .join("and-another-level-of-nesting-below-it")
            .join(".state");
    std::fs::create_dir_all(&deep).unwrap();
    common::chown_to_pg(s.t.dir.path());
    let socket = deep.join("scratch/verify-20261129T000000Z-physical-0000/sock/.s.PGSQL.65535");
    assert!(socket.as_os_str().len() > 107, "{}", socket.display());
    // Every command (archive_command included: it uses this file) gets the deep path.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let old = format!("state_dir = \"{}\"", s.t.dir.path().join("state").display());
    assert!(text.contains(&old), "{text}");
    let text = text.replace(&old, &format!("state_dir = \"{}\"", deep.display()));
    std::fs::write(&s.config, text).unwrap();

    s.cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    let id = s.backup_no_verify();
    let out = s.ok(&["--json", "verify", &id]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["backups"][0]["outcome"], "ok", "{report}");
    // wal-push kept its state there.
    assert!(
        std::fs::read_dir(&deep)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("repo-identity-")),
        "no repository identity cached in {}",
        deep.display()
    );
}
