//! `backupctl archive` against real PostgreSQL 15 clusters: one million rows in batches
//! of 5000 with a kill in the middle, a partitioned source with identity and generated
//! columns, whole-partition moves without copying, foreign keys, mismatched archive
//! tables, dry runs that change nothing, lock conflicts that are retried, and a run
//! holding the lock on another host.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    backupctl, backupctl_bin, cluster_with_config, json, lock_held_on_another_host, stderr, stdout,
    Cluster, ClusterOptions, TestRepo,
};

fn setup(sql: &str, policies: &str) -> (Cluster, TestRepo, PathBuf) {
    cluster_with_config(
        ClusterOptions {
            conf: vec!["shared_buffers = 128MB".into()],
            ..Default::default()
        },
        sql,
        policies,
    )
}

fn q(c: &Cluster, sql: &str) -> String {
    c.psql("postgres", sql)
}

fn spawn_archive(config: &std::path::Path, extra: &[&str]) -> std::process::Child {
    let mut cmd = Command::new(backupctl_bin());
    cmd.arg("--config").arg(config).arg("archive").args(extra);
    common::as_pg(&mut cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Rows of `a` not in `b`, counting duplicates (EXCEPT ALL).
fn except_all(c: &Cluster, a: &str, b: &str) -> i64 {
    q(
        c,
        &format!("SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) x"),
    )
    .parse()
    .unwrap()
}

const MILLION: &str = "
    CREATE TABLE consumption_records (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        meter_id int NOT NULL,
        created_at timestamptz NOT NULL,
        kwh numeric(12,3) NOT NULL,
        note text
    );
    CREATE INDEX ON consumption_records (created_at);
    -- 1,000,000 rows from 400 to ~227 days ago, then 50,000 from the last month.
    INSERT INTO consumption_records (meter_id, created_at, kwh, note)
    SELECT i % 1000, now() - interval '400 days' + i * interval '15 seconds', (i % 100000) / 7.0,
           CASE WHEN i % 10 = 0 THEN NULL ELSE md5(i::text) END
      FROM generate_series(1, 1000000) i;
    INSERT INTO consumption_records (meter_id, created_at, kwh, note)
    SELECT i % 1000, now() - interval '30 days' + i * interval '30 seconds', i / 3.0, 'new'
      FROM generate_series(1, 50000) i;
    CREATE TABLE saved AS SELECT * FROM consumption_records;
    ANALYZE;";

#[test]
fn a_million_rows_in_batches_of_5000_survive_a_kill_and_a_rerun() {
    let (c, _t, config) = setup(
        MILLION,
        "[[archive]]\ntable = \"public.consumption_records\"\ncolumn = \"created_at\"\nolder_than = \"6 months\"\nbatch_size = 5000\nmode = \"rows\"\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let watcher = rt.block_on(c.connect("postgres"));
    let archived = || -> i64 {
        rt.block_on(watcher.query_one("SELECT count(*) FROM archive.consumption_records", &[]))
            .map(|r| r.get(0))
            .unwrap_or(0)
    };

    // Kill -9 once some batches have committed.
    let mut child = spawn_archive(&config, &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while archived() < 100_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "archive finished or died before it could be killed"
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());

    // Nothing lost, nothing doubled, and the log agrees with the data at the kill.
    let killed_at = archived();
    assert!(killed_at < 1_000_000, "the run finished before the kill");
    let source: i64 = q(&c, "SELECT count(*) FROM consumption_records")
        .parse()
        .unwrap();
    assert_eq!(source + killed_at, 1_050_000);
    assert_eq!(
        q(&c, "SELECT status || ':' || rows_moved || ':' || (finished IS NULL) FROM archive.archive_log"),
        format!("running:{killed_at}:true")
    );

    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report = json(&out);
    assert_eq!(report["tables"][0]["status"], "finished");
    assert_eq!(
        report["tables"][0]["rows"]["rows_moved"],
        1_000_000 - killed_at
    );

    assert_eq!(q(&c, "SELECT count(*) FROM consumption_records"), "50000");
    assert_eq!(
        q(&c, "SELECT count(*) FROM archive.consumption_records"),
        "1000000"
    );
    assert_eq!(
        q(
            &c,
            "SELECT count(*) - count(DISTINCT id) FROM archive.consumption_records"
        ),
        "0"
    );
    // Source + archive is exactly the original, both ways, duplicates counted.
    let both =
        "SELECT * FROM consumption_records UNION ALL SELECT * FROM archive.consumption_records";
    assert_eq!(except_all(&c, "SELECT * FROM saved", both), 0);
    assert_eq!(except_all(&c, both, "SELECT * FROM saved"), 0);
    // Every archived row is byte-identical to the original old row (text form, which
    // keeps numeric scale and NULLs apart).
    let old =
        "SELECT srow::text FROM saved srow WHERE srow.created_at < now() - interval '6 months'";
    let arch = "SELECT arow::text FROM archive.consumption_records arow";
    assert_eq!(except_all(&c, arch, old), 0);
    assert_eq!(except_all(&c, old, arch), 0);
    // The killed run stays unfinished (marked interrupted), the rerun finished.
    assert_eq!(
        q(&c, "SELECT string_agg(status || ':' || rows_moved || ':' || (finished IS NULL) || ':' || mode, ',' ORDER BY id) FROM archive.archive_log"),
        format!("interrupted:{killed_at}:true:rows,finished:{}:false:rows", 1_000_000 - killed_at)
    );
}

#[test]
fn partitioned_source_keeps_identity_and_generated_values() {
    let (c, _t, config) = setup(
        "CREATE TABLE readings (id bigint GENERATED ALWAYS AS IDENTITY, created_at date NOT NULL, a int, b int,
                                total int GENERATED ALWAYS AS (a * b) STORED, PRIMARY KEY (id, created_at))
           PARTITION BY RANGE (created_at);
         CREATE TABLE readings_2020_01 PARTITION OF readings FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE readings_2020_02 PARTITION OF readings FOR VALUES FROM ('2020-02-01') TO ('2020-03-01');
         CREATE TABLE readings_recent PARTITION OF readings FOR VALUES FROM (current_date - 10) TO (current_date + 30);
         CREATE TABLE readings_default PARTITION OF readings DEFAULT;
         INSERT INTO readings (created_at, a, b) SELECT '2020-01-01'::date + i % 31, i, 3 FROM generate_series(1, 1000) i;
         INSERT INTO readings (created_at, a, b) SELECT '2020-02-01'::date + i % 29, i, 5 FROM generate_series(1, 500) i;
         INSERT INTO readings (created_at, a, b) SELECT '2019-06-01'::date + i % 30, i, 7 FROM generate_series(1, 300) i;
         INSERT INTO readings (created_at, a, b) SELECT '2031-06-01'::date + i % 30, i, 9 FROM generate_series(1, 200) i;
         INSERT INTO readings (created_at, a, b) SELECT current_date - i % 10, i, 11 FROM generate_series(1, 400) i;
         CREATE TABLE saved AS SELECT * FROM readings;
         ANALYZE;",
        "[[archive]]\ntable = \"readings\"\nolder_than = \"1 year\"\nbatch_size = 7\n",
    );
    // Every partition starts at ctid (0,1): ctid alone does not identify a row here.
    assert_eq!(
        q(
            &c,
            "SELECT count(DISTINCT tableoid) FROM readings WHERE ctid = '(0,1)'"
        ),
        "4"
    );
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    let leaves: Vec<(&str, &str)> = r["tables"][0]["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["table"].as_str().unwrap(),
                l["cursor"]["kind"].as_str().unwrap(),
            )
        })
        .collect();
    // The recent partition cannot hold old rows and is not scanned.
    assert_eq!(
        leaves,
        [
            ("public.readings_2020_01", "physical"),
            ("public.readings_2020_02", "physical"),
            ("public.readings_default", "physical")
        ]
    );
    assert_eq!(r["tables"][0]["rows"]["rows_moved"], 1800);

    assert_eq!(q(&c, "SELECT count(*) FROM archive.readings"), "1800");
    assert_eq!(q(&c, "SELECT count(*) FROM readings"), "600");
    let old =
        "SELECT srow::text FROM saved srow WHERE created_at < current_date - interval '1 year'";
    let arch = "SELECT arow::text FROM archive.readings arow";
    assert_eq!(except_all(&c, arch, old), 0);
    assert_eq!(except_all(&c, old, arch), 0);
    let kept =
        "SELECT srow::text FROM saved srow WHERE created_at >= current_date - interval '1 year'";
    assert_eq!(
        except_all(&c, kept, "SELECT rrow::text FROM readings rrow"),
        0
    );
    // The archive table has plain columns: no identity, no generation expression.
    assert_eq!(
        q(&c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'archive.readings'::regclass AND attnum > 0 AND (attidentity <> '' OR attgenerated <> '')"),
        "0"
    );
    // The source still works as before.
    q(
        &c,
        "INSERT INTO readings (created_at, a, b) VALUES (current_date, 2, 2)",
    );
    // Nothing left to do on a rerun.
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["tables"][0]["rows"]["rows_moved"], 0);
}

#[test]
fn partitions_mode_moves_whole_old_partitions_without_copying_rows() {
    let (c, _t, config) = setup(
        "CREATE TABLE usage_stats (period_start date NOT NULL, meter int, kwh numeric) PARTITION BY RANGE (period_start);
         CREATE TABLE usage_stats_2020_01 PARTITION OF usage_stats FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE usage_stats_2020_02 PARTITION OF usage_stats FOR VALUES FROM ('2020-02-01') TO ('2020-03-01');
         CREATE TABLE usage_stats_straddle PARTITION OF usage_stats FOR VALUES FROM ('2020-03-01') TO (current_date + 1);
         CREATE TABLE usage_stats_default PARTITION OF usage_stats DEFAULT;
         CREATE INDEX ON usage_stats (meter);
         INSERT INTO usage_stats SELECT '2020-01-01'::date + i % 31, i, i / 10.0 FROM generate_series(1, 3100) i;
         INSERT INTO usage_stats SELECT '2020-02-01'::date + i % 29, i, i / 10.0 FROM generate_series(1, 2900) i;
         INSERT INTO usage_stats SELECT current_date - i % 1000, i, i FROM generate_series(1, 1000) i;
         INSERT INTO usage_stats SELECT current_date + 100, i, i FROM generate_series(1, 10) i;
         CREATE TABLE saved AS SELECT * FROM usage_stats;",
        "[[archive]]\ntable = \"public.usage_stats\"\ncolumn = \"period_start\"\nolder_than = \"12 months\"\nmode = \"partitions\"\narchive_schema = \"archive\"\n",
    );
    let storage = "SELECT string_agg(n.nspname || '.' || c.relname || ':' || c.oid || ':' || c.relfilenode || ':' || c.relispartition, ',' ORDER BY c.relname)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relname LIKE 'usage_stats_2020_0%'";
    let before = q(&c, storage);
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    let parts: Vec<(String, String, String)> = r["tables"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_str().unwrap().into(),
                p["fate"].as_str().unwrap().into(),
                p["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        parts,
        [
            s("public.usage_stats_2020_01", "move", "moved"),
            s("public.usage_stats_2020_02", "move", "moved"),
            s("public.usage_stats_straddle", "straddles", "left"),
            s("public.usage_stats_default", "default", "left"),
        ]
    );
    // Same relations, same files: only the catalog changed (schema, no longer a partition).
    let after = q(&c, storage);
    let expected = before
        .replace("public.", "archive.")
        .replace(":true", ":false");
    assert_eq!(after, expected);
    assert!(
        after.contains("archive.usage_stats_2020_01")
            && after.contains("archive.usage_stats_2020_02"),
        "{after}"
    );
    let moved = "SELECT * FROM archive.usage_stats_2020_01 UNION ALL SELECT * FROM archive.usage_stats_2020_02";
    let old = "SELECT * FROM saved WHERE period_start < '2020-03-01'";
    assert_eq!(except_all(&c, moved, old), 0);
    assert_eq!(except_all(&c, old, moved), 0);
    assert_eq!(q(&c, "SELECT count(*) FROM usage_stats"), "1010");
    assert_eq!(
        q(&c, "SELECT partitions_moved || ':' || array_to_string(moved_partitions, ',') || ':' || rows_moved || ':' || status FROM archive.archive_log"),
        "2:archive.usage_stats_2020_01,archive.usage_stats_2020_02:0:finished"
    );
    // The report says where the straddling partition's old rows go.
    let detail = r["tables"][0]["partitions"][2]["detail"].as_str().unwrap();
    assert!(
        detail.contains("straddles the cutoff") && detail.contains("mode = \"rows\""),
        "{detail}"
    );
    // A rerun has nothing to move.
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["tables"][0]["partitions_moved"], 0);
    assert_eq!(q(&c, "SELECT count(*) FROM usage_stats"), "1010");
}

#[test]
fn foreign_keys_are_refused_unless_ignored_and_bad_intervals_are_named() {
    let sql = "CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);
               CREATE TABLE order_lines (id bigint PRIMARY KEY, order_id bigint REFERENCES orders (id) ON DELETE CASCADE);
               INSERT INTO orders SELECT i, now() - interval '2 years' + i * interval '1 hour' FROM generate_series(1, 100) i;
               INSERT INTO orders SELECT 1000 + i, now() FROM generate_series(1, 10) i;
               INSERT INTO order_lines SELECT i, 1001 + i % 10 FROM generate_series(1, 20) i;";
    let (c, t, config) = setup(
        sql,
        "[[archive]]\ntable = \"orders\"\nolder_than = \"1 year\"\n",
    );
    for args in [&["archive", "--dry-run"][..], &["archive"][..]] {
        let out = backupctl(&config, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(
            text.contains("order_lines_order_id_fkey on order_lines"),
            "{text}"
        );
        assert!(text.contains("on_foreign_keys = \"ignore\""), "{text}");
    }
    assert_eq!(
        q(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'archive'"
        ),
        "0"
    );
    assert_eq!(q(&c, "SELECT count(*) FROM orders"), "110");

    let ignore = t.write_config(
        "ignore.toml",
        &format!("{}\n[[archive]]\ntable = \"orders\"\nolder_than = \"1 year\"\non_foreign_keys = \"ignore\"\n", c.postgres_toml()),
    );
    let out = backupctl(&ignore, &["archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(q(&c, "SELECT count(*) FROM archive.orders"), "100");
    assert_eq!(q(&c, "SELECT count(*) FROM order_lines"), "20");

    for (interval, why) in [
        ("6 parsecs", "is not a PostgreSQL interval"),
        ("-1 day", "is not a positive interval"),
    ] {
        let bad = t.write_config(
            "bad.toml",
            &format!(
                "{}\n[[archive]]\ntable = \"orders\"\nolder_than = \"{interval}\"\n",
                c.postgres_toml()
            ),
        );
        let out = backupctl(&bad, &["archive"]);
        assert_eq!(out.status.code(), Some(2), "{interval}: {}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains("archive[0].older_than") && text.contains(why),
            "{text}"
        );
    }
}

#[test]
fn an_archive_table_or_log_that_does_not_match_is_refused() {
    let (c, t, config) = setup(
        "CREATE TABLE t (id int, created_at timestamptz NOT NULL, v text);
         INSERT INTO t SELECT i, now() - interval '3 years', 'v' || i FROM generate_series(1, 50) i;
         CREATE SCHEMA archive;
         CREATE TABLE archive.t (id bigint, created_at timestamptz);
         CREATE SCHEMA legacy;
         CREATE TABLE legacy.archive_log (id serial, message text);",
        "[[archive]]\ntable = \"t\"\nolder_than = \"1 year\"\n",
    );
    let out = backupctl(&config, &["archive"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("column id is integer in the source but bigint in the archive table"),
        "{text}"
    );
    assert!(text.contains("column v (text) is missing; add it: ALTER TABLE \"archive\".\"t\" ADD COLUMN \"v\" text"), "{text}");
    assert_eq!(q(&c, "SELECT count(*) FROM t"), "50");
    assert_eq!(q(&c, "SELECT count(*) FROM archive.t"), "0");

    // Fixed, plus a nullable column only the archive has (dropped from the source long ago).
    q(&c, "ALTER TABLE archive.t ALTER COLUMN id TYPE int; ALTER TABLE archive.t ADD COLUMN v text, ADD COLUMN retired text");
    let out = backupctl(&config, &["archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        q(&c, "SELECT count(*) FROM archive.t WHERE retired IS NULL"),
        "50"
    );

    let legacy = t.write_config(
        "legacy.toml",
        &format!("{}\n[[archive]]\ntable = \"t\"\nolder_than = \"1 year\"\narchive_schema = \"legacy\"\n", c.postgres_toml()),
    );
    let out = backupctl(&legacy, &["archive"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("legacy.archive_log exists with another layout"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn dry_run_prints_sql_and_estimates_and_changes_nothing() {
    let (c, _t, config) = setup(
        "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamp NOT NULL, payload jsonb);
         CREATE INDEX events_created_at_idx ON events (created_at);
         INSERT INTO events SELECT i, now() - interval '2 years' + i * interval '1 minute', jsonb_build_object('i', i)
           FROM generate_series(1, 20000) i;
         INSERT INTO events SELECT 100000 + i, now(), NULL FROM generate_series(1, 100) i;
         ANALYZE events;",
        "[[archive]]\ntable = \"events\"\nolder_than = \"6 months\"\nbatch_size = 1000\n",
    );
    let state = "SELECT (SELECT count(*) FROM pg_class) || ':' || (SELECT count(*) FROM pg_namespace) || ':' || (SELECT count(*) FROM events)
                 || ':' || (SELECT sum(n_tup_del) FROM pg_stat_user_tables)";
    let before = q(&c, state);
    let out = backupctl(&config, &["archive", "--dry-run"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    for want in [
        "CREATE SCHEMA IF NOT EXISTS \"archive\";",
        "CREATE TABLE \"archive\".\"events\" (LIKE \"public\".\"events\" INCLUDING ALL EXCLUDING IDENTITY EXCLUDING GENERATED);",
        "CREATE TABLE IF NOT EXISTS \"archive\".\"archive_log\"",
        "SET LOCAL lock_timeout = '5000ms';",
        "DELETE FROM ONLY \"public\".\"events\"",
        "ORDER BY \"created_at\" LIMIT 1000",
        "walked in index events_created_at_idx",
        "nothing was changed",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let out = backupctl(&config, &["--json", "archive", "--dry-run"]);
    let r = json(&out);
    let estimate = r["tables"][0]["estimated_rows"].as_i64().unwrap();
    assert!((18_000..=22_000).contains(&estimate), "estimate {estimate}");
    assert_eq!(r["tables"][0]["status"], "dry_run");
    assert_eq!(q(&c, state), before);
}

#[test]
fn lock_conflicts_are_retried_under_lock_timeout() {
    let (c, _t, config) = setup(
        "CREATE TABLE busy (id int, created_at date NOT NULL);
         INSERT INTO busy SELECT i, '2000-01-01' FROM generate_series(1, 100) i;",
        "[[archive]]\ntable = \"busy\"\nolder_than = \"1 year\"\nlock_timeout = \"200ms\"\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(c.connect("postgres"));
    // An application transaction that blocks DELETE (not reads) on the table.
    rt.block_on(app.batch_execute("BEGIN; LOCK TABLE busy IN SHARE MODE"))
        .unwrap();
    let mut child = spawn_archive(&config, &[]);
    let err = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("archive never reported a lock conflict");
        let retrying = line.contains("lock timeout") && line.contains("retrying");
        log.push(line);
        if retrying {
            break;
        }
    }
    rt.block_on(app.batch_execute("COMMIT")).unwrap();
    let status = child.wait().unwrap();
    log.extend(rx.try_iter());
    assert!(status.success(), "{}", log.join("\n"));
    assert_eq!(q(&c, "SELECT count(*) FROM busy"), "0");
    assert_eq!(q(&c, "SELECT count(*) FROM archive.busy"), "100");
}

/// A session that never lets go: after its last attempt the run fails naming it (pid,
/// application, state, the lock it holds on which table) and the SQL that ends it; the
/// rows stay where they were.
#[test]
fn a_run_still_blocked_after_its_retries_names_the_blocking_session() {
    let (c, _t, config) = setup(
        "CREATE TABLE busy (id int, created_at date NOT NULL);
         INSERT INTO busy SELECT i, '2000-01-01' FROM generate_series(1, 100) i;",
        "[[archive]]\ntable = \"busy\"\nolder_than = \"1 year\"\nlock_timeout = \"100ms\"\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(c.connect("postgres"));
    rt.block_on(app.batch_execute(
        "SET application_name = 'billing-app'; BEGIN; LOCK TABLE busy IN SHARE MODE",
    ))
    .unwrap();
    let pid = rt
        .block_on(app.query_one("SELECT pg_backend_pid()", &[]))
        .unwrap()
        .get::<_, i32>(0);
    let out = backupctl(&config, &["archive"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("still blocked by other sessions")
            && err.contains(&format!(
                "pid {pid} (user postgres, application billing-app, idle in transaction"
            ))
            && err.contains("ShareLock on busy")
            && err.contains(&format!("SELECT pg_terminate_backend({pid})")),
        "{err}"
    );
    rt.block_on(app.batch_execute("COMMIT")).unwrap();
    assert_eq!(q(&c, "SELECT count(*) FROM busy"), "100");
}

#[test]
fn a_run_holding_the_lock_elsewhere_is_reported() {
    let (c, _t, config) = setup(
        "CREATE TABLE x (created_at date NOT NULL); INSERT INTO x VALUES ('2000-01-01');",
        "[[archive]]\ntable = \"x\"\nolder_than = \"1 year\"\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let other = lock_held_on_another_host(&rt, &c, "archive", 2);
    let out = backupctl(&config, &["archive"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("another archive run holds the PostgreSQL advisory lock")
            && err.contains("host db2, pid 4242"),
        "{err}"
    );
    assert_eq!(q(&c, "SELECT count(*) FROM x"), "1");
    drop(other);
    let out = backupctl(&config, &["archive"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(q(&c, "SELECT count(*) FROM x"), "0");
}

#[test]
fn a_batch_whose_insert_loses_rows_is_rolled_back_and_fails_the_run() {
    let (c, _t, config) = setup(
        "CREATE TABLE t (id int, created_at date NOT NULL);
         INSERT INTO t SELECT i, '2000-01-01' FROM generate_series(1, 10) i;
         CREATE SCHEMA archive;
         CREATE TABLE archive.t (LIKE t);
         -- A trigger that silently drops some inserted rows.
         CREATE FUNCTION archive.drop_even() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.id % 2 = 0 THEN RETURN NULL; END IF; RETURN NEW; END $$;
         CREATE TRIGGER drop_even BEFORE INSERT ON archive.t FOR EACH ROW EXECUTE FUNCTION archive.drop_even();",
        "[[archive]]\ntable = \"t\"\nolder_than = \"1 year\"\nbatch_size = 4\n",
    );
    let out = backupctl(&config, &["archive"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("deleted 4 rows but inserted 2 into \"archive\".\"t\"; rolled back"),
        "{}",
        stdout(&out)
    );
    assert_eq!(q(&c, "SELECT count(*) FROM t"), "10");
    assert_eq!(q(&c, "SELECT count(*) FROM archive.t"), "0");
    assert_eq!(
        q(&c, "SELECT status || ':' || rows_moved || ':' || (finished IS NOT NULL) || ':' || (error LIKE '%rolled back%') FROM archive.archive_log"),
        "failed:0:true:true"
    );
}

#[test]
fn old_partitions_move_whole_and_the_straddling_one_is_left_to_rows_mode() {
    let (c, _t, config) = setup(
        "CREATE TABLE usage_stats (period_start date NOT NULL, meter int) PARTITION BY RANGE (period_start);
         CREATE TABLE usage_stats_old PARTITION OF usage_stats FOR VALUES FROM ('2000-01-01') TO ('2001-01-01');
         CREATE TABLE usage_stats_mid PARTITION OF usage_stats FOR VALUES FROM ('2001-01-01') TO (current_date + 1);
         CREATE TABLE usage_stats_future PARTITION OF usage_stats FOR VALUES FROM (current_date + 1) TO (current_date + 100);
         INSERT INTO usage_stats SELECT '2000-06-01', i FROM generate_series(1, 100) i;
         INSERT INTO usage_stats SELECT '2010-06-01', i FROM generate_series(1, 30) i;
         INSERT INTO usage_stats SELECT current_date, i FROM generate_series(1, 20) i;
         INSERT INTO usage_stats SELECT current_date + 10, i FROM generate_series(1, 5) i;",
        // Rows first in the file: partition moves still run first.
        "[[archive]]\ntable = \"usage_stats\"\ncolumn = \"period_start\"\nolder_than = \"1 year\"\nmode = \"rows\"\n\
         [[archive]]\ntable = \"usage_stats\"\ncolumn = \"period_start\"\nolder_than = \"1 year\"\nmode = \"partitions\"\n",
    );
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    assert_eq!(r["tables"][0]["mode"], "partitions");
    assert_eq!(r["tables"][0]["partitions_moved"], 1);
    assert!(
        r["tables"][0]["partitions"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("left to the rows-mode"),
        "{r}"
    );
    assert_eq!(r["tables"][1]["mode"], "rows");
    assert_eq!(r["tables"][1]["rows"]["rows_moved"], 30);
    // Only the straddling partition was walked row by row.
    assert_eq!(r["tables"][1]["leaves"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(q(&c, "SELECT count(*) FROM archive.usage_stats_old"), "100");
    assert_eq!(q(&c, "SELECT count(*) FROM archive.usage_stats"), "30");
    assert_eq!(q(&c, "SELECT count(*) FROM usage_stats"), "25");
}

#[test]
fn odd_table_and_column_names_are_quoted_everywhere() {
    let (c, _t, config) = setup(
        r#"CREATE SCHEMA "Sales Data";
           CREATE TABLE "Sales Data"."Odd ""Tab""" ("Created At" timestamptz NOT NULL, "select" int)
             PARTITION BY RANGE ("Created At");
           CREATE TABLE "Sales Data"."Odd ""Tab""_old" PARTITION OF "Sales Data"."Odd ""Tab"""
             FOR VALUES FROM ('2000-01-01') TO ('2001-01-01');
           INSERT INTO "Sales Data"."Odd ""Tab""" VALUES ('2000-05-05', 1), ('2000-06-06', 2);"#,
        "[[partitions]]\ntable = '\"Sales Data\".\"Odd \"\"Tab\"\"\"'\npremake = 1\n\
         [[archive]]\ntable = '\"Sales Data\".\"Odd \"\"Tab\"\"\"'\ncolumn = \"Created At\"\nolder_than = \"1 year\"\narchive_schema = \"Old; DROP\"\n",
    );
    let out = backupctl(&config, &["partitions"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let names = q(
        &c,
        r#"SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_inherits JOIN pg_class ON oid = inhrelid WHERE inhparent = '"Sales Data"."Odd ""Tab"""'::regclass"#,
    );
    assert_eq!(names.matches("Odd \"Tab\"_").count(), 3, "{names}");
    let out = backupctl(&config, &["archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        q(
            &c,
            r#"SELECT string_agg("select"::text, ',' ORDER BY "select") FROM "Old; DROP"."Odd ""Tab""""#
        ),
        "1,2"
    );
    assert_eq!(
        q(&c, r#"SELECT count(*) FROM "Sales Data"."Odd ""Tab""""#),
        "0"
    );
}

/// The issue's schema: rows of consumption_record move into a table of the team's own.
const CONSUMPTION: &str = "
    CREATE TABLE consumption_record (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        meter_id int NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL,
        kwh numeric(12,3) NOT NULL CHECK (kwh >= 0),
        source text DEFAULT 'meter'
    );
    CREATE INDEX consumption_record_created_at_idx ON consumption_record (created_at);
    CREATE UNIQUE INDEX consumption_record_meter_time ON consumption_record (meter_id, created_at);
    INSERT INTO consumption_record (meter_id, created_at, kwh)
    SELECT i % 50, now() - interval '2 years' + i * interval '1 hour', i / 10.0 FROM generate_series(1, 3000) i;
    INSERT INTO consumption_record (meter_id, created_at, kwh)
    SELECT i % 50, now() - i * interval '1 hour', i FROM generate_series(1, 200) i;
    CREATE TABLE saved AS SELECT * FROM consumption_record;
    ANALYZE;";

#[test]
fn an_existing_archive_table_is_used_when_its_columns_match() {
    let (c, _t, config) = setup(
        &format!(
            "{CONSUMPTION}
             CREATE SCHEMA archive;
             CREATE TABLE archive.consumption_record_archive (LIKE consumption_record INCLUDING ALL);"
        ),
        "[[archive]]\ntable = \"consumption_record\"\nolder_than = \"6 months\"\narchive_table = \"archive.consumption_record_archive\"\n",
    );
    let old = "SELECT srow::text FROM saved srow WHERE created_at < now() - interval '6 months'";
    let n_old = q(&c, &format!("SELECT count(*) FROM ({old}) x"));
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    assert_eq!(
        r["tables"][0]["archive_table"],
        "archive.consumption_record_archive"
    );
    assert_eq!(
        r["tables"][0]["rows"]["rows_moved"].to_string(),
        n_old.as_str()
    );
    let arch = "SELECT arow::text FROM archive.consumption_record_archive arow";
    assert_eq!(except_all(&c, arch, old), 0);
    assert_eq!(except_all(&c, old, arch), 0);
    // No table under the source's name appeared beside it.
    assert_eq!(
        q(
            &c,
            "SELECT to_regclass('archive.consumption_record') IS NULL"
        ),
        "t"
    );
    assert_eq!(
        q(
            &c,
            "SELECT archive_table FROM archive.archive_log ORDER BY id DESC LIMIT 1"
        ),
        "archive.consumption_record_archive"
    );
}

#[test]
fn an_archive_table_whose_columns_differ_is_refused_naming_each_mismatch() {
    let (c, _t, config) = setup(
        &format!(
            "{CONSUMPTION}
             CREATE SCHEMA archive;
             CREATE TABLE archive.consumption_record_archive (
                 id bigint, meter_id bigint NOT NULL, created_at timestamptz NOT NULL,
                 kwh numeric(12,3), batch_no int NOT NULL);"
        ),
        "[[archive]]\ntable = \"public.consumption_record\"\nolder_than = \"6 months\"\narchive_table = \"archive.consumption_record_archive\"\n",
    );
    let before = q(&c, "SELECT count(*) FROM consumption_record");
    let out = backupctl(&config, &["archive"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    for want in [
        "REFUSED: archive table archive.consumption_record_archive does not match public.consumption_record",
        "column meter_id is integer in the source but bigint in the archive table",
        "column source (text) is missing; add it: ALTER TABLE \"archive\".\"consumption_record_archive\" ADD COLUMN \"source\" text",
        "column batch_no exists only in the archive table and is NOT NULL without a default",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(q(&c, "SELECT count(*) FROM consumption_record"), before);
    assert_eq!(
        q(
            &c,
            "SELECT count(*) FROM archive.consumption_record_archive"
        ),
        "0"
    );
}

#[test]
fn a_missing_archive_table_is_created_with_primary_key_indexes_and_defaults() {
    let (c, _t, config) = setup(
        CONSUMPTION,
        "[[archive]]\ntable = \"consumption_record\"\nolder_than = \"6 months\"\narchive_table = \"cold.consumption_record_old\"\n",
    );
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let arch = "'cold.consumption_record_old'::regclass";
    // The primary key, both indexes (one unique) and the CHECK constraint came along.
    let defs = q(
        &c,
        &format!(
            "SELECT string_agg(d, '; ' ORDER BY d) FROM (
                 SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '') d
                   FROM pg_index WHERE indrelid = {arch}) x"
        ),
    );
    assert_eq!(
        defs,
        "btree (created_at); btree (id); btree (meter_id, created_at)"
    );
    assert_eq!(
        q(
            &c,
            &format!(
                "SELECT string_agg(contype::text || ':' || pg_get_constraintdef(oid), '; ' ORDER BY contype::text)
                   FROM pg_constraint WHERE conrelid = {arch}"
            )
        ),
        "c:CHECK ((kwh >= (0)::numeric)); p:PRIMARY KEY (id)"
    );
    assert_eq!(
        q(
            &c,
            &format!("SELECT count(*) FROM pg_index WHERE indrelid = {arch} AND indisunique")
        ),
        "2"
    );
    // Defaults are kept; the identity is not (archived rows keep their ids).
    assert_eq!(
        q(
            &c,
            &format!(
                "SELECT string_agg(a.attname || '=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') || '/' || a.attidentity::text, ' ' ORDER BY a.attnum)
                   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = {arch} AND a.attnum > 0"
            )
        ),
        "id=-/ meter_id=0/ created_at=-/ kwh=-/ source='meter'::text/"
    );
    let old = "SELECT srow::text FROM saved srow WHERE created_at < now() - interval '6 months'";
    let moved = "SELECT arow::text FROM cold.consumption_record_old arow";
    assert_eq!(except_all(&c, moved, old), 0);
    assert_eq!(except_all(&c, old, moved), 0);
    assert!(
        json(&out)["tables"][0]["rows"]["rows_moved"]
            .as_i64()
            .unwrap()
            > 2000
    );
}

#[test]
fn align_day_moves_the_same_rows_as_current_date_minus_the_interval() {
    let (c, _t, config) = setup(
        "CREATE TABLE by_day (id int PRIMARY KEY, created_at timestamptz NOT NULL);
         INSERT INTO by_day SELECT i, now() - interval '6 months' + (i - 1000) * interval '7 minutes'
           FROM generate_series(1, 2000) i;
         CREATE TABLE by_month (id int PRIMARY KEY, created_at timestamp NOT NULL);
         INSERT INTO by_month SELECT i, localtimestamp - interval '6 months' + (i - 1000) * interval '1 hour'
           FROM generate_series(1, 2000) i;
         CREATE TABLE saved_day AS SELECT * FROM by_day;
         CREATE TABLE saved_month AS SELECT * FROM by_month;",
        "[[archive]]\ntable = \"by_day\"\nolder_than = \"6 months\"\nalign = \"day\"\ntimezone = \"Europe/Berlin\"\n\
         [[archive]]\ntable = \"by_month\"\nolder_than = \"6 months\"\nalign = \"month\"\n",
    );
    // What the design's SQL selects: CURRENT_DATE in the policy's zone for by_day, in
    // the server's zone (no timezone key) for by_month.
    let day_rows =
        "SELECT s::text FROM saved_day s WHERE created_at < CURRENT_DATE - interval '6 months'";
    let month_rows = "SELECT s::text FROM saved_month s
                      WHERE created_at < date_trunc('month', CURRENT_DATE - interval '6 months')";
    let berlin = |sql: &str| format!("SET TimeZone = 'Europe/Berlin'; {sql}");
    let expected_day = q(&c, &berlin(&format!("SELECT count(*) FROM ({day_rows}) x")));
    let n: i64 = expected_day.lines().last().unwrap().parse().unwrap();
    assert!(n > 0 && n < 2000, "{n}");
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    let t = &r["tables"][0];
    assert_eq!(t["table"], "by_day");
    assert_eq!(
        t["cutoff_rule"],
        "now() - 6 months, rounded down to the day in Europe/Berlin"
    );
    // Local midnight in Berlin: +01 or +02 depending on the season.
    let cutoff = t["cutoff"].as_str().unwrap();
    let berlin_cutoff = q(
        &c,
        &berlin(&format!(
            "SELECT '{cutoff}'::timestamptz = (CURRENT_DATE - interval '6 months')::timestamptz"
        )),
    );
    assert_eq!(berlin_cutoff.lines().last(), Some("t"), "{cutoff}");
    assert_eq!(t["rows"]["rows_moved"], n);
    let moved_day = "SELECT a::text FROM archive.by_day a";
    // The same rows as day_rows in a Berlin session, written for this session's zone.
    let day_rows_berlin = "SELECT s::text FROM saved_day s
                           WHERE created_at < (((now() AT TIME ZONE 'Europe/Berlin')::date - interval '6 months') AT TIME ZONE 'Europe/Berlin')";
    assert_eq!(except_all(&c, moved_day, day_rows_berlin), 0);
    assert_eq!(except_all(&c, day_rows_berlin, moved_day), 0);

    let t = &r["tables"][1];
    assert_eq!(t["table"], "by_month");
    let moved_month = "SELECT a::text FROM archive.by_month a";
    assert_eq!(except_all(&c, moved_month, month_rows), 0);
    assert_eq!(except_all(&c, month_rows, moved_month), 0);
    assert!(
        t["cutoff"].as_str().unwrap().ends_with("-01 00:00:00"),
        "{t}"
    );
    assert!(t["rows"]["rows_moved"].as_i64().unwrap() > 0);
}

const AUDIT_TABLE: &str = "
    CREATE SCHEMA audit_log;
    CREATE TABLE audit_log.system_log (
        id serial PRIMARY KEY, event text NOT NULL, detail text, rows bigint,
        cutoff timestamptz, run_id text, started timestamptz, finished timestamptz, status text,
        CONSTRAINT rows_recorded CHECK (rows IS NOT NULL));";

fn audit_policy(sql: &str) -> String {
    format!(
        "[[archive]]\ntable = \"consumption_record\"\nolder_than = \"6 months\"\n\
         archive_table = \"archive.consumption_record_archive\"\naudit_sql = '''\n{sql}\n'''\n"
    )
}

#[test]
fn the_audit_statement_records_each_run_in_the_same_transaction_as_archive_log() {
    let insert = "INSERT INTO audit_log.system_log (event, detail, rows, cutoff, run_id, started, finished, status)
VALUES ('archive', {table} || ' -> ' || {archive_table}, {rows_moved}, {cutoff}::timestamptz,
        {run_id}, {started}, {finished}, {status})";
    let (c, t, config) = setup(
        &format!("{CONSUMPTION}{AUDIT_TABLE}"),
        &audit_policy(insert),
    );
    let out = backupctl(&config, &["--json", "archive", "--dry-run"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let sql = json(&out)["tables"][0]["sql"].to_string();
    assert!(
        sql.contains("VALUES ('archive', $1::text || ' -> ' || $2::text, $3::bigint"),
        "{sql}"
    );
    assert_eq!(q(&c, "SELECT count(*) FROM audit_log.system_log"), "0");

    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let moved = json(&out)["tables"][0]["rows"]["rows_moved"]
        .as_i64()
        .unwrap();
    assert!(moved > 2000, "{moved}");
    // One audit row, carrying exactly what archive_log recorded.
    assert_eq!(
        q(
            &c,
            "SELECT count(*) || ' ' || bool_and(a.detail = 'public.consumption_record -> archive.consumption_record_archive'
                     AND a.rows = l.rows_moved AND a.cutoff = l.cutoff::timestamptz AND a.started = l.started
                     AND a.finished = l.finished AND a.status = 'finished' AND l.status = 'finished')
               FROM audit_log.system_log a JOIN archive.archive_log l ON l.run_id = a.run_id"
        ),
        "1 true"
    );
    assert_eq!(
        q(&c, "SELECT rows FROM audit_log.system_log"),
        moved.to_string()
    );

    // An audit statement that fails at the end rolls back the closing of the log row
    // with it: archive_log says failed and why, the audit table has no finished run.
    q(&c, "INSERT INTO consumption_record (meter_id, created_at, kwh) VALUES (1, now() - interval '3 years', 1)");
    let failing = t.write_config(
        "failing.toml",
        &format!(
            "{}\n{}",
            c.postgres_toml(),
            audit_policy(&insert.replace("{rows_moved}", "NULLIF({rows_moved}, 1)"))
        ),
    );
    let out = backupctl(&failing, &["archive"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("run audit_sql"), "{}", stdout(&out));
    assert!(stdout(&out).contains("rows_recorded"), "{}", stdout(&out));
    assert_eq!(
        q(
            &c,
            "SELECT status || ' ' || (error LIKE '%run audit_sql%rows_recorded%') FROM archive.archive_log ORDER BY id DESC LIMIT 1"
        ),
        "failed true"
    );
    assert_eq!(q(&c, "SELECT count(*) FROM audit_log.system_log"), "1");

    // Refused before anything moves: an unknown placeholder, a statement that does not
    // prepare.
    q(&c, "INSERT INTO consumption_record (meter_id, created_at, kwh) VALUES (2, now() - interval '3 years', 1)");
    for (sql, want) in [
        (
            "INSERT INTO audit_log.system_log (event) VALUES ({tabel})",
            "unknown placeholder {tabel}",
        ),
        (
            "INSERT INTO audit_log.no_such_table (event) VALUES ({table})",
            "does not prepare in database postgres: relation \"audit_log.no_such_table\" does not exist",
        ),
    ] {
        let bad = t.write_config(
            "bad.toml",
            &format!("{}\n{}", c.postgres_toml(), audit_policy(sql)),
        );
        let out = backupctl(&bad, &["archive"]);
        assert_eq!(out.status.code(), Some(2), "{}\n{}", stdout(&out), stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("archive[0].audit_sql"), "{text}");
        assert!(text.contains(want), "{text}");
        assert_eq!(
            q(&c, "SELECT count(*) FROM consumption_record WHERE created_at < now() - interval '2 years 11 months'"),
            "1"
        );
    }
}

#[test]
fn dry_run_exact_counts_and_the_estimate_says_what_it_is() {
    // Autovacuum off: the table stays unanalysed, as in a freshly loaded database.
    let (c, _t, config) = cluster_with_config(
        ClusterOptions {
            conf: vec!["autovacuum = off".into()],
            ..Default::default()
        },
        "CREATE TABLE consumption_record (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, kwh numeric);
         INSERT INTO consumption_record SELECT i, now() - interval '1 year' + i * interval '1 minute', i
           FROM generate_series(1, 5209) i;
         INSERT INTO consumption_record SELECT 100000 + i, now() - i * interval '1 minute', i
           FROM generate_series(1, 2000) i;
         CREATE TABLE usage (k date NOT NULL, v int) PARTITION BY RANGE (k);
         CREATE TABLE usage_2020_01 PARTITION OF usage FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE usage_recent PARTITION OF usage FOR VALUES FROM ('2020-02-01') TO ('2100-01-01');
         INSERT INTO usage SELECT '2020-01-01'::date + i % 31, i FROM generate_series(1, 300) i;
         INSERT INTO usage SELECT '2020-02-01'::date + i % 20, i FROM generate_series(1, 40) i;
         INSERT INTO usage SELECT current_date, i FROM generate_series(1, 10) i;",
        "[[archive]]\ntable = \"consumption_record\"\nolder_than = \"6 months\"\n\
         [[archive]]\ntable = \"usage\"\ncolumn = \"k\"\nolder_than = \"1 year\"\nmode = \"partitions\"\n",
    );
    let old: i64 = q(
        &c,
        "SELECT count(*) FROM consumption_record WHERE created_at < now() - interval '6 months'",
    )
    .parse()
    .unwrap();
    assert!(old > 4000, "{old}");

    // The default: an estimate that says so, and that its table was never analysed.
    let out = backupctl(&config, &["archive", "--dry-run"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("(planner estimate, not a count; never analysed: public.consumption_record, so it may be far off — run ANALYZE; --exact counts)"),
        "{text}"
    );

    // --exact: the count, per leaf and in total, and for partitions mode.
    let out = backupctl(&config, &["--json", "archive", "--dry-run", "--exact"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    // Partitions-mode policies are planned first.
    let rows = &r["tables"][1];
    assert_eq!(rows["table"], "consumption_record");
    assert_eq!(rows["counted_rows"], old);
    assert_eq!(rows["leaves"][0]["counted_rows"], old);
    let parts = &r["tables"][0];
    assert_eq!(parts["counted_rows"], 300);
    assert_eq!(parts["partitions"][0]["counted_rows"], 300);
    assert_eq!(parts["partitions"][1]["counted_rows"], 40);
    let out = backupctl(&config, &["archive", "--dry-run", "--exact"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("rows to move: {old} (counted)")),
        "{text}"
    );

    // After ANALYZE the estimate names when the statistics were taken.
    q(&c, "ANALYZE");
    let today = q(&c, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')");
    let out = backupctl(&config, &["archive", "--dry-run"]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "(planner estimate, not a count; statistics from ANALYZE on {today}T"
        )),
        "{text}"
    );
    assert!(!text.contains("never analysed"), "{text}");

    // --exact belongs to --dry-run.
    let out = backupctl(&config, &["archive", "--exact"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--dry-run"), "{}", stderr(&out));
    assert_eq!(
        q(&c, "SELECT count(*) FROM consumption_record"),
        (5209 + 2000).to_string()
    );

    // The real run moves exactly what was counted.
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(json(&out)["tables"][1]["rows"]["rows_moved"], old);
}
