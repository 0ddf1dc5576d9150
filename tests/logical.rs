//! Logical backups, logical restore and the pre-migration hook, against real PostgreSQL
//! 15 clusters and both repository backends.
//!
//! Mid-dump situations are made deterministic by stopping the backupctl process
//! (SIGSTOP) once the server shows pg_dump's `COPY` of a large table: pg_dump then
//! blocks on its full output pipe, so "during the dump" lasts exactly as long as the
//! test needs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use backupctl::manifest::{Manifest, TableRows};
use backupctl::repo::RepositoryExt;
use common::{
    backupctl, signal, spawn_backupctl, stderr, stdout, walk, Backend, Cluster, ClusterOptions,
    TestRepo,
};

// ---------------------------------------------------------------------------------------
// Helpers

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn manifest(t: &TestRepo, id: &str) -> Option<Manifest> {
    rt().block_on(async {
        let repo = t.open().await;
        Manifest::load(repo.as_ref(), id).await.unwrap()
    })
}

/// Every object key under `backups/`.
fn backup_objects(t: &TestRepo) -> Vec<String> {
    rt().block_on(async {
        let repo = t.open().await;
        repo.list_keys("backups/").await.unwrap()
    })
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\nstdout: {}\nstderr: {}",
            stdout(out),
            stderr(out)
        )
    })
}

fn ok(what: &str, out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Start backupctl in the background (as the postgres user when root).
/// Wait until pg_dump's backend is copying `table` (a safety deadline, not a timing
/// assertion: the condition is what the test waits for).
fn wait_for_copy(c: &Cluster, table: &str, child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pid = c.psql(
            "postgres",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY {table} %' AND state = 'active'"
            ),
        );
        if let Ok(pid) = pid.trim().parse() {
            return pid;
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("backupctl ended ({st}) before the dump reached {table}");
        }
        assert!(Instant::now() < deadline, "pg_dump never copied {table}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn count(c: &Cluster, db: &str, t: &TableRows) -> i64 {
    c.psql(
        db,
        &format!(
            "SELECT count(*) FROM ONLY \"{}\".\"{}\"",
            t.schema.replace('"', "\"\""),
            t.table.replace('"', "\"\"")
        ),
    )
    .parse()
    .unwrap()
}

/// A checksum over a table's contents, independent of physical order.
fn content_md5(c: &Cluster, db: &str, table: &str) -> String {
    c.psql(
        db,
        &format!("SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {table} x"),
    )
}

const WEIRD_DB: &str = "weird db=x'\"";

/// A psql `-d` argument naming exactly `db` (a name with `=` would be read as a
/// connection string).
fn dbarg(db: &str) -> String {
    backupctl::pg::sql::conninfo_dbname(db)
}

/// Several schemas, a partitioned table, a large object, a role owning things, a
/// serial/PK/FK, an index, a materialized view; plus a second database with a hostile
/// name.
fn populate(c: &Cluster) {
    c.psql("postgres", "CREATE ROLE app_owner LOGIN");
    c.psql("postgres", "CREATE DATABASE app OWNER app_owner");
    c.psql(
        "postgres",
        &format!("CREATE DATABASE \"{}\"", WEIRD_DB.replace('"', "\"\"")),
    );
    c.psql(
        "app",
        "CREATE SCHEMA sales AUTHORIZATION app_owner;
         CREATE SCHEMA \"Odd Schema\";
         CREATE TABLE public.customers (id serial PRIMARY KEY, name text NOT NULL, born date);
         CREATE INDEX ON public.customers (name);
         INSERT INTO public.customers (name, born)
           SELECT 'customer ' || g, date '1970-01-01' + g FROM generate_series(1, 3000) g;
         CREATE TABLE sales.orders (id bigserial PRIMARY KEY,
           customer int REFERENCES public.customers (id), amount numeric(10,2),
           at timestamptz NOT NULL);
         ALTER TABLE sales.orders OWNER TO app_owner;
         INSERT INTO sales.orders (customer, amount, at)
           SELECT 1 + g % 3000, g * 1.25, timestamptz '2024-01-01 00:00+00' + g * interval '1 hour'
           FROM generate_series(1, 5000) g;
         CREATE TABLE sales.events (id int, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at);
         CREATE TABLE sales.events_2024 PARTITION OF sales.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE sales.events_2025 PARTITION OF sales.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO sales.events SELECT g, date '2024-06-01' + (g % 400), jsonb_build_object('n', g)
           FROM generate_series(1, 4000) g;
         CREATE TABLE \"Odd Schema\".\"Mixed Case\" (k text PRIMARY KEY, v bytea);
         INSERT INTO \"Odd Schema\".\"Mixed Case\" SELECT 'key ' || g, sha256(g::text::bytea) FROM generate_series(1, 700) g;
         CREATE TABLE public.empty_one (x int);
         CREATE MATERIALIZED VIEW public.order_totals AS
           SELECT customer, sum(amount) AS total FROM sales.orders GROUP BY customer;
         SELECT lo_from_bytea(424242, convert_to(repeat('large object payload ', 5000), 'UTF8'));",
    );
    c.psql(
        &dbarg(WEIRD_DB),
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 123);",
    );
}

// ---------------------------------------------------------------------------------------
// Backup, full restore, table restore

fn backup_and_restore(backend: Backend) {
    let t = TestRepo::new(backend);
    // A slow WAL writer: WAL that nothing flushed stays unflushed (see the restore point).
    let src = Cluster::new(ClusterOptions {
        conf: vec!["wal_writer_delay = 10s".into()],
        ..Default::default()
    });
    populate(&src);
    let config = t.write_config("backup.toml", &src.postgres_toml());

    let out = ok(
        "backup",
        backupctl(
            &config,
            &[
                "--json",
                "backup",
                "--kind",
                "logical",
                "--label",
                "pre-migration",
                "--no-verify",
            ],
        ),
    );
    let report = json(&out);
    assert_eq!(report["ok"], true);
    let id = report["backups"][0]["id"].as_str().unwrap().to_string();
    assert!(id.ends_with("-logical"), "{id}");
    assert_eq!(report["backups"][0]["kind"], "logical");
    let cmds = report["backups"][0]["restore_commands"].to_string();
    assert!(cmds.contains(&format!("restore --logical {id}")), "{cmds}");

    let m = manifest(&t, &id).expect("manifest written");
    assert_eq!(m.label.as_deref(), Some("pre-migration"));
    let major = src.psql(
        "postgres",
        "SELECT current_setting('server_version_num')::int / 10000",
    );
    assert!(
        m.pg_version.starts_with(&format!("{major}.")),
        "{} (server {major})",
        m.pg_version
    );
    let rp = m.restore_point.as_ref().expect("restore point recorded");
    assert_eq!(rp.name, id);
    let l = m.logical.as_ref().unwrap();
    let names: Vec<&str> = l.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["app", "postgres", WEIRD_DB]);
    assert!(!l.globals_include_passwords);
    let app = l.database("app").unwrap();
    assert!(app.size_bytes > 0);
    assert_eq!(app.large_objects, 1);
    assert_eq!(app.toc_counts["TABLE DATA"], app.tables.len() as u64);
    assert!(app.toc_counts["FK CONSTRAINT"] >= 1 && app.toc_counts["INDEX"] >= 1);
    // Leaves carry rows; the partitioned parent and the matview do not.
    let tables: Vec<String> = app
        .tables
        .iter()
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    assert_eq!(
        tables,
        vec![
            "Odd Schema.Mixed Case",
            "public.customers",
            "public.empty_one",
            "sales.events_2024",
            "sales.events_2025",
            "sales.orders",
        ]
    );
    // The source is idle: its counts now are the counts at the snapshot.
    for table in &app.tables {
        assert_eq!(count(&src, "app", table), table.rows, "{}", table.table);
    }
    assert_eq!(app.total_rows(), 700 + 3000 + 4000 + 5000);
    let leaf = app
        .tables
        .iter()
        .find(|t| t.table == "events_2025")
        .unwrap();
    assert_eq!(leaf.partition_of.as_deref(), Some("sales.events"));
    // The restore point is a real WAL record named after the backup. This cluster does
    // not archive, so nothing switched WAL after it, and neither the record nor a commit
    // that wrote no WAL of its own (`SELECT txid_current()`) flushes it: the WAL writer
    // does, up to `wal_writer_delay` later, and reading the live pg_wal before then ends
    // before the record (the flaky "invalid record length … wanted 24, got 0"). A
    // checkpoint flushes the WAL; the WAL writer is slowed down above so that a test that
    // forgot it would fail every time.
    src.psql("postgres", "CHECKPOINT");
    assert_eq!(
        src.psql(
            "postgres",
            &format!("SELECT pg_current_wal_flush_lsn() >= '{}'::pg_lsn", rp.lsn)
        ),
        "t"
    );
    let segment = src.psql("postgres", &format!("SELECT pg_walfile_name('{}')", rp.lsn));
    // pg_waldump reads only its own major version's WAL (the version matrix runs
    // PostgreSQL 16 and 17 servers with 18's client programs).
    let waldump_major = Command::new(common::pg_bin("pg_waldump"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if !waldump_major.contains(&format!(" {major}.")) {
        eprintln!(
            "skipped the WAL record check: {waldump_major} cannot read PostgreSQL {major} WAL"
        );
    } else {
        let waldump = Command::new(common::pg_bin("pg_waldump"))
            .arg("-p")
            .arg(src.pgdata.join("pg_wal"))
            .arg(&segment)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&waldump.stdout);
        assert!(
            text.contains(&format!("RESTORE_POINT {id}")),
            "no restore point record {id} in {segment}: {}",
            String::from_utf8_lossy(&waldump.stderr)
        );
    }

    // Restore everything into a fresh cluster: roles first, then each database.
    let dst = Cluster::new(ClusterOptions::default());
    let dst_config = t.write_config("restore.toml", &dst.postgres_toml());
    let out = ok(
        "restore globals",
        backupctl(&dst_config, &["restore", "--logical", &id, "--globals"]),
    );
    assert!(stdout(&out).contains("created"), "{}", stdout(&out));
    assert_eq!(
        dst.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'app_owner'"
        ),
        "1"
    );
    for (db, target) in [("app", "app_copy"), (WEIRD_DB, "weird copy")] {
        ok(
            "restore database",
            backupctl(
                &dst_config,
                &[
                    "restore",
                    "--logical",
                    &id,
                    "--database",
                    db,
                    "--dbname",
                    target,
                    "--create",
                ],
            ),
        );
        for table in &l.database(db).unwrap().tables {
            assert_eq!(
                count(&dst, &dbarg(target), table),
                table.rows,
                "{db}: {}.{}",
                table.schema,
                table.table
            );
        }
    }
    for table in [
        "public.customers",
        "sales.orders",
        "sales.events",
        "\"Odd Schema\".\"Mixed Case\"",
    ] {
        assert_eq!(
            content_md5(&src, "app", table),
            content_md5(&dst, "app_copy", table),
            "{table}"
        );
    }
    assert_eq!(
        src.psql("app", "SELECT md5(lo_get(424242))"),
        dst.psql("app_copy", "SELECT md5(lo_get(424242))")
    );
    assert_eq!(
        dst.psql(
            "app_copy",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"
        ),
        "app_owner"
    );

    // An existing non-empty database is refused without --clean (exit 2).
    let out = backupctl(
        &dst_config,
        &[
            "restore",
            "--logical",
            &id,
            "--database",
            "app",
            "--dbname",
            "app_copy",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty") && stderr(&out).contains("--clean"));

    // --table: one table only, into a new database.
    let out = ok(
        "table restore",
        backupctl(
            &dst_config,
            &[
                "restore",
                "--logical",
                &id,
                "--database",
                "app",
                "--dbname",
                "one_table",
                "--create",
                "--table",
                "public.customers",
            ],
        ),
    );
    assert!(stdout(&out).contains("3000 rows"), "{}", stdout(&out));
    assert_eq!(
        dst.psql(
            "one_table",
            "SELECT string_agg(n.nspname || '.' || c.relname, ',') FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ),
        "public.customers"
    );
    assert_eq!(
        content_md5(&src, "app", "public.customers"),
        content_md5(&dst, "one_table", "public.customers")
    );
    // Its primary key came along.
    assert_eq!(
        dst.psql(
            "one_table",
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.customers'::regclass AND contype = 'p'"
        ),
        "1"
    );

    // A partitioned table brings its partitions; into an existing empty database.
    dst.psql("postgres", "CREATE DATABASE parts");
    dst.psql("parts", "CREATE SCHEMA sales");
    ok(
        "partitioned table restore",
        backupctl(
            &dst_config,
            &[
                "restore",
                "--logical",
                &id,
                "--database",
                "app",
                "--dbname",
                "parts",
                "--table",
                "sales.events",
            ],
        ),
    );
    assert_eq!(
        content_md5(&src, "app", "sales.events"),
        content_md5(&dst, "parts", "sales.events")
    );

    // Restoring that table again is refused without --clean, replaced with it.
    let again = [
        "restore",
        "--logical",
        &id,
        "--database",
        "app",
        "--dbname",
        "one_table",
        "--table",
        "public.customers",
    ];
    let out = backupctl(&dst_config, &again);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    dst.psql("one_table", "DELETE FROM public.customers WHERE id > 10");
    let mut with_clean = again.to_vec();
    with_clean.push("--clean");
    ok("table restore --clean", backupctl(&dst_config, &with_clean));
    assert_eq!(
        dst.psql("one_table", "SELECT count(*) FROM public.customers"),
        "3000"
    );

    // Parallel restore from a downloaded, verified file.
    ok(
        "restore --jobs",
        backupctl(
            &dst_config,
            &[
                "restore",
                "--logical",
                &id,
                "--database",
                "app",
                "--dbname",
                "app_parallel",
                "--create",
                "--jobs",
                "2",
            ],
        ),
    );
    assert_eq!(
        content_md5(&src, "app", "sales.orders"),
        content_md5(&dst, "app_parallel", "sales.orders")
    );
}

#[test]
fn backup_and_restore_local() {
    backup_and_restore(Backend::Local);
}

#[test]
fn backup_and_restore_s3() {
    backup_and_restore(Backend::S3);
}

// ---------------------------------------------------------------------------------------
// Concurrency: rows committed during the dump are neither counted nor dumped

/// ~45 MB: far more than every pipe and buffer between pg_dump and the repository.
fn make_big(c: &Cluster) {
    c.psql(
        "app",
        "CREATE TABLE public.big (id bigint PRIMARY KEY, pad text);
         INSERT INTO public.big SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g;
         CREATE TABLE public.small (id int);
         INSERT INTO public.small SELECT generate_series(1, 100);",
    );
}

/// A logical backup of `app` without verification.
const BACKUP_APP: [&str; 6] = [
    "backup",
    "--kind",
    "logical",
    "--database",
    "app",
    "--no-verify",
];

/// Start [`BACKUP_APP`] and stop it (SIGSTOP) once pg_dump is copying `public.big`.
fn backup_stopped_in_big(src: &Cluster, config: &Path) -> Child {
    let mut child = spawn_backupctl(config, &BACKUP_APP);
    wait_for_copy(src, "public.big", &mut child);
    signal(&child, "STOP");
    child
}

fn concurrent_inserts(backend: Backend) {
    let t = TestRepo::new(backend);
    let src = Cluster::new(ClusterOptions::default());
    src.psql("postgres", "CREATE DATABASE app");
    make_big(&src);
    let config = t.write_config("backup.toml", &src.postgres_toml());

    let child = backup_stopped_in_big(&src, &config);
    // Committed while pg_dump is in the middle of the big table.
    src.psql(
        "app",
        "INSERT INTO public.big SELECT g, 'late' FROM generate_series(200001, 200500) g;
         INSERT INTO public.small SELECT generate_series(101, 150);
         CREATE TABLE public.created_later (x int); INSERT INTO public.created_later VALUES (1);",
    );
    signal(&child, "CONT");
    let out = ok("backup", child.wait_with_output().unwrap());
    let id = stdout(&out).trim().to_string();

    let m = manifest(&t, &id).unwrap();
    let app = m.logical.as_ref().unwrap().database("app").unwrap();
    let rows = |name: &str| app.tables.iter().find(|t| t.table == name).map(|t| t.rows);
    assert_eq!(rows("big"), Some(200_000));
    assert_eq!(rows("small"), Some(100));
    assert_eq!(rows("created_later"), None);
    // The inserts really happened during the dump.
    assert_eq!(src.psql("app", "SELECT count(*) FROM public.big"), "200500");

    let dst_config = t.write_config("restore.toml", &src.postgres_toml());
    ok(
        "restore",
        backupctl(
            &dst_config,
            &[
                "restore",
                "--logical",
                &id,
                "--dbname",
                "app_copy",
                "--create",
            ],
        ),
    );
    for table in &app.tables {
        assert_eq!(
            count(&src, "app_copy", table),
            table.rows,
            "{}",
            table.table
        );
    }
    assert_eq!(
        src.psql(
            "app_copy",
            "SELECT to_regclass('public.created_later') IS NULL"
        ),
        "t"
    );
}

#[test]
fn concurrent_inserts_never_make_counts_and_dump_disagree_local() {
    concurrent_inserts(Backend::Local);
}

#[test]
fn concurrent_inserts_never_make_counts_and_dump_disagree_s3() {
    concurrent_inserts(Backend::S3);
}

// ---------------------------------------------------------------------------------------
// Failures: exit non-zero, no manifest, nothing left behind

fn assert_no_backup(t: &TestRepo) {
    let objects = backup_objects(t);
    assert!(objects.is_empty(), "left behind: {objects:?}");
}

fn pg_dump_killed_mid_way(backend: Backend) {
    let t = TestRepo::new(backend);
    let src = Cluster::new(ClusterOptions::default());
    src.psql("postgres", "CREATE DATABASE app");
    src.psql("postgres", "CREATE DATABASE zzz_second");
    make_big(&src);
    let config = t.write_config("backup.toml", &src.postgres_toml());
    let mut child = spawn_backupctl(&config, &["backup", "--kind", "logical", "--no-verify"]);
    let pid = wait_for_copy(&src, "public.big", &mut child);
    signal(&child, "STOP");
    assert_eq!(
        src.psql("postgres", &format!("SELECT pg_terminate_backend({pid})")),
        "t"
    );
    signal(&child, "CONT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("dump database app"), "{err}");
    assert!(err.contains("pg_dump failed"), "{err}");
    assert!(
        err.contains("Dumping the contents of table \"big\" failed"),
        "{err}"
    );
    assert!(err.contains("no manifest was written"), "{err}");
    // The database dumped before it ("app" sorts first; "postgres" … came later) and
    // the failed one: nothing remains.
    assert_no_backup(&t);
}

#[test]
fn pg_dump_killed_mid_way_fails_cleanly_local() {
    pg_dump_killed_mid_way(Backend::Local);
}

#[test]
fn pg_dump_killed_mid_way_fails_cleanly_s3() {
    pg_dump_killed_mid_way(Backend::S3);
}

#[test]
fn unreachable_server_fails_cleanly() {
    for backend in [Backend::Local, Backend::S3] {
        let t = TestRepo::new(backend);
        let nothing = common::pg_tempdir();
        let config = t.write_config(
            "backup.toml",
            &format!(
                "[postgres]\nhost = \"{}\"\nport = 5999\nconnect_timeout = \"3s\"\n",
                nothing.path().display()
            ),
        );
        let out = backupctl(
            &config,
            &["backup", "--kind", "logical", "--label", "pre-migration"],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stdout(&out).is_empty(), "printed an id: {}", stdout(&out));
        assert!(
            stderr(&out).contains("connect to PostgreSQL"),
            "{}",
            stderr(&out)
        );
        assert_no_backup(&t);
    }
}

#[test]
fn permission_denied_names_the_database_and_table() {
    let t = TestRepo::new(Backend::Local);
    let src = Cluster::new(ClusterOptions::default());
    src.psql("postgres", "CREATE ROLE weak LOGIN IN ROLE pg_monitor");
    src.psql("postgres", "CREATE DATABASE app");
    src.psql(
        "app",
        "CREATE TABLE open_one (x int); GRANT SELECT ON open_one TO weak;
         CREATE TABLE secret (x int); REVOKE ALL ON secret FROM PUBLIC;",
    );
    let pg = src
        .postgres_toml()
        .replace("user = \"postgres\"", "user = \"weak\"");
    let config = t.write_config("backup.toml", &pg);
    let out = backupctl(
        &config,
        &[
            "backup",
            "--kind",
            "logical",
            "--database",
            "app",
            "--no-verify",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("dump database app"), "{err}");
    assert!(err.contains("permission denied for table secret"), "{err}");
    assert!(stdout(&out).is_empty());
    assert_no_backup(&t);
}

#[test]
fn unwritable_repository_fails_cleanly() {
    let src = Cluster::new(ClusterOptions::default());
    // Local: a repository directory the postgres user may not write.
    let t = TestRepo::new(Backend::Local);
    let locked = t.dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let config_text = format!(
        "[repository]\ntype = \"local\"\npath = \"{}\"\n[backup]\nstate_dir = \"{}\"\n{}",
        locked.join("repo").display(),
        t.dir.path().join("state").display(),
        src.postgres_toml()
    );
    let config = t.dir.path().join("locked.toml");
    std::fs::write(&config, config_text).unwrap();
    common::chown_to_pg(&config);
    if common::pg_user().is_some() {
        // root owns it and keeps it read-only for others.
        std::fs::create_dir_all(locked.join("repo")).unwrap();
        Command::new("chown")
            .args(["-R", "root:root"])
            .arg(&locked)
            .status()
            .unwrap();
        Command::new("chmod")
            .args(["-R", "0755"])
            .arg(&locked)
            .status()
            .unwrap();
    } else {
        Command::new("chmod")
            .arg("0555")
            .arg(&locked)
            .status()
            .unwrap();
    }
    let out = backupctl(&config, &["backup", "--kind", "logical", "--no-verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("ermission denied"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read_dir(locked.join("repo"))
        .unwrap()
        .next()
        .is_none());
    Command::new("chmod")
        .arg("0755")
        .arg(&locked)
        .status()
        .unwrap();

    // S3: the server stops answering in the middle of the backup.
    let mut t = TestRepo::new(Backend::S3);
    src.psql("postgres", "CREATE DATABASE app");
    make_big(&src);
    let config = t.write_config("s3.toml", &src.postgres_toml());
    let child = backup_stopped_in_big(&src, &config);
    let s3 = t.s3.take().unwrap();
    let bucket = s3.bucket_dir();
    drop(s3);
    signal(&child, "CONT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("no manifest was written"),
        "{}",
        stderr(&out)
    );
    let manifests: Vec<_> = walk(&bucket)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .collect();
    assert!(manifests.is_empty(), "{manifests:?}");
}

#[test]
fn bad_requests_exit_2_and_name_the_problem() {
    let t = TestRepo::new(Backend::Local);
    let src = Cluster::new(ClusterOptions::default());
    let config = t.write_config("backup.toml", &src.postgres_toml());
    let cases: &[(&[&str], &str)] = &[
        (
            &["backup", "--kind", "logical", "--database", "nope"],
            "\"nope\" does not exist",
        ),
        (
            &["backup", "--kind", "logical", "--label", "no spaces"],
            "--label",
        ),
        (&["backup", "--kind", "physical"], "archive_mode is off"),
        (&["backup", "--kind", "both"], "archive_mode is off"),
        (
            &[
                "restore",
                "--logical",
                "20260101T000000Z-logical",
                "--dbname",
                "x",
            ],
            "no complete backup",
        ),
        (
            &["restore", "--logical", "20260101T000000Z-logical"],
            "--dbname",
        ),
    ];
    for (args, want) in cases {
        let out = backupctl(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    assert_no_backup(&t);
}

// ---------------------------------------------------------------------------------------
// The job lock: --no-wait fails fast (exit 3), the default waits

#[test]
fn a_running_backup_blocks_or_queues_the_next() {
    let t = TestRepo::new(Backend::Local);
    let src = Cluster::new(ClusterOptions::default());
    src.psql("postgres", "CREATE DATABASE app");
    make_big(&src);
    let config = t.write_config("backup.toml", &src.postgres_toml());
    let args = BACKUP_APP;
    let first = backup_stopped_in_big(&src, &config);

    let mut no_wait = args.to_vec();
    no_wait.push("--no-wait");
    let out = backupctl(&config, &no_wait);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pid {}", first.id())),
        "{}",
        stderr(&out)
    );

    // Without --no-wait the second one waits (and says for whom), then runs.
    let mut second = spawn_backupctl(&config, &args);
    let mut err = BufReader::new(second.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "second ended: {seen}"
        );
        seen.push_str(&line);
        if line.contains("waiting for the running backup-logical job") {
            break;
        }
    }
    signal(&first, "CONT");
    let first_out = ok("first backup", first.wait_with_output().unwrap());
    let second_out = ok("second backup", second.wait_with_output().unwrap());
    let (a, b) = (stdout(&first_out), stdout(&second_out));
    assert_ne!(a.trim(), b.trim());
    assert!(manifest(&t, a.trim()).is_some() && manifest(&t, b.trim()).is_some());
}

// ---------------------------------------------------------------------------------------
// The pre-migration hook end to end: both kinds, verified, then PITR to its restore point.

#[test]
fn pre_migration_hook_both_kinds_verified_then_pitr_to_its_restore_point() {
    let t = TestRepo::new(Backend::Local);
    let config = t.write_config("backup.toml", "");
    let src = Cluster::new(ClusterOptions {
        archive_command: Some(common::archive_command(&config)),
        ..Default::default()
    });
    let config = t.write_config("backup.toml", &src.postgres_toml());
    src.psql(
        "postgres",
        "CREATE TABLE m (id int); INSERT INTO m VALUES (1)",
    );
    ok(
        "physical",
        backupctl(&config, &["backup", "--kind", "physical", "--no-verify"]),
    );
    src.psql("postgres", "INSERT INTO m VALUES (2)");
    let out = ok(
        "hook",
        backupctl(
            &config,
            &[
                "--json",
                "backup",
                "--kind",
                "both",
                "--label",
                "pre-migration",
                "--verify",
            ],
        ),
    );
    let report = json(&out);
    let backups = report["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{report}");
    for b in backups {
        let id = b["id"].as_str().unwrap();
        assert_eq!(b["restore_point_archived"], true, "{report}");
        let m = manifest(&t, id).expect("manifest");
        assert_eq!(m.label.as_deref(), Some("pre-migration"));
        let v = m.verification.as_ref().expect("verified");
        assert_eq!(v.outcome, backupctl::manifest::Outcome::Ok, "{id}: {v:?}");
        assert!(v.duration_secs > 0.0);
    }
    let physical_id = backups
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .find(|id| id.ends_with("-physical"))
        .unwrap();
    // The "migration".
    src.psql("postgres", "DROP TABLE m; CREATE TABLE migrated (x int)");
    common::switch_wal_and_wait(&src);

    let dir = common::pg_tempdir();
    let target = dir.path().join("restored");
    let port = common::free_port();
    let out = backupctl(
        &config,
        &[
            "restore",
            "--target-name",
            &physical_id,
            "--pgdata",
            target.to_str().unwrap(),
            "--start",
            "--port",
            &port.to_string(),
        ],
    );
    let restored = common::Restored {
        pgdata: target.clone(),
        socket_dir: src.socket_dir.clone(),
        port,
        dir: Some(dir),
    };
    ok("pitr to the hook's restore point", out);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM m"
        ),
        "1,2"
    );
    assert_eq!(
        restored.psql("postgres", "SELECT to_regclass('migrated') IS NULL"),
        "t"
    );
}

// ---------------------------------------------------------------------------------------
// The globals script is data, not a program: psql meta-commands in it are refused

/// Replace the globals script of backup `id` with `edit(script)`, re-encoded with the
/// backup's codec and with the manifest's checksums updated: only the content is hostile.
fn rewrite_globals(t: &TestRepo, id: &str, edit: impl FnOnce(&str) -> String) {
    use backupctl::codec::{algorithm_of, Codec, Decoder, Digest};
    use backupctl::repo::PutOptions;
    use std::io::{Read, Write};
    rt().block_on(async {
        let repo = t.open().await;
        let mut m = Manifest::load(repo.as_ref(), id).await.unwrap().unwrap();
        let name = m.logical.as_ref().unwrap().globals_object.clone();
        let key = format!("backups/{id}/{name}");
        let stored = repo.get_bytes(&key).await.unwrap();
        let algorithm = algorithm_of(&name);
        let mut script = String::new();
        Decoder::new(algorithm, &stored[..])
            .unwrap()
            .read_to_string(&mut script)
            .unwrap();
        let script = edit(&script);
        let codec = Codec {
            algorithm,
            level: 3,
            threads: 0,
        };
        let mut enc = codec.encoder(Vec::new()).unwrap();
        enc.write_all(script.as_bytes()).unwrap();
        let bytes = enc.finish().unwrap();
        let digest = Digest::of(&bytes);
        let entry = m.objects.iter_mut().find(|o| o.name == name).unwrap();
        entry.sha256 = digest.sha256;
        entry.stored_size = digest.size;
        entry.size = script.len() as u64;
        repo.put_bytes(&key, bytes, PutOptions::default())
            .await
            .unwrap();
        m.store(repo.as_ref()).await.unwrap();
    });
    // Written as this (root) process: give it back to the user backupctl runs as.
    common::chown_to_pg(&t.dir.path().join("repo"));
}

#[test]
fn hostile_globals_script_is_refused_and_never_run() {
    let t = TestRepo::new(Backend::Local);
    let src = Cluster::new(ClusterOptions::default());
    // Backslashes and quotes in role names, comments and settings are data, not
    // meta-commands: pg_dumpall writes them inside identifiers and E'' literals.
    src.psql(
        "postgres",
        "CREATE ROLE \"odd\\role'x\" LOGIN PASSWORD 'se\\cr''et'; \
         COMMENT ON ROLE \"odd\\role'x\" IS 'not a \\! command, ''quoted'''; \
         ALTER ROLE \"odd\\role'x\" SET search_path = 'a\\b'; \
         CREATE ROLE \"multi\nline\"",
    );
    let config = t.write_config("backup.toml", &src.postgres_toml());
    let id = stdout(&ok(
        "backup",
        backupctl(&config, &["backup", "--kind", "logical", "--no-verify"]),
    ))
    .trim()
    .to_string();

    // A normal globals restore still works (and recreates the odd roles).
    src.psql(
        "postgres",
        "DROP ROLE \"odd\\role'x\"; DROP ROLE \"multi\nline\"",
    );
    ok(
        "restore --globals",
        backupctl(&config, &["restore", "--logical", &id, "--globals"]),
    );
    assert_eq!(
        src.psql(
            "postgres",
            "SELECT shobj_description(oid, 'pg_authid') || ' ' || array_to_string(rolconfig, ',') \
             FROM pg_roles WHERE rolname = 'odd\\role''x'"
        ),
        "not a \\! command, 'quoted' search_path=\"a\\b\""
    );
    assert_eq!(
        src.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = E'multi\\nline'"
        ),
        "1"
    );

    // The repository is writable by an attacker: a meta-command in the script.
    let marker = std::env::temp_dir().join(format!(
        "backupctl-globals-pwned-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut hostile_line = 0;
    rewrite_globals(&t, &id, |script| {
        // Before pg_dumpall's `\\restrict` line (psql 15.14+ refuses meta-commands
        // after it), as an attacker who can rewrite the object would put it.
        let mut lines: Vec<String> = script.lines().map(str::to_string).collect();
        lines.insert(0, "CREATE ROLE hostile_first;".into());
        lines.insert(1, format!("SELECT 1; \\! touch {}", marker.display()));
        hostile_line = 2;
        lines.join("\n") + "\n"
    });
    let want = format!("line {hostile_line}");
    let out = backupctl(&config, &["restore", "--logical", &id, "--globals"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("globals.sql") && err.contains(&want) && err.contains("\\!"),
        "{err}"
    );
    let out = backupctl(&config, &["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("globals.sql") && text.contains(&want),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(!marker.exists(), "the \\! command ran");
    // Nothing at all was executed: the statement before the hostile line neither.
    assert_eq!(
        src.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'hostile_first'"
        ),
        "0"
    );
}

// ---------------------------------------------------------------------------------------
// Connections are closed, not abandoned

#[test]
fn backups_leave_no_fatal_in_the_server_log() {
    let s = common::setup::Setup::new(Backend::Local);
    s.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    s.ok(&["backup", "--kind", "physical", "--no-verify"]);
    s.ok(&["backup", "--kind", "logical", "--no-verify"]);
    s.ok(&["list"]);
    // The server logs an abandoned connection when it notices, not at once.
    std::thread::sleep(Duration::from_millis(500));
    let log = s.cluster.server_log();
    let fatal: Vec<&str> = log.lines().filter(|l| l.contains("FATAL")).collect();
    assert!(fatal.is_empty(), "{}", fatal.join("\n"));
}
