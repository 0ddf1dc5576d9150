//! Incremental physical backups against a real PostgreSQL 15 cluster under pgbench
//! load: a full backup and a chain of incremental ones with VACUUM, TRUNCATE, DROP
//! TABLE, CREATE DATABASE, an index rebuild, a relation extended past its first 1 GiB
//! segment and a relation truncated by VACUUM between them. Each link, restored to the
//! restore point made right after it, holds exactly the rows the live cluster had there
//! (per-table row count and hash), and `pg_amcheck --heapallindexed` finds nothing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::setup::Setup;
use common::{as_pg, check_output, json, pg_bin, switch_wal_and_wait, Backend, ClusterOptions};

/// Per table (`db.schema.table`): row count and an order-independent hash of the rows.
fn fingerprint(psql: &dyn Fn(&str, &str) -> String, dbs: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for db in dbs {
        let tables = psql(
            db,
            "SELECT string_agg(format('%I.%I', schemaname, relname), ' ' ORDER BY 1) \
             FROM pg_stat_user_tables",
        );
        for t in tables.split_whitespace() {
            let v = psql(
                db,
                &format!("SELECT count(*) || ':' || coalesce(sum(hashtext(x::text)::int8), 0) FROM {t} x"),
            );
            out.insert(format!("{db}.{t}"), v);
        }
    }
    out
}

/// No page of the restored copy has its visibility-map bit set without its own
/// all-visible flag: later inserts would not clear the bit, and index-only scans would
/// miss their rows. (A restore that paired an old heap page with a newer map did that.)
fn visibility_consistent(restored: &common::Restored, dbs: &[&str]) {
    for db in dbs {
        restored.psql(db, "CREATE EXTENSION IF NOT EXISTS pg_visibility");
        let bad = restored.psql(
            db,
            "SELECT coalesce(string_agg(c.relname || ':' || n, ', '), '') FROM pg_class c, \
                    LATERAL (SELECT count(*) AS n FROM pg_visibility(c.oid) \
                             WHERE all_visible AND NOT pd_all_visible) v \
             WHERE c.relkind IN ('r', 'm') AND c.relpersistence = 'p' AND v.n > 0",
        );
        assert_eq!(
            bad, "",
            "{db}: visibility map bits set on pages not marked all-visible"
        );
    }
}

fn amcheck(restored: &common::Restored) {
    let out = as_pg(
        Command::new(pg_bin("pg_amcheck"))
            .arg("-h")
            .arg(&restored.socket_dir)
            .args([
                "-p",
                &restored.port.to_string(),
                "-U",
                "postgres",
                "--all",
                "--install-missing",
                "--heapallindexed",
            ]),
    )
    .output()
    .unwrap();
    check_output("pg_amcheck --heapallindexed on the restored copy", out);
}

struct Link {
    id: String,
    point: String,
    rows: BTreeMap<String, String>,
}

const DBS: &[&str] = &["postgres", "other"];

/// Take an incremental backup (`extra` arguments) while pgbench writes, then make a
/// restore point and record what the live cluster holds at it.
fn link(s: &Setup, n: usize, extra: &[&str]) -> Link {
    let load = s.cluster.pgbench_load(&["-c", "2", "-T", "3"]);
    let mut args = vec!["backup", "--kind", "incremental"];
    args.extend_from_slice(extra);
    let id = s.ok(&args).trim().to_string();
    load.finish();
    let point = format!("after-link-{n}");
    s.sql(&format!("SELECT pg_create_restore_point('{point}')"));
    let psql = |db: &str, sql: &str| s.cluster.psql(db, sql);
    let rows = fingerprint(&psql, DBS);
    switch_wal_and_wait(&s.cluster);
    Link { id, point, rows }
}

/// The major version of the server programs under test.
fn server_major() -> u32 {
    let out = Command::new(pg_bin("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| {
            let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// On PostgreSQL 17 and later the server summarizes its WAL and the incremental
/// backups read only the blocks the summaries name (`wal-summary`); before, they read
/// every page's LSN (`page-lsn`). `scripts/test` runs this on 16, 17 and 18 too.
fn chain_restores_match_the_live_cluster(backend: Backend) {
    let summaries = server_major() >= 17;
    let mut conf = vec![
        "max_wal_size = '2GB'".to_string(),
        "autovacuum = off".into(),
    ];
    if summaries {
        conf.push("summarize_wal = on".into());
    } else {
        // Page LSNs show every change only with hint-bit changes WAL-logged.
        conf.push("wal_log_hints = on".into());
    }
    let s = Setup::with(
        backend,
        ClusterOptions {
            conf,
            ..Default::default()
        },
        "",
    );
    s.cluster.pgbench_init(4);
    s.sql("CREATE DATABASE other");
    s.cluster.psql(
        "other",
        "CREATE TABLE o AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    s.sql(
        "CREATE TABLE doomed AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g",
    );
    s.sql("CREATE TABLE shrinks AS SELECT g AS id, repeat('x', 200) AS v FROM generate_series(1, 50000) g");
    s.sql("CREATE INDEX ON shrinks (id)");
    let full = s.ok(&["backup", "--kind", "physical"]).trim().to_string();
    switch_wal_and_wait(&s.cluster);

    // 1: vacuum, a new table; parent chosen by default (the verified full backup).
    s.sql("VACUUM pgbench_accounts");
    s.sql("CREATE TABLE fresh AS SELECT g AS id FROM generate_series(1, 5000) g");
    let l1 = link(&s, 1, &[]);
    // 2: truncate, drop, a new database, an index rebuilt.
    s.sql("TRUNCATE pgbench_history");
    s.sql("DROP TABLE doomed");
    s.sql("CREATE DATABASE later");
    s.cluster.psql(
        "later",
        "CREATE TABLE l AS SELECT g AS id FROM generate_series(1, 100) g",
    );
    s.sql("REINDEX TABLE pgbench_accounts");
    s.cluster.psql(
        "other",
        "INSERT INTO o SELECT g FROM generate_series(1001, 1500) g",
    );
    let l2 = link(&s, 2, &[]);
    // 3: a relation past its first 1 GiB segment (mostly zero-ish, compressible pages).
    s.sql(
        "CREATE TABLE big (id int, pad text) WITH (fillfactor = 10); \
         ALTER TABLE big ALTER pad SET STORAGE PLAIN",
    );
    s.sql("INSERT INTO big SELECT g, repeat('b', 600) FROM generate_series(1, 145000) g");
    let segments = s.sql("SELECT pg_relation_size('big') > 1073741824");
    assert_eq!(segments, "t", "big must have a second segment");
    let l3 = link(&s, 3, &[]);
    // 4: a change in the second segment only, and a relation truncated by VACUUM.
    s.sql("UPDATE big SET pad = repeat('c', 600) WHERE id > 144000");
    s.sql("DELETE FROM shrinks WHERE id > 10000");
    s.sql("VACUUM shrinks");
    let l4 = link(&s, 4, &[]);
    // A differential backup: parent the full one.
    s.sql("UPDATE pgbench_branches SET bbalance = bbalance + 1");
    let diff = link(&s, 5, &["--parent", "full"]);

    let list = json(&s.run(&["list", "--json"]));
    let by_id = |id: &str| {
        list["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {list}"))
            .clone()
    };
    let links = [&l1, &l2, &l3, &l4];
    let method = if summaries { "wal-summary" } else { "page-lsn" };
    for (i, l) in links.iter().enumerate() {
        assert!(l.id.ends_with("-incremental"), "{}", l.id);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(s.object_path(&format!("backups/{}/manifest.json", l.id))).unwrap(),
        )
        .unwrap();
        let inc = &manifest["physical"]["incremental"];
        assert_eq!(inc["method"], method, "{inc}");
        assert!(inc["unchanged_files"].as_u64().unwrap() > 0, "{inc}");
        let b = by_id(&l.id);
        let parent = if i == 0 {
            full.clone()
        } else {
            links[i - 1].id.clone()
        };
        assert_eq!(b["parent"], parent.as_str(), "{b}");
        assert_eq!(b["chain_length"], i as u64 + 1, "{b}");
    }
    assert_eq!(by_id(&diff.id)["parent"], full.as_str());
    assert_eq!(by_id(&diff.id)["chain_length"], 1);
    // (What each link stores is measured by bench/incremental.sh: here the first reads
    // of freshly loaded tables set hint bits, which wal_log_hints logs, so a small change
    // can store a whole table.)

    for l in links.into_iter().chain([&diff]) {
        let r = s.restore_start(&["--backup", &l.id, "--target-name", &l.point]);
        let psql = |db: &str, sql: &str| r.psql(db, sql);
        let got = fingerprint(&psql, DBS);
        assert_eq!(got, l.rows, "restore of {} at {}", l.id, l.point);
        amcheck(&r);
        visibility_consistent(&r, &["postgres", "other"]);
        if l.id == l2.id {
            assert_eq!(r.psql("later", "SELECT count(*) FROM l"), "100");
            assert_eq!(
                r.psql(
                    "postgres",
                    "SELECT count(*) FROM pg_class WHERE relname = 'doomed'"
                ),
                "0"
            );
        }
        r.stop();
    }
}

/// A restore of an incremental backup whose parent is gone is refused with the reason,
/// and retention keeps a kept backup's whole chain.
/// A cluster whose page LSNs show every change (wal_log_hints), not verifying backups.
fn hinted(backend: Backend) -> Setup {
    Setup::with(
        backend,
        ClusterOptions {
            conf: vec!["wal_log_hints = on".into()],
            ..Default::default()
        },
        "[verify]\nafter_backup = false\n",
    )
}

fn broken_chains_are_refused_and_retention_keeps_chains(backend: Backend) {
    let s = hinted(backend);
    s.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g");
    let full = s.backup_no_verify();
    s.sql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g");
    let inc = s
        .ok(&[
            "backup",
            "--kind",
            "incremental",
            "--parent",
            &full,
            "--no-verify",
        ])
        .trim()
        .to_string();
    switch_wal_and_wait(&s.cluster);
    // Nothing verified: the default parent does not exist, and the backup is full.
    let again = s
        .ok(&["backup", "--kind", "incremental", "--no-verify"])
        .trim()
        .to_string();
    assert!(again.ends_with("-physical"), "{again}");
    switch_wal_and_wait(&s.cluster);

    // keep_last = 1 keeps the newest (a full one) and deletes both others; with
    // keep_last = 2, the newest two are `again` and `inc`, and `inc` keeps `full`.
    let cfg = s.t.write_config(
        "keep2.toml",
        &format!(
            "{}\n[retention]\nwal = \"backups\"\n\n[retention.physical]\nkeep_last = 2\n",
            s.cluster.postgres_toml()
        ),
    );
    let plan = json(&common::backupctl(
        &cfg,
        &["retention", "--dry-run", "--json"],
    ));
    let text = plan.to_string();
    assert!(
        text.contains(&format!("parent of kept incremental backup {inc}")),
        "{text}"
    );
    let deleted = plan["delete"]["backups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(deleted.iter().all(|d| d != full.as_str()), "{text}");

    // The parent's manifest gone: the child cannot be restored, and says why.
    s.t.delete(&format!("backups/{full}/manifest.json"));
    let dir = common::pg_tempdir();
    let pg = dir.path().join("r");
    let out = s.run(&[
        "restore",
        "--pgdata",
        pg.to_str().unwrap(),
        "--backup",
        &inc,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let err = common::stderr(&out);
    assert!(
        err.contains(&format!("its parent {full} is missing")),
        "{err}"
    );
}

/// A binary of before incremental backups refuses the repository once it holds one:
/// the repository's format is raised with the first incremental backup.
fn the_repository_format_says_it_holds_incremental_backups(backend: Backend) {
    let s = hinted(backend);
    let full = s.backup_no_verify();
    let before: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.object_path("repo.json")).unwrap()).unwrap();
    assert_eq!(before["format"], 1);
    s.ok(&[
        "backup",
        "--kind",
        "incremental",
        "--parent",
        &full,
        "--no-verify",
    ]);
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.object_path("repo.json")).unwrap()).unwrap();
    assert_eq!(after["format"], 3, "{after}");
    // The incremental manifest has a format of its own.
    let list = json(&s.run(&["list", "--json"]));
    assert!(list.to_string().contains("-incremental"), "{list}");
}

/// Regression: with wal_log_hints and data checksums off and no WAL summaries, VACUUM
/// marks heap pages all-visible without moving their LSN; an incremental backup by page
/// LSNs restored the old page beside the new visibility map. Such a server gets a full
/// backup (saying why), and an explicit parent is refused.
fn without_hints_or_summaries_page_lsns_are_not_trusted(backend: Backend) {
    let s = Setup::with_config(backend, "[verify]\nafter_backup = false\n");
    let full = s.backup_no_verify();
    let out = s.run(&[
        "backup",
        "--kind",
        "incremental",
        "--parent",
        &full,
        "--no-verify",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("wal_log_hints = on"),
        "{}",
        common::stderr(&out)
    );
    // With a verified parent to choose, the default choice is taken full, saying why.
    s.ok(&["verify", "--all"]);
    let out = s.run(&["backup", "--kind", "incremental", "--no-verify"]);
    check_output("incremental backup without hints", out.clone());
    assert!(
        common::stdout(&out).trim().ends_with("-physical"),
        "{}",
        common::stdout(&out)
    );
    assert!(
        common::stderr(&out).contains("taken full"),
        "{}",
        common::stderr(&out)
    );
}

mod local {
    #[test]
    fn without_hints_or_summaries_page_lsns_are_not_trusted() {
        super::without_hints_or_summaries_page_lsns_are_not_trusted(super::Backend::Local)
    }
    #[test]
    fn chain_restores_match_the_live_cluster() {
        super::chain_restores_match_the_live_cluster(super::Backend::Local)
    }
    #[test]
    fn broken_chains_are_refused_and_retention_keeps_chains() {
        super::broken_chains_are_refused_and_retention_keeps_chains(super::Backend::Local)
    }
    #[test]
    fn the_repository_format_says_it_holds_incremental_backups() {
        super::the_repository_format_says_it_holds_incremental_backups(super::Backend::Local)
    }
}

mod s3 {
    #[test]
    fn chain_restores_match_the_live_cluster() {
        super::chain_restores_match_the_live_cluster(super::Backend::S3)
    }
    #[test]
    fn broken_chains_are_refused_and_retention_keeps_chains() {
        super::broken_chains_are_refused_and_retention_keeps_chains(super::Backend::S3)
    }
}
