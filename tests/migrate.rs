//! `backupctl migrate` against real PostgreSQL 15: a migration that fails half-way (DDL
//! and DML autocommitted, then an error) or is killed leaves the database exactly as it
//! was before it — rows, schema, sequences and what belongs to the database itself —
//! and the exit code is the migration's; a failed backup means the migration never
//! runs; a successful one is kept. Also the documented shell wrapper's exit status.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use backupctl::manifest::Manifest;
use common::webhook::Webhook;
use common::{
    as_pg, backupctl_env, pg_bin, pg_tempdir, stderr, stdout, Backend, Cluster, ClusterOptions,
    TestRepo,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A database `app` owned by `app_owner` with privileges, settings (for the database
/// and for a role in it), a connection limit and a comment; tables with serial keys, a
/// foreign key, an index, grants.
fn populate(c: &Cluster) {
    c.psql(
        "postgres",
        "CREATE ROLE app_owner LOGIN; CREATE ROLE app_reader LOGIN;",
    );
    c.psql("postgres", "CREATE DATABASE app OWNER app_owner");
    c.psql(
        "postgres",
        "REVOKE CONNECT ON DATABASE app FROM PUBLIC;
         GRANT CONNECT ON DATABASE app TO app_reader;
         ALTER DATABASE app SET statement_timeout = '5min';
         ALTER ROLE app_reader IN DATABASE app SET search_path = \"$user\", public, sales;
         ALTER DATABASE app CONNECTION LIMIT 25;
         COMMENT ON DATABASE app IS 'the application''s data';",
    );
    c.psql(
        "app",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL);
         CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id),
                              amount numeric(10,2), at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX orders_user ON orders (user_id);
         INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 1000) g;
         INSERT INTO orders (user_id, amount, at)
           SELECT 1 + g % 1000, g * 0.5, timestamptz '2026-01-01 00:00+00' + g * interval '1 minute'
           FROM generate_series(1, 3000) g;
         ALTER TABLE users OWNER TO app_owner; ALTER TABLE orders OWNER TO app_owner;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_reader;",
    );
}

/// Everything the tests compare: per table its row count and an md5 of its rows in
/// primary-key order; sequences; a schema-only dump; the database's ACL, settings,
/// owner, connection limit and comment.
fn state(c: &Cluster, db: &str) -> String {
    let mut out = String::new();
    let tables = c.psql(
        db,
        "SELECT string_agg(format('%I.%I', schemaname, tablename), ' ' ORDER BY schemaname, tablename)
         FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    );
    for t in tables.split_whitespace() {
        out += &format!(
            "{t}: {}\n",
            c.psql(
                db,
                &format!(
                    "SELECT count(*) || ' rows, md5 ' || coalesce(md5(string_agg(x::text, '|' ORDER BY x.id)), '-') FROM {t} x"
                )
            )
        );
    }
    let seqs = c.psql(
        db,
        "SELECT string_agg(format('%I.%I', schemaname, sequencename), ' ' ORDER BY schemaname, sequencename)
         FROM pg_sequences",
    );
    for s in seqs.split_whitespace() {
        out += &format!(
            "{s}: {}\n",
            c.psql(
                db,
                &format!("SELECT last_value || ' ' || is_called FROM {s}")
            )
        );
    }
    out += &c.psql(
        "postgres",
        &format!(
            "SELECT 'owner ' || pg_get_userbyid(datdba) || ', acl ' || coalesce(datacl::text, 'default')
                    || ', limit ' || datconnlimit || ', comment ' || coalesce(shobj_description(oid, 'pg_database'), '-')
                    || ', allow ' || datallowconn
             FROM pg_database WHERE datname = '{db}'"
        ),
    );
    out += "\nsettings: ";
    out += &c.psql(
        "postgres",
        &format!(
            "SELECT string_agg(coalesce(pg_get_userbyid(nullif(setrole, 0)), '(database)') || ' ' || setconfig::text, '; ' ORDER BY setrole)
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{db}'"
        ),
    );
    out += "\n";
    let dump = as_pg(
        Command::new(pg_bin("pg_dump"))
            .args(["--schema-only", "-d", db])
            .envs(c.env()),
    )
    .output()
    .unwrap();
    assert!(dump.status.success(), "{}", stderr(&dump));
    // `\restrict KEY` lines carry a random key.
    for line in stdout(&dump).lines() {
        if !line.starts_with("\\restrict ") && !line.starts_with("\\unrestrict ") {
            out += line;
            out += "\n";
        }
    }
    out
}

/// A migration script (run by `sh`) that reaches the cluster through psql.
fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("migration.sh");
    let text = format!(
        "set -e\npsql() {{ {} -X -q -v ON_ERROR_STOP=1 -d app \"$@\"; }}\n{body}\n",
        pg_bin("psql").display()
    );
    std::fs::write(&path, text).unwrap();
    common::chown_to_pg(&path);
    path
}

/// DDL and DML on what the backup holds, a new table depending on it, a database
/// setting, each autocommitted; then an error.
const FAILS_HALF_WAY: &str = r#"
echo "migrating with backup $BACKUPCTL_BACKUP_ID"
psql -c "ALTER TABLE orders ADD COLUMN note text DEFAULT 'n'"
psql -c "UPDATE orders SET amount = amount * 2; DELETE FROM orders WHERE id % 7 = 0"
psql -c "INSERT INTO users (email) VALUES ('added@example.com')"
psql -c "CREATE TABLE user_settings (id serial PRIMARY KEY, user_id bigint REFERENCES users (id))"
psql -c "INSERT INTO user_settings (user_id) SELECT id FROM users"
psql -c "ALTER DATABASE app SET work_mem = '64MB'"
psql -c "SELECT 1 / 0" || exit 5
"#;

struct Env {
    c: Cluster,
    t: TestRepo,
    config: PathBuf,
    dir: tempfile::TempDir,
}

fn env_with(backend: Backend, extra: &str) -> Env {
    let t = TestRepo::new(backend);
    let c = Cluster::new(ClusterOptions::default());
    populate(&c);
    let config = t.write_config("backup.toml", &format!("{}\n{extra}", c.postgres_toml()));
    Env {
        c,
        t,
        config,
        dir: pg_tempdir(),
    }
}

impl Env {
    fn migrate(&self, args: &[&str], body: &str) -> Output {
        let s = script(self.dir.path(), body);
        let mut a = vec!["migrate", "--database", "app"];
        a.extend_from_slice(args);
        let s = s.display().to_string();
        a.extend_from_slice(&["--", "sh", &s]);
        backupctl_env(&self.config, &a, &self.c.env())
    }

    fn manifest(&self, id: &str) -> Manifest {
        rt().block_on(async {
            let repo = self.t.open().await;
            Manifest::load(repo.as_ref(), id).await.unwrap().unwrap()
        })
    }

    fn databases(&self) -> Vec<String> {
        self.c
            .psql(
                "postgres",
                "SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_database",
            )
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    fn failed_databases(&self) -> Vec<String> {
        self.databases()
            .into_iter()
            .filter(|d| d.starts_with("app_failed_"))
            .collect()
    }
}

fn backup_id_from(out: &Output) -> String {
    let text = stdout(out);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("migrating with backup "))
        .unwrap_or_else(|| {
            panic!(
                "no BACKUPCTL_BACKUP_ID in the output:\n{text}\n{}",
                stderr(out)
            )
        });
    line.trim().to_string()
}

// ---------------------------------------------------------------------------------------

fn failed_half_way_is_swapped_back(backend: Backend) {
    let hook = Webhook::start();
    let e = env_with(
        backend,
        &format!(
            "[notify]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\n",
            hook.port
        ),
    );
    let before = state(&e.c, "app");
    // An application session on the database, ended only once the copy is ready.
    let rt = rt();
    let app_session = rt.block_on(e.c.connect("app"));

    let out = e.migrate(&["--no-verify"], FAILS_HALF_WAY);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let id = backup_id_from(&out);
    assert!(
        stderr(&out).contains("the database was restored from backup"),
        "{}",
        stderr(&out)
    );
    let m = e.manifest(&id);
    assert_eq!(m.label.as_deref(), Some("pre-migration"));
    assert!(m.restore_point.is_some());

    let after = state(&e.c, "app");
    assert!(
        after == before,
        "the database differs from before the migration:\n--- before\n{before}\n--- after\n{after}"
    );
    // The failed database is kept, with what the migration did.
    let failed = e.failed_databases();
    assert_eq!(failed.len(), 1, "{:?}", e.databases());
    assert_eq!(
        e.c.psql(&failed[0], "SELECT count(*) FROM user_settings"),
        "1001"
    );
    assert!(!e.databases().iter().any(|d| d.starts_with("app_restored_")));
    // The session on the failed database was ended; the application works on the
    // restored one (an insert using the default).
    assert!(rt.block_on(app_session.simple_query("SELECT 1")).is_err());
    assert_eq!(
        e.c.psql(
            "app",
            "INSERT INTO users (email) VALUES ('after@example.com') RETURNING id"
        ),
        "1001"
    );
    // One alert, naming the backup.
    let alerts = hook.accepted();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["event"], "migration_failed");
    assert_eq!(alerts[0]["backup_ids"][0], id.as_str());
}

fn killed_migration_is_swapped_back(backend: Backend) {
    let e = env_with(backend, "");
    let before = state(&e.c, "app");
    let out = e.migrate(
        &["--no-verify"],
        r#"echo "migrating with backup $BACKUPCTL_BACKUP_ID"
psql -c "DROP INDEX orders_user; TRUNCATE orders"
kill -9 $$"#,
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("killed by signal 9"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&e.c, "app"), before);
    assert_eq!(e.failed_databases().len(), 1);
}

both_backends!(failed_half_way_is_swapped_back);

#[test]
fn killed_migration_is_swapped_back_local() {
    killed_migration_is_swapped_back(Backend::Local);
}

#[test]
fn successful_migration_is_kept_and_its_backup_verified() {
    let e = env_with(Backend::Local, "");
    let out = e.migrate(
        &[],
        r#"echo "migrating with backup $BACKUPCTL_BACKUP_ID"
psql -c "ALTER TABLE users ADD COLUMN name text"
psql -c "UPDATE users SET name = 'n' || id""#,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = backup_id_from(&out);
    let m = e.manifest(&id);
    assert_eq!(m.label.as_deref(), Some("pre-migration"));
    let v = m
        .verification
        .expect("the pre-migration backup was verified");
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    assert_eq!(
        e.c.psql("app", "SELECT count(*) FROM users WHERE name IS NOT NULL"),
        "1000"
    );
    assert!(e.failed_databases().is_empty());
}

#[test]
fn failed_backup_never_runs_the_migration() {
    let e = env_with(Backend::Local, "");
    // A repository the postgres user cannot write.
    let locked = e.t.dir.path().join("locked");
    std::fs::create_dir_all(locked.join("repo")).unwrap();
    let config = e.t.dir.path().join("locked.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\ntype = \"local\"\npath = \"{}\"\n[backup]\nstate_dir = \"{}\"\n{}",
            locked.join("repo").display(),
            e.t.dir.path().join("state").display(),
            e.c.postgres_toml()
        ),
    )
    .unwrap();
    common::chown_to_pg(&config);
    if common::pg_user().is_none() {
        Command::new("chmod")
            .arg("0555")
            .arg(locked.join("repo"))
            .status()
            .unwrap();
    }
    let marker = e.dir.path().join("ran");
    let s = script(e.dir.path(), &format!("touch {}", marker.display()));
    let s = s.display().to_string();
    let out = backupctl_env(
        &config,
        &[
            "migrate",
            "--database",
            "app",
            "--no-verify",
            "--",
            "sh",
            &s,
        ],
        &e.c.env(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the migration was not run"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists(), "the migration ran after a failed backup");
}

#[test]
fn in_place_restores_or_refuses_and_keep_restores_nothing() {
    let e = env_with(Backend::Local, "");
    let before = state(&e.c, "app");
    // Changes to what the backup holds only: restored in place.
    let out = e.migrate(
        &["--no-verify", "--on-failure", "in-place"],
        r#"psql -c "ALTER TABLE orders ADD COLUMN note text; UPDATE users SET email = 'x' || email"
exit 9"#,
    );
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert_eq!(state(&e.c, "app"), before);
    assert!(e.failed_databases().is_empty());

    // A new table referencing a restored one: refused before any change, named, exit 4.
    let out = e.migrate(
        &["--no-verify", "--on-failure", "in-place"],
        r#"psql -c "CREATE TABLE user_settings (id serial PRIMARY KEY, user_id bigint REFERENCES users (id)); DELETE FROM orders"
exit 9"#,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("table user_settings") && err.contains("as the migration left it"),
        "{err}"
    );
    assert_eq!(e.c.psql("app", "SELECT count(*) FROM orders"), "0");

    // keep: nothing restored, the exact commands printed.
    e.c.psql("app", "DROP TABLE user_settings");
    let out = e.migrate(
        &["--no-verify", "--on-failure", "keep"],
        r#"psql -c "DELETE FROM users WHERE id > 500 AND id NOT IN (SELECT user_id FROM orders)"
exit 6"#,
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("restore --logical")
            && err.contains("RENAME TO")
            && err.contains("nothing was restored"),
        "{err}"
    );
    assert!(e.failed_databases().is_empty());
}

/// The wrapper in docs/pre-migration.md exits with the migration's own status.
#[test]
fn documented_wrapper_keeps_the_migration_exit_status() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/pre-migration.md"
    ))
    .unwrap();
    let start = doc
        .find("#!/usr/bin/env bash\n# usage: with-pre-migration-backup")
        .expect("the wrapper is in docs/pre-migration.md");
    let end = start + doc[start..].find("\n```").unwrap();
    let e = env_with(Backend::Local, "");
    let wrapper = e.dir.path().join("with-pre-migration-backup");
    std::fs::write(&wrapper, &doc[start..end]).unwrap();
    common::chown_to_pg(&wrapper);
    // `backupctl` on PATH is the binary under test.
    let bin_dir = common::backupctl_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let run = |cmd: &str| {
        let mut c = Command::new("bash");
        c.arg(&wrapper)
            .args(["app", "--", "sh", "-c", cmd])
            .env("PATH", &path)
            .env("BACKUPCTL_CONFIG", &e.config)
            .envs(e.c.env());
        as_pg(&mut c).output().unwrap()
    };
    let out = run("exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("migration failed (exit 7)"),
        "{}",
        stderr(&out)
    );
    let out = run("exit 0");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Sessions on the failed database not ended within `--terminate-timeout`: nothing is
/// renamed, the database accepts connections again, the copy is left under its own
/// name, exit 4.
#[test]
fn sessions_not_ended_in_time_rename_nothing() {
    let e = env_with(Backend::Local, "");
    let rt = rt();
    let _app_session = rt.block_on(e.c.connect("app"));
    let out = e.migrate(
        // 0 s: the first look at the sessions is already too late.
        &["--no-verify", "--terminate-timeout", "0"],
        r#"psql -c "DELETE FROM orders"
exit 9"#,
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("could not be ended") && err.contains("nothing was renamed"),
        "{err}"
    );
    assert_eq!(e.c.psql("app", "SELECT count(*) FROM orders"), "0");
    assert_eq!(
        e.c.psql(
            "postgres",
            "SELECT datallowconn FROM pg_database WHERE datname = 'app'"
        ),
        "t"
    );
    assert!(e.failed_databases().is_empty());
    let restored: Vec<_> = e
        .databases()
        .into_iter()
        .filter(|d| d.starts_with("app_restored_"))
        .collect();
    assert_eq!(restored.len(), 1, "{:?}", e.databases());
    assert_eq!(
        e.c.psql(&restored[0], "SELECT count(*) FROM orders"),
        "3000"
    );
}
