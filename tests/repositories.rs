//! Several repositories against real PostgreSQL, a local directory and s3s-fs: WAL and
//! backups reach both; an outage of the S3 repository (`required = false`) does not
//! hold back archiving, and its backlog catches up with nothing missing; a restore
//! reads what one repository lost from the other; per-kind routing sends each kind
//! where the config says, and `--repo` acts on one repository.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    archive_command, backupctl, check_line, check_output, free_port, json, pg_tempdir, stderr,
    stdout, switch_wal_and_wait, Backend, Cluster, ClusterOptions, Restored, TestRepo,
};

/// A `[[repository]]` entry named `name` for `t`, with `extra` keys.
fn entry(t: &TestRepo, name: &str, extra: &str) -> String {
    t.repository_toml().replacen(
        "[repository]\n",
        &format!("[[repository]]\nname = \"{name}\"\n{extra}"),
        1,
    )
}

struct Two {
    local: TestRepo,
    s3: TestRepo,
    cluster: Cluster,
    config: PathBuf,
}

impl Two {
    /// A cluster archiving with a config of two repositories: `local` (with
    /// `local_extra` keys) and `offsite` on s3s-fs (with `s3_extra`).
    fn new(local_extra: &str, s3_extra: &str) -> Two {
        let local = TestRepo::new(Backend::Local);
        let s3 = TestRepo::new(Backend::S3);
        // s3s-fs's secret file lives in the S3 test repo's directory: the path in the
        // entry already points there.
        let write = |postgres: &str| -> PathBuf {
            let path = local.dir.path().join("backup.toml");
            let text = format!(
                "{}\n{}\n[backup]\nstate_dir = \"{}\"\n\n[log]\nlevel = \"info\"\n\n{postgres}\n",
                entry(&local, "local", local_extra),
                entry(&s3, "offsite", s3_extra),
                local.dir.path().join("state").display()
            );
            std::fs::write(&path, text).unwrap();
            common::chown_to_pg(&path);
            path
        };
        let config = write("");
        let cluster = Cluster::new(ClusterOptions {
            archive_command: Some(archive_command(&config)),
            // Page LSNs show every change: incremental backups are taken as asked.
            conf: vec!["wal_log_hints = on".into()],
            ..Default::default()
        });
        let config = write(&cluster.postgres_toml());
        Two {
            local,
            s3,
            cluster,
            config,
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = backupctl(&self.config, args);
        check_output(&format!("backupctl {args:?}"), out.clone());
        stdout(&out)
    }

    fn sql(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql)
    }

    fn local_root(&self) -> PathBuf {
        self.local.dir.path().join("repo/main")
    }

    fn s3_root(&self) -> PathBuf {
        self.s3.s3.as_ref().unwrap().bucket_dir().join("pg/main")
    }

    fn s3_server(&mut self) -> &mut common::S3Server {
        self.s3.s3.as_mut().unwrap()
    }

    /// The info summary's backlog entry of `offsite`.
    fn backlog(&self) -> serde_json::Value {
        let info = json(&backupctl(&self.config, &["--json", "info"]));
        info["wal_backlog"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["repository"] == "offsite").cloned())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// WAL segment names stored under `root/wal`.
fn segments(root: &Path) -> BTreeSet<String> {
    common::walk(&root.join("wal"))
        .into_iter()
        .filter_map(|p| {
            let name = Path::new(&p).file_name()?.to_str()?.to_string();
            let base = name.split('.').next()?.to_string();
            (base.len() == 24 && !name.contains(".meta")).then_some(base)
        })
        .collect()
}

#[test]
fn an_outage_of_an_optional_repository_holds_nothing_back_and_catches_up() {
    let mut s = Two::new("", "required = false\n");
    s.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    s.sql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g");
    let id = s
        .ok(&["backup", "--kind", "physical", "--no-verify"])
        .trim()
        .to_string();
    switch_wal_and_wait(&s.cluster);
    // The backup is complete in both repositories, and so is its WAL.
    for root in [s.local_root(), s.s3_root()] {
        assert!(
            root.join(format!("backups/{id}/manifest.json")).exists(),
            "no manifest of {id} under {}",
            root.display()
        );
    }
    assert_eq!(segments(&s.local_root()), segments(&s.s3_root()));

    // S3 goes away for 30 s: archiving goes on into the local repository.
    s.s3_server().stop();
    let outage = Instant::now();
    for i in 0..3 {
        s.sql(&format!(
            "INSERT INTO t SELECT g, 'during {i}' FROM generate_series({}, {}) g",
            2000 + i * 1000,
            2999 + i * 1000
        ));
        switch_wal_and_wait(&s.cluster);
        s.sql("CHECKPOINT");
    }
    let behind: BTreeSet<String> = segments(&s.local_root())
        .difference(&segments(&s.s3_root()))
        .cloned()
        .collect();
    assert!(
        behind.len() >= 3,
        "segments archived during the outage: {behind:?}"
    );
    let b = s.backlog();
    assert!(b["files"].as_u64().unwrap() >= 3, "backlog: {b}");
    let out = backupctl(&s.config, &["check"]);
    let line = check_line(&stdout(&out), "wal backlog");
    assert!(
        line.contains("offsite") && line.contains("waiting"),
        "{line}"
    );
    let line = check_line(&stdout(&out), "repositories");
    assert!(line.contains("offsite"), "{line}");
    // Some of those segments have left pg_wal (recycled by the checkpoints): they can
    // only come from the local repository.
    let wal_dir = s.cluster.pgdata.join("pg_wal");
    let gone: Vec<&String> = behind
        .iter()
        .filter(|n| !wal_dir.join(n).exists())
        .collect();

    while outage.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
    }
    s.s3_server().resume();
    // The next archived segments catch the backlog up once the pause after the last
    // failure is over.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        s.sql("INSERT INTO t VALUES (100000 + (random() * 1000000)::int, 'after') ON CONFLICT DO NOTHING");
        switch_wal_and_wait(&s.cluster);
        let b = s.backlog();
        if b["files"].as_u64() == Some(0) {
            assert!(b["lost"].as_array().unwrap().is_empty(), "{b}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not catch up: {b}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let missing: Vec<String> = segments(&s.local_root())
        .difference(&segments(&s.s3_root()))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "not in the S3 repository after catching up: {missing:?}"
    );
    if !gone.is_empty() {
        assert!(
            s.cluster
                .server_log()
                .contains("copied from another repository"),
            "{gone:?} had left pg_wal, yet nothing was copied from the local repository"
        );
    }
    // The S3 repository alone has every segment: its WAL verification passes.
    let out = backupctl(
        &s.config,
        &["--repo", "offsite", "verify", "--wal", "--all"],
    );
    assert!(
        out.status.success(),
        "verify of the S3 repository: {}{}",
        stdout(&out),
        stderr(&out)
    );

    // The local repository loses a part of the backup and a WAL segment, and another
    // part, a WAL segment and the manifest are damaged there: the restore reads each
    // from S3, and says so.
    let info = json(&backupctl(
        &s.config,
        &["--json", "--repo", "local", "info", &id],
    ));
    let objects = info["objects"].as_array().unwrap();
    let part = objects[0]["name"].as_str().unwrap().to_string();
    std::fs::remove_file(s.local_root().join(format!("backups/{id}/{part}"))).unwrap();
    let damaged_part = objects.last().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    if damaged_part != part {
        flip_middle_byte(&s.local_root().join(format!("backups/{id}/{damaged_part}")));
    }
    let manifest = s.local_root().join(format!("backups/{id}/manifest.json"));
    let altered = std::fs::read_to_string(&manifest)
        .unwrap()
        .replacen("\"host\"", "\"h0st\"", 1);
    std::fs::write(&manifest, altered).unwrap();
    let mut behind = behind.iter();
    let lost_segment = behind.next().unwrap().clone();
    let damaged_segment = behind.next().cloned();
    for f in common::walk(&s.local_root().join("wal")) {
        if f.contains(&lost_segment) {
            std::fs::remove_file(&f).unwrap();
        } else if damaged_segment
            .as_ref()
            .is_some_and(|d| f.contains(d.as_str()))
        {
            flip_middle_byte(Path::new(&f));
        }
    }
    let dir = pg_tempdir();
    let pgdata = dir.path().join("restored");
    let port = free_port();
    let out = backupctl(
        &s.config,
        &[
            "restore",
            "--pgdata",
            &pgdata.display().to_string(),
            "--start",
            "--port",
            &port.to_string(),
        ],
    );
    let restored = Restored {
        pgdata: pgdata.clone(),
        socket_dir: s.cluster.socket_dir.clone(),
        port,
        dir: Some(dir),
    };
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "restore: {text}");
    assert!(
        text.contains("missing from repository local: read from repository offsite"),
        "the restore does not say where the lost part came from:\n{text}"
    );
    assert!(
        text.contains("using the sound copy in repository offsite"),
        "the restore does not say where the sound manifest came from:\n{text}"
    );
    if damaged_part != part {
        assert!(
            text.contains(&format!(
                "read a sound copy of backups/{id}/{damaged_part} from repository offsite"
            )),
            "the restore does not say where the sound part came from:\n{text}"
        );
    }
    if let Some(d) = &damaged_segment {
        let log = std::fs::read_to_string(pgdata.join("log/backupctl-recovery.log")).unwrap();
        assert!(
            log.contains(&format!(
                "restored a sound copy of {d} from repository offsite"
            )),
            "recovery does not say where the sound copy of {d} came from:\n{log}"
        );
    }
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*) FROM t WHERE note LIKE 'during%'"
        ),
        "3000"
    );
    restored.stop();
}

#[test]
fn each_kind_goes_where_the_config_routes_it_and_repo_selects_one() {
    let mut s = Two::new(
        "kinds = [\"wal\", \"physical\"]\n",
        "kinds = [\"physical\", \"logical\"]\n",
    );
    s.sql("CREATE TABLE t (id int PRIMARY KEY)");
    s.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let ids = s.ok(&["backup", "--kind", "both", "--no-verify"]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    switch_wal_and_wait(&s.cluster);
    let has = |root: &Path, id: &str| root.join(format!("backups/{id}/manifest.json")).exists();
    let kinds: Vec<String> = ids
        .iter()
        .map(|id| {
            let info = json(&backupctl(&s.config, &["--json", "info", id]));
            info["kind"].as_str().unwrap().to_string()
        })
        .collect();
    for (id, kind) in ids.iter().zip(&kinds) {
        match kind.as_str() {
            "physical" => assert!(has(&s.local_root(), id) && has(&s.s3_root(), id)),
            "logical" => assert!(!has(&s.local_root(), id) && has(&s.s3_root(), id)),
            k => panic!("kind {k}"),
        }
    }
    // WAL goes to the local repository only.
    assert!(!segments(&s.local_root()).is_empty());
    assert!(
        segments(&s.s3_root()).is_empty(),
        "WAL reached the S3 repository"
    );
    // `list` reads both; `--repo` one.
    let all = s.ok(&["list"]);
    for id in &ids {
        assert!(all.contains(id), "list misses {id}:\n{all}");
    }
    let only_local = s.ok(&["--repo", "local", "list"]);
    let logical = ids[kinds.iter().position(|k| k == "logical").unwrap()];
    let physical = ids[kinds.iter().position(|k| k == "physical").unwrap()];
    assert!(!only_local.contains(logical), "{only_local}");
    // ... and says which repository holds what, and what each alone can restore.
    let listing = json(&backupctl(&s.config, &["--json", "list"]));
    let held_by = |id: &str| -> Vec<String> {
        let b = listing["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listing}"));
        serde_json::from_value(b["repositories"].clone()).unwrap()
    };
    assert_eq!(held_by(physical), ["local", "offsite"]);
    assert_eq!(held_by(logical), ["offsite"]);
    let views = listing["repositories"].as_array().unwrap();
    let view = |name: &str| views.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(view("local")["backups"].as_array().unwrap().len(), 1);
    assert!(!view("local")["recoverable_windows"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(view("offsite")["backups"].as_array().unwrap().len(), 2);
    assert_eq!(view("offsite")["wal_segments"], 0);
    assert!(all.contains("in repositories: local, offsite"), "{all}");
    let info = json(&backupctl(&s.config, &["--json", "info"]));
    assert_eq!(info["repositories"].as_array().unwrap().len(), 2, "{info}");
    assert!(
        json(&backupctl(
            &s.config,
            &["--json", "--repo", "local", "list"]
        ))
        .get("repositories")
        .is_none(),
        "--repo chose one repository, yet list shows several"
    );

    // Verification restores each repository's copy, and checks the WAL of the one
    // that receives it against backups wherever they are.
    let out = backupctl(&s.config, &["--json", "verify", "--latest", "--wal"]);
    let report = json(&out);
    assert!(out.status.success(), "verify: {report}{}", stderr(&out));
    let restored: BTreeSet<(String, String)> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_eq!(b["outcome"], "ok", "{b}");
            (
                b["id"].as_str().unwrap().to_string(),
                b["repository"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        (physical, "local"),
        (physical, "offsite"),
        (logical, "offsite"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(restored, expected);
    let wal = report["wal_by_repository"].as_array().unwrap();
    assert_eq!(wal.len(), 1, "{report}");
    assert_eq!(wal[0]["repository"], "local");
    assert_eq!(wal[0]["ok"], true, "{report}");

    // What a repository does not receive is refused with --repo, naming the fix.
    let out = backupctl(
        &s.config,
        &["--repo", "local", "backup", "--kind", "logical"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no repository receives logical backups"),
        "{}",
        stderr(&out)
    );
    let out = backupctl(&s.config, &["--repo", "nosuch", "list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("local, offsite"), "{}", stderr(&out));

    // A required repository that cannot take its copy fails the backup, which says
    // where the backup is complete.
    s.s3_server().stop();
    let out = backupctl(&s.config, &["backup", "--kind", "physical", "--no-verify"]);
    assert!(
        !out.status.success(),
        "a backup succeeded without its required copy"
    );
    assert!(
        stderr(&out)
            .contains("is complete in repository local, but its copy to repository offsite failed"),
        "{}",
        stderr(&out)
    );
    s.s3_server().resume();
}

#[test]
fn configs_that_could_store_data_nowhere_are_refused() {
    let local = TestRepo::new(Backend::Local);
    let path = local.dir.path().join("bad.toml");
    let write = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = backupctl(&path, &["list"]);
        assert!(!out.status.success(), "accepted:\n{text}");
        stderr(&out)
    };
    let a = entry(&local, "a", "required = false\n");
    let err = write(&a);
    assert!(
        err.contains("required = false") && err.contains("make one of them required"),
        "{err}"
    );
    let twice = format!("{}\n{}", entry(&local, "a", ""), entry(&local, "a", ""));
    assert!(write(&twice).contains("two repositories are named \"a\""));
    let none = entry(&local, "a", "kinds = []\n");
    assert!(write(&none).contains("would receive nothing"));
    let unknown = entry(&local, "a", "kinds = [\"wall\"]\n");
    assert!(write(&unknown).contains("wall"));
}

/// Damage a stored object the way a bad disk would: one byte in its middle changes.
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

/// Archived data leaves the database only once every required repository that
/// receives exports holds it: with the S3 repository down the export stays in the
/// local one and the rows stay in the database; the next run copies it and drops them.
#[test]
fn exports_reach_every_required_repository_before_rows_leave_the_database() {
    let mut s = Two::new("", "");
    s.sql(
        "CREATE TABLE usage_stats (period_start date NOT NULL, meter int NOT NULL, kwh numeric, PRIMARY KEY (period_start, meter)) PARTITION BY RANGE (period_start);
         CREATE TABLE usage_stats_2020_01 PARTITION OF usage_stats FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE usage_stats_recent PARTITION OF usage_stats FOR VALUES FROM ('2020-02-01') TO (MAXVALUE);
         INSERT INTO usage_stats SELECT '2020-01-01'::date + i % 31, i, i / 10.0 FROM generate_series(1, 3100) i;
         INSERT INTO usage_stats SELECT current_date - i % 100, i, i FROM generate_series(1, 1000) i;",
    );
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(
        "\n[[archive]]\ntable = \"public.usage_stats\"\ncolumn = \"period_start\"\nolder_than = \"12 months\"\nmode = \"partitions\"\narchive_schema = \"archive\"\nexport_after = \"24 months\"\n",
    );
    std::fs::write(&s.config, text).unwrap();
    let exports = |root: &Path| -> BTreeSet<String> {
        common::walk(&root.join("exports"))
            .into_iter()
            .filter(|f| f.ends_with("/manifest.json"))
            .map(|f| f.rsplit('/').nth(1).unwrap().to_string())
            .collect()
    };

    s.s3_server().stop();
    let out = backupctl(&s.config, &["--json", "archive"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let report = json(&out);
    let item = &report["tables"][0]["exports"]["items"][0];
    assert_eq!(item["status"], "failed", "{report}");
    assert!(
        item["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was dropped from the database"),
        "{item}"
    );
    assert_eq!(
        s.sql("SELECT count(*) FROM archive.usage_stats_2020_01"),
        "3100",
        "rows left the database while only one repository held them"
    );
    assert_eq!(exports(&s.local_root()).len(), 1);

    s.s3_server().resume();
    s.ok(&["archive"]);
    assert_eq!(
        s.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'usage_stats_2020_01'"),
        "0"
    );
    let local = exports(&s.local_root());
    assert_eq!(local.len(), 1);
    assert_eq!(
        local,
        exports(&s.s3_root()),
        "the S3 repository lacks the export"
    );
}

/// An incremental backup copied to a repository that lacks its parent (one that began
/// to receive physical backups after the parent was taken) takes its parent along: the
/// chain restores from that repository alone, and its format says it holds
/// incremental backups.
#[test]
fn an_incremental_backup_takes_its_parent_to_a_repository_that_lacks_it() {
    let s = Two::new("kinds = [\"wal\", \"physical\"]\n", "kinds = [\"wal\"]\n");
    s.sql("CREATE TABLE t (id int PRIMARY KEY)");
    s.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let full = s
        .ok(&["backup", "--kind", "physical", "--no-verify"])
        .trim()
        .to_string();
    switch_wal_and_wait(&s.cluster);
    assert!(!s
        .s3_root()
        .join(format!("backups/{full}/manifest.json"))
        .exists());
    // The offsite repository now receives physical backups too.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let later = s.local.dir.path().join("later.toml");
    std::fs::write(
        &later,
        text.replacen(
            "kinds = [\"wal\"]\n",
            "kinds = [\"wal\", \"physical\"]\n",
            1,
        ),
    )
    .unwrap();
    common::chown_to_pg(&later);
    s.sql("INSERT INTO t SELECT generate_series(101, 150)");
    let out = backupctl(
        &later,
        &[
            "backup",
            "--kind",
            "incremental",
            "--parent",
            &full,
            "--no-verify",
        ],
    );
    check_output("incremental backup", out.clone());
    let inc = stdout(&out).trim().to_string();
    switch_wal_and_wait(&s.cluster);
    for id in [&full, &inc] {
        assert!(
            s.s3_root()
                .join(format!("backups/{id}/manifest.json"))
                .exists(),
            "{id} not copied offsite"
        );
    }
    let repo_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.s3_root().join("repo.json")).unwrap()).unwrap();
    assert_eq!(repo_json["format"], 3, "{repo_json}");

    let dir = common::pg_tempdir();
    let pgdata = dir.path().join("restored");
    let port = common::free_port();
    let out = backupctl(
        &later,
        &[
            "--repo",
            "offsite",
            "restore",
            "--pgdata",
            &pgdata.display().to_string(),
            "--backup",
            &inc,
            "--target",
            "immediate",
            "--start",
            "--port",
            &port.to_string(),
        ],
    );
    let restored = Restored {
        pgdata: pgdata.clone(),
        socket_dir: s.cluster.socket_dir.clone(),
        port,
        dir: Some(dir),
    };
    check_output("restore from offsite", out);
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "150");
    restored.stop();
}
