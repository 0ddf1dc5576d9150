//! Cold storage of archived data (`[[archive]] export_after`) against real PostgreSQL 15,
//! on both backends: months of an archive table and whole archived partitions are
//! exported to the repository, read back, dropped from the database, listed, and loaded
//! back with `restore-export` into a table of the operator's choice with identical rows
//! (md5 of the rows ordered by key); a damaged export restores nothing.

mod common;

use std::path::PathBuf;

use common::{backupctl, json, stderr, stdout, Backend, Cluster, ClusterOptions, TestRepo};

fn setup(backend: Backend, sql: &str, policies: &str) -> (Cluster, TestRepo, PathBuf) {
    let c = Cluster::new(ClusterOptions::default());
    c.psql("postgres", sql);
    let t = TestRepo::new(backend);
    let config = t.write_config("backup.toml", &format!("{}\n{policies}", c.postgres_toml()));
    (c, t, config)
}

fn q(c: &Cluster, sql: &str) -> String {
    c.psql("postgres", sql)
}

/// md5 of the rows of `select` (its columns), ordered by `key`.
fn md5_rows(c: &Cluster, select: &str, key: &str) -> String {
    q(
        c,
        &format!("SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {key}), '')) FROM ({select}) t"),
    )
}

/// The schema: consumption_record rows older than six months move into the
/// team's archive table; after 24 months they go to the repository.
const CONSUMPTION: &str = "
    CREATE TABLE consumption_record (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id int NOT NULL,
        created_at timestamptz NOT NULL,
        kwh numeric(12,3) NOT NULL,
        note text,
        doubled numeric GENERATED ALWAYS AS (kwh * 2) STORED
    );
    CREATE INDEX ON consumption_record (created_at);
    -- ~40 months of rows, one every 67 minutes.
    INSERT INTO consumption_record (account_id, created_at, kwh, note)
    SELECT i % 50, date_trunc('month', now()) - interval '40 months' + i * interval '67 minutes', i / 7.0,
           CASE WHEN i % 9 = 0 THEN NULL ELSE 'n' || i END
      FROM generate_series(1, 26000) i;
    CREATE TABLE saved AS SELECT * FROM consumption_record;";

const CONSUMPTION_POLICY: &str = "[[archive]]
table = \"public.consumption_record\"
column = \"created_at\"
older_than = \"6 months\"
align = \"day\"
timezone = \"UTC\"
archive_table = \"archive.consumption_record_archive\"
export_after = \"24 months\"
";

/// The first instant not exported: the 1st of the month 24 months ago, UTC.
const EXPORT_CUTOFF: &str =
    "(date_trunc('month', (now() AT TIME ZONE 'UTC') - interval '24 months') AT TIME ZONE 'UTC')";

const COLS: &str = "id, account_id, created_at, kwh, note";

fn rows_mode_months_are_exported_dropped_and_restored(backend: Backend) {
    let (c, _t, config) = setup(backend, CONSUMPTION, CONSUMPTION_POLICY);
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    let items = r["tables"][0]["exports"]["items"]
        .as_array()
        .unwrap()
        .clone();
    let expected_months: i64 = q(
        &c,
        &format!("SELECT count(DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')) FROM saved WHERE created_at < {EXPORT_CUTOFF}"),
    )
    .parse()
    .unwrap();
    assert!(expected_months >= 15, "{expected_months}");
    assert_eq!(items.len() as i64, expected_months, "{items:#?}");
    assert!(
        items.iter().all(|i| i["status"] == "exported"),
        "{items:#?}"
    );
    let exported: i64 = items.iter().map(|i| i["rows"].as_i64().unwrap()).sum();
    let old: i64 = q(
        &c,
        &format!("SELECT count(*) FROM saved WHERE created_at < {EXPORT_CUTOFF}"),
    )
    .parse()
    .unwrap();
    assert_eq!(exported, old);
    // Gone from the database (and no staging table left); the rest is where it was.
    assert_eq!(
        q(&c, &format!("SELECT count(*) FROM archive.consumption_record_archive WHERE created_at < {EXPORT_CUTOFF}")),
        "0"
    );
    assert_eq!(
        q(&c, "SELECT count(*) FROM pg_class WHERE relname ~ '^consumption_record_archive_\\d{4}_\\d{2}$'"),
        "0"
    );
    let kept = format!(
        "SELECT {COLS} FROM archive.consumption_record_archive UNION ALL SELECT {COLS} FROM consumption_record"
    );
    assert_eq!(
        md5_rows(&c, &kept, "id"),
        md5_rows(
            &c,
            &format!("SELECT {COLS} FROM saved WHERE created_at >= {EXPORT_CUTOFF}"),
            "id"
        )
    );

    // `list` shows every export.
    let out = backupctl(&config, &["--json", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = json(&out)["exports"].as_array().unwrap().clone();
    assert_eq!(listed.len(), items.len());
    assert!(listed
        .iter()
        .all(|e| e["relation"] == "archive.consumption_record_archive"));
    let out = backupctl(&config, &["list"]);
    assert!(
        stdout(&out).contains("exports of archived data"),
        "{}",
        stdout(&out)
    );

    // One month back into a new table in a new schema: the same rows, with a primary key.
    let first = &items[0];
    let id = first["id"].as_str().unwrap();
    let month = first["month"].as_str().unwrap();
    let month_rows = format!(
        "SELECT {COLS} FROM saved WHERE to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM') = '{month}'"
    );
    let out = backupctl(
        &config,
        &[
            "restore-export",
            id,
            "--into",
            "restored.month_back",
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("CREATE TABLE"), "{}", stdout(&out));
    assert_eq!(
        q(&c, "SELECT to_regclass('restored.month_back') IS NULL"),
        "t"
    );
    let out = backupctl(
        &config,
        &["restore-export", id, "--into", "restored.month_back"],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("(created)"), "{}", stdout(&out));
    assert_eq!(
        md5_rows(&c, &format!("SELECT {COLS} FROM restored.month_back"), "id"),
        md5_rows(&c, &month_rows, "id")
    );
    assert_eq!(
        q(&c, "SELECT count(*) FROM pg_index WHERE indrelid = 'restored.month_back'::regclass AND indisprimary"),
        "1"
    );

    // A table without the export's columns is refused, naming them; nothing changes.
    q(&c, "CREATE TABLE wrong (id bigint, kwh text)");
    let out = backupctl(&config, &["restore-export", id, "--into", "wrong"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no column \"account_id\"") && err.contains("column \"kwh\" is text"),
        "{err}"
    );
    assert_eq!(q(&c, "SELECT count(*) FROM wrong"), "0");
    let out = backupctl(
        &config,
        &["restore-export", "20990101T000000Z-nothing", "--into", "x"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not in"), "{}", stderr(&out));

    // Back into the archive table it came from (generated column recomputed)...
    let out = backupctl(
        &config,
        &[
            "restore-export",
            id,
            "--into",
            "archive.consumption_record_archive",
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        q(&c, &format!("SELECT count(*) FROM archive.consumption_record_archive WHERE to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM') = '{month}' AND doubled = kwh * 2")),
        first["rows"].as_i64().unwrap().to_string()
    );
    // ...where the next run finds it already exported: no second copy, dropped again.
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let again = json(&out)["tables"][0]["exports"]["items"].clone();
    assert_eq!(again.as_array().unwrap().len(), 1, "{again:#}");
    assert_eq!(again[0]["status"], "already_exported");
    assert_eq!(again[0]["id"], id);
    assert_eq!(
        q(&c, &format!("SELECT count(*) FROM archive.consumption_record_archive WHERE created_at < {EXPORT_CUTOFF}")),
        "0"
    );

    // Retention has no rule for exports: it keeps every one.
    let out = backupctl(&config, &["retention"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = backupctl(&config, &["--json", "list"]);
    assert_eq!(json(&out)["exports"].as_array().unwrap().len(), items.len());
    let out = backupctl(&config, &["--json", "info"]);
    assert_eq!(json(&out)["exports"]["count"], items.len());
}

#[test]
fn rows_mode_months_are_exported_dropped_and_restored_local() {
    rows_mode_months_are_exported_dropped_and_restored(Backend::Local);
}

#[test]
fn rows_mode_months_are_exported_dropped_and_restored_s3() {
    rows_mode_months_are_exported_dropped_and_restored(Backend::S3);
}

#[test]
fn archived_partitions_are_exported_whole_and_restore_with_identical_rows() {
    let (c, t, config) = setup(
        Backend::Local,
        "CREATE TABLE usage_stats (period_start date NOT NULL, meter int NOT NULL, kwh numeric, PRIMARY KEY (period_start, meter)) PARTITION BY RANGE (period_start);
         CREATE TABLE usage_stats_2020_01 PARTITION OF usage_stats FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE usage_stats_2020_02 PARTITION OF usage_stats FOR VALUES FROM ('2020-02-01') TO ('2020-03-01');
         CREATE TABLE usage_stats_recent PARTITION OF usage_stats FOR VALUES FROM ('2020-03-01') TO (MAXVALUE);
         INSERT INTO usage_stats SELECT '2020-01-01'::date + i % 31, i, i / 10.0 FROM generate_series(1, 3100) i;
         INSERT INTO usage_stats SELECT '2020-02-01'::date + i % 29, i, i / 10.0 FROM generate_series(1, 2900) i;
         INSERT INTO usage_stats SELECT current_date - i % 100, i, i FROM generate_series(1, 1000) i;
         CREATE TABLE saved AS SELECT * FROM usage_stats;",
        "[[archive]]\ntable = \"public.usage_stats\"\ncolumn = \"period_start\"\nolder_than = \"12 months\"\nmode = \"partitions\"\narchive_schema = \"archive\"\nexport_after = \"24 months\"\n",
    );
    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let r = json(&out);
    assert_eq!(r["tables"][0]["partitions_moved"], 2);
    let items = r["tables"][0]["exports"]["items"]
        .as_array()
        .unwrap()
        .clone();
    let got: Vec<(String, i64, String)> = items
        .iter()
        .map(|i| {
            (
                i["relation"].as_str().unwrap().to_string(),
                i["rows"].as_i64().unwrap(),
                i["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "archive.usage_stats_2020_01".into(),
                3100,
                "exported".into()
            ),
            (
                "archive.usage_stats_2020_02".into(),
                2900,
                "exported".into()
            ),
        ]
    );
    // Moved out of the table, exported, then dropped.
    assert_eq!(
        q(
            &c,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'usage_stats_2020_0%'"
        ),
        "0"
    );
    assert_eq!(q(&c, "SELECT count(*) FROM usage_stats"), "1000");

    let id = items[1]["id"].as_str().unwrap();
    let out = backupctl(
        &config,
        &["restore-export", id, "--into", "public.february_2020"],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        md5_rows(&c, "SELECT * FROM february_2020", "period_start, meter"),
        md5_rows(
            &c,
            "SELECT * FROM saved WHERE period_start >= '2020-02-01' AND period_start < '2020-03-01'",
            "period_start, meter"
        )
    );

    // One flipped byte in the stored export: refused naming it, nothing created.
    let export_dir = t
        .dir
        .path()
        .join("repo/main/exports")
        .join(items[0]["id"].as_str().unwrap());
    let object = std::fs::read_dir(&export_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data.dump")
        })
        .unwrap();
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&object, bytes).unwrap();
    let out = backupctl(
        &config,
        &[
            "restore-export",
            items[0]["id"].as_str().unwrap(),
            "--into",
            "public.january_2020",
        ],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("failed its checksum") && stderr(&out).contains("data.dump"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        q(&c, "SELECT to_regclass('public.january_2020') IS NULL"),
        "t"
    );

    // Only a rule for exports makes retention delete them; a dry run says which.
    let ruled = config.with_file_name("ruled.toml");
    std::fs::write(
        &ruled,
        format!(
            "{}\n[retention.exports]\nkeep_within = \"0s\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    common::chown_to_pg(&ruled);
    let out = backupctl(&ruled, &["--json", "retention", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["exports"]["delete"].as_array().unwrap().len(), 2);
    let out = backupctl(&config, &["--json", "list"]);
    assert_eq!(json(&out)["exports"].as_array().unwrap().len(), 2);
    let out = backupctl(&ruled, &["retention"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let out = backupctl(&config, &["--json", "list"]);
    assert_eq!(json(&out)["exports"].as_array().unwrap().len(), 0);
    // Nothing of them is left (the local backend also removes emptied directories).
    let exports_dir = t.dir.path().join("repo/main/exports");
    let left: Vec<PathBuf> = match std::fs::read_dir(&exports_dir) {
        Err(_) => vec![],
        Ok(dirs) => dirs
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
            .map(|f| f.unwrap().path())
            .collect(),
    };
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn dry_run_lists_what_would_be_exported_and_changes_nothing() {
    let (c, _t, config) = setup(Backend::Local, CONSUMPTION, CONSUMPTION_POLICY);
    // Archive first (no export yet: a long export_after), then dry-run the real policy.
    let first = CONSUMPTION_POLICY.replace("export_after = \"24 months\"", "");
    let tmp = config.with_file_name("first.toml");
    std::fs::write(
        &tmp,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(CONSUMPTION_POLICY, &first),
    )
    .unwrap();
    common::chown_to_pg(&tmp);
    let out = backupctl(&tmp, &["archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let before = q(
        &c,
        "SELECT count(*) FROM archive.consumption_record_archive",
    );
    let out = backupctl(&config, &["--json", "archive", "--dry-run"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let items = json(&out)["tables"][0]["exports"]["items"].clone();
    assert!(
        items.as_array().unwrap().len() >= 15
            && items
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["status"] == "would_export"),
        "{items:#}"
    );
    assert_eq!(
        q(
            &c,
            "SELECT count(*) FROM archive.consumption_record_archive"
        ),
        before
    );
    let out = backupctl(&config, &["--json", "list"]);
    assert_eq!(json(&out)["exports"].as_array().unwrap().len(), 0);
    // An export_after shorter than older_than is refused by name.
    let short = std::fs::read_to_string(&config).unwrap().replace(
        "export_after = \"24 months\"",
        "export_after = \"3 months\"",
    );
    std::fs::write(&tmp, short).unwrap();
    let out = backupctl(&tmp, &["archive", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("archive[0].export_after"),
        "{}",
        stdout(&out)
    );
}

/// The read-back is what allows the drop: an export whose stored bytes do not read back
/// whole (here every read of the repository ends after 2 KiB, through the
/// fault-injecting repository) fails the run naming the export, and the archived
/// partition stays in the database with every row; the next run exports and drops it.
#[cfg(feature = "failpoints")]
#[test]
fn an_export_that_does_not_read_back_is_not_dropped() {
    let (c, _t, config) = setup(
        Backend::Local,
        "CREATE TABLE usage_stats (period_start date NOT NULL, meter int NOT NULL, kwh numeric, PRIMARY KEY (period_start, meter)) PARTITION BY RANGE (period_start);
         CREATE TABLE usage_stats_2020_01 PARTITION OF usage_stats FOR VALUES FROM ('2020-01-01') TO ('2020-02-01');
         CREATE TABLE usage_stats_recent PARTITION OF usage_stats FOR VALUES FROM ('2020-02-01') TO (MAXVALUE);
         INSERT INTO usage_stats SELECT '2020-01-01'::date + i % 31, i, i / 10.0 FROM generate_series(1, 3100) i;
         INSERT INTO usage_stats SELECT current_date - i % 100, i, i FROM generate_series(1, 1000) i;",
        "[[archive]]\ntable = \"public.usage_stats\"\ncolumn = \"period_start\"\nolder_than = \"12 months\"\nmode = \"partitions\"\narchive_schema = \"archive\"\nexport_after = \"24 months\"\n",
    );
    let before = md5_rows(
        &c,
        "SELECT * FROM usage_stats_2020_01",
        "period_start, meter",
    );
    let out = common::backupctl_env(
        &config,
        &["archive"],
        &[("BACKUPCTL_REPO_FAULTS", "truncate:get:1+:2048:eof".into())],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("reading it back") && err.contains("nothing was dropped"),
        "{err}"
    );
    assert_eq!(
        md5_rows(
            &c,
            "SELECT * FROM archive.usage_stats_2020_01",
            "period_start, meter"
        ),
        before,
        "the archived partition keeps every row"
    );

    let out = backupctl(&config, &["--json", "archive"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        q(
            &c,
            "SELECT count(*) FROM pg_class WHERE relname = 'usage_stats_2020_01'"
        ),
        "0"
    );
}
