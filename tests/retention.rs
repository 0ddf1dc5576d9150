//! Retention against a real PostgreSQL 15 cluster archiving with `backupctl wal-push`, on
//! both repository backends: six physical backups with WAL between them, `keep_last = 2`
//! → exactly four backups and exactly the WAL before the fifth backup's start segment go;
//! the dry run lists exactly what the real run deletes; PITR inside the remaining window
//! works and a deleted time is refused with the window; backups without a manifest go
//! only when older than `incomplete_after`; history files survive.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backupctl::pg::wal::{classify, Segment, WalFileKind};
use backupctl::repo::{layout, PutOptions, RepositoryExt};
use common::setup::Setup;
use common::{
    backupctl, check_output, pg_tempdir, stderr, stdout, switch_wal_and_wait, Backend, TestRepo,
};
use serde_json::Value;

const SEG: u64 = 16 << 20;
const KEEP_LAST_2: &str = "[retention]\nwal = \"backups\"\n\n[retention.physical]\nkeep_last = 2\n";
use common::setup::KEEP_LAST_1;

impl Setup {
    fn json(&self, config: &Path, args: &[&str]) -> Value {
        let out = backupctl(config, args);
        let out = check_output(&format!("backupctl {args:?}"), out);
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
    }

    /// Every key in the repository, listed in-process.
    fn keys(&self) -> BTreeSet<String> {
        rt().block_on(async {
            let repo = self.t.open().await;
            repo.list_keys("").await.unwrap().into_iter().collect()
        })
    }

    /// Objects of a backup without a manifest, last modified `age_days` ago.
    fn incomplete_backup(&self, id: &str, age_days: u32) {
        let key = format!("backups/{id}/base.0.tar.zst");
        rt().block_on(async {
            let repo = self.t.open().await;
            repo.put_bytes(&key, b"half a backup".to_vec(), PutOptions::default())
                .await
                .unwrap();
        });
        if age_days > 0 {
            let st = Command::new("touch")
                .args(["-d", &format!("{age_days} days ago")])
                .arg(self.object_path(&key))
                .status()
                .unwrap();
            assert!(st.success());
        }
        if self.t.s3.is_none() {
            // Written by this (root) process: give it to the user backupctl runs as.
            common::chown_to_pg(&self.t.dir.path().join("repo"));
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Segment number of a WAL key (`None` for history files and anything else).
fn wal_segno(key: &str) -> Option<u64> {
    let (name, _) = layout::parse_wal_key(key)?;
    match classify(&name)? {
        WalFileKind::TimelineHistory => None,
        _ => Segment::parse(&name[..24], SEG).map(|s| s.segno),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn ids_with(report: &Value, action: &str) -> Vec<String> {
    report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["action"] == action)
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

both_backends!(keep_last_2_deletes_exactly_four_backups_and_their_wal);

fn keep_last_2_deletes_exactly_four_backups_and_their_wal(backend: Backend) {
    let s = Setup::with_config(backend, KEEP_LAST_2);
    s.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut ids = vec![];
    let mut deleted_time = String::new();
    let mut inside_time = String::new();
    for i in 1..=6 {
        s.sql(&format!("INSERT INTO t VALUES ({i})"));
        switch_wal_and_wait(&s.cluster);
        ids.push(s.backup());
        if i == 1 {
            // A time only backup 1 (about to be deleted) can reach.
            s.sql("INSERT INTO t VALUES (100)");
            std::thread::sleep(Duration::from_millis(1100));
            deleted_time = s.now();
            std::thread::sleep(Duration::from_millis(1100));
        }
        if i == 5 {
            s.sql("INSERT INTO t VALUES (500)");
            std::thread::sleep(Duration::from_millis(1100));
            inside_time = s.now();
            std::thread::sleep(Duration::from_millis(1100));
            s.sql("INSERT INTO t VALUES (501)");
        }
        switch_wal_and_wait(&s.cluster);
    }
    s.sql("INSERT INTO t VALUES (7)");
    switch_wal_and_wait(&s.cluster);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "{ids:?}");

    // Two backups without a manifest: one old (a killed backup), one young (in flight).
    // The young one's name is older than everything: age comes from object times.
    let old_incomplete = "19990101T000000Z-physical";
    let young_incomplete = "20000101T000000Z-physical";
    s.incomplete_backup(old_incomplete, 3);
    s.incomplete_backup(young_incomplete, 0);

    let before = s.keys();
    let info5: Value = serde_json::from_str(&s.ok(&["--json", "info", &ids[4]])).unwrap();
    let start5 = info5["physical"]["start_wal"].as_str().unwrap().to_string();
    let cutoff = Segment::parse(&start5, SEG).unwrap().segno;

    // What must go: backups 1-4 entirely, the old incomplete backup, and every WAL file
    // (segments and .backup files) before backup 5's start segment; nothing else.
    let mut expected: Vec<String> = before
        .iter()
        .filter(|k| {
            ids[..4]
                .iter()
                .any(|id| k.starts_with(&format!("backups/{id}/")))
                || k.starts_with(&format!("backups/{old_incomplete}/"))
                || (k.starts_with("wal/") && wal_segno(k).is_some_and(|n| n < cutoff))
        })
        .cloned()
        .collect();
    expected.sort();
    assert!(
        expected.iter().any(|k| k.ends_with(".backup.zst")),
        "expected .backup files among {expected:?}"
    );
    let expected_wal = expected.iter().filter(|k| k.starts_with("wal/")).count();
    assert!(expected_wal >= 8, "WAL between the backups: {expected:?}");

    // Dry run first: changes nothing, lists exactly the expected deletions.
    let dry = s.json(&s.config, &["--json", "retention", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(ids_with(&dry, "delete"), ids[..4].to_vec());
    assert_eq!(ids_with(&dry, "keep"), ids[4..].to_vec());
    assert_eq!(dry["wal"]["keep_from"]["segment"], start5.as_str());
    assert_eq!(dry["wal"]["keep_from"]["backup"], ids[4].as_str());
    assert_eq!(strings(&dry["delete"]["incomplete"]), vec![old_incomplete]);
    let young = dry["incomplete"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == young_incomplete)
        .unwrap();
    assert_eq!(young["action"], "keep", "{young}");
    let dry_keys = strings(&dry["delete"]["keys"]);
    assert_eq!(dry_keys, expected);
    assert_eq!(dry["delete"]["wal_files"], expected_wal);
    assert_eq!(s.keys(), before, "a dry run deletes nothing");
    let human = s.ok(&["retention", "--dry-run"]);
    assert!(
        human.contains("dry run: would delete 4 backups") && human.contains(&ids[0]),
        "{human}"
    );

    // The real run deletes exactly that.
    let real = s.json(&s.config, &["--json", "retention"]);
    assert_eq!(real["dry_run"], false);
    assert_eq!(strings(&real["delete"]["keys"]), dry_keys);
    assert_eq!(real["freed"]["objects"], dry_keys.len());
    let after = s.keys();
    let gone: Vec<String> = before.difference(&after).cloned().collect();
    assert_eq!(
        gone, dry_keys,
        "what disappeared is what the dry run listed"
    );
    assert!(after
        .iter()
        .any(|k| k.starts_with(&format!("backups/{young_incomplete}/"))));
    let listing: Value = serde_json::from_str(&s.ok(&["--json", "list"])).unwrap();
    let listed: Vec<&str> = listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[4].as_str(), ids[5].as_str()]);
    // Nothing left to do.
    let again = s.json(&s.config, &["--json", "retention", "--dry-run"]);
    assert!(strings(&again["delete"]["keys"]).is_empty(), "{again}");

    // A deleted time is refused with the remaining window (which starts at backup 5).
    let dir = pg_tempdir();
    let pgdata = dir.path().join("refused");
    let out = s.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-time",
        &deleted_time,
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("recoverable window") && err.contains(&ids[4]),
        "{err}"
    );
    assert!(!pgdata.exists());

    // A time inside the remaining window restores, from backup 5 (as the new primary:
    // a copy would get archive_mode = off and never archive timeline 2).
    let r = s.restore_start(&["--target-time", &inside_time, "--new-primary"]);
    assert_eq!(
        r.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "1,2,3,4,5,100,500"
    );
    // The promoted server archives timeline 2 (with its history file) into the repository.
    let seg2 = r.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg2.starts_with("00000002"), "{seg2}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while r.psql(
        "postgres",
        &format!("SELECT coalesce(last_archived_wal, '') >= '{seg2}' FROM pg_stat_archiver"),
    ) != "t"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timeline 2 not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    r.stop();
    drop(r);

    // keep_last = 1 with two timelines: backup 5 goes, history files stay, and nothing
    // from backup 6's start segment on goes on any timeline.
    let keep1 = s.t.write_config("keep1.toml", KEEP_LAST_1);
    let before = s.keys();
    assert!(before.contains("wal/00000002.history"), "{before:?}");
    let info6: Value = serde_json::from_str(&s.ok(&["--json", "info", &ids[5]])).unwrap();
    let cutoff6 = Segment::parse(info6["physical"]["start_wal"].as_str().unwrap(), SEG)
        .unwrap()
        .segno;
    let dry = s.json(&keep1, &["--json", "retention", "--dry-run"]);
    let real = s.json(&keep1, &["--json", "retention"]);
    assert_eq!(real["delete"]["keys"], dry["delete"]["keys"]);
    assert_eq!(strings(&real["delete"]["backups"]), vec![ids[4].clone()]);
    let after = s.keys();
    let gone: Vec<String> = before.difference(&after).cloned().collect();
    assert_eq!(gone, strings(&dry["delete"]["keys"]));
    assert!(after.contains("wal/00000002.history"));
    for k in &gone {
        if k.starts_with("wal/") {
            let n = wal_segno(k).unwrap_or_else(|| panic!("{k} is not a segment"));
            assert!(n < cutoff6, "{k} is at or after backup 6's start");
        }
    }
    assert!(gone.iter().any(|k| k.starts_with("wal/")), "{gone:?}");
}

#[test]
fn empty_repository_has_nothing_to_delete() {
    let t = TestRepo::new(Backend::Local);
    let config = t.write_config("c.toml", "");
    let out = check_output(
        "retention --dry-run",
        backupctl(&config, &["retention", "--dry-run"]),
    );
    let text = stdout(&out);
    assert!(
        text.contains("backups: none") && text.contains("would delete 0 backups"),
        "{text}"
    );
    let out = check_output("retention", backupctl(&config, &["retention"]));
    let text = stdout(&out);
    assert!(text.contains("freed 0 backups"), "{text}");
    let out = check_output(
        "retention --json",
        backupctl(&config, &["--json", "retention"]),
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["freed"]["objects"], 0);
    assert_eq!(v["policy"]["wal"], "7d");
}

/// Killed uploads leave hidden temp files named after their writer: `info` and `check`
/// count them, and the next wal-push (in its directory), backup or retention removes
/// those of this host's processes that are gone — never a live process's, another
/// host's, or one named before names carried writers (those wait for
/// `retention.incomplete_after`). Local only: S3 leaves no temp objects (its unfinished
/// multipart uploads name no writer).
#[test]
fn leftovers_of_dead_processes_go_at_the_next_job() {
    use backupctl::repo::leftover::temp_prefix;
    let s = Setup::new(Backend::Local);
    switch_wal_and_wait(&s.cluster);
    let host = backupctl::host::local_hostname();
    let dead_pid = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let root = s.t.dir.path().join("repo/main");
    let temp = |dir: &Path, host: &str, pid: u32, tag: &str, mib: usize| {
        let p = dir.join(format!("{}{tag}", temp_prefix(host, pid)));
        std::fs::write(&p, vec![7u8; mib << 20]).unwrap();
        common::chown_to_pg(&p);
        p
    };
    let dead = temp(&root, &host, dead_pid, "dead01", 3);
    let live = temp(&root, &host, std::process::id(), "live01", 1);
    let other = temp(&root, "another-host", dead_pid, "other1", 1);
    let old = root.join(".tmp-Old123");
    std::fs::write(&old, vec![7u8; 1 << 20]).unwrap();
    common::chown_to_pg(&old);
    let kept = [&live, &other, &old];

    // Shown before anything removes them.
    let info = s.json(&s.config, &["--json", "info"]);
    let u = &info["unfinished_uploads"];
    assert_eq!(u["count"], 4, "{info}");
    assert_eq!(u["bytes"], 6 << 20, "{info}");
    assert_eq!(u["of_dead_writers_here"], 1, "{info}");
    let text = s.ok(&["info"]);
    assert!(text.contains("unfinished uploads: 4 (6.0 MiB)"), "{text}");
    let check = stdout(&backupctl(&s.config, &["check"]));
    assert!(
        check.contains("unfinished uploads")
            && check.contains("4 left by killed uploads (6.0 MiB), 1 of them"),
        "{check}"
    );

    // wal-push removes a dead writer's temp file in the directory it writes to.
    let seg = s
        .cluster
        .psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    let wal_dir = root.join("wal").join(&seg[..16]);
    let in_wal = temp(&wal_dir, &host, dead_pid, "dead02", 1);
    // WAL to switch away from (`check` has just switched).
    s.cluster.psql("postgres", "CREATE TABLE written (i int)");
    switch_wal_and_wait(&s.cluster);
    assert!(!in_wal.exists(), "wal-push left {}", in_wal.display());
    assert!(dead.exists(), "outside wal-push's directory");

    // The next backup removes the rest of this host's dead writers' files.
    s.ok(&["backup", "--kind", "physical", "--no-verify"]);
    assert!(!dead.exists());
    // So does retention.
    let dead2 = temp(&root, &host, dead_pid, "dead03", 1);
    s.ok(&["retention"]);
    assert!(!dead2.exists());
    for p in kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
    let info = s.json(&s.config, &["--json", "info"]);
    assert_eq!(info["unfinished_uploads"]["count"], 3, "{info}");
    assert_eq!(
        info["unfinished_uploads"]["of_dead_writers_here"], 0,
        "{info}"
    );
}
