//! Single-table logical restores into a database that is in use, against real
//! PostgreSQL 15: `--data-only` replaces the rows (sequences set from the backup, the
//! application's next insert using the default works) and is refused, unchanged, when a
//! foreign key would break; `--clean` brings the table back complete (sequence, default,
//! indexes, constraints, foreign keys both ways, trigger, grant, comment) or is refused,
//! unchanged, naming what depends on it. A whole-database restore counts the restored rows and
//! fails naming the tables (and, into a new database, the schema object kinds) that
//! differ from the manifest.

mod common;

use common::{backupctl, stderr, stdout, Backend, Cluster, ClusterOptions, TestRepo};

fn populate(c: &Cluster) {
    c.psql("postgres", "CREATE DATABASE app");
    c.psql(
        "app",
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL);
         CREATE TABLE orders (id serial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id),
                              amount numeric(10,2), at timestamptz NOT NULL DEFAULT now());
         CREATE INDEX orders_user ON orders (user_id);
         INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 1000) g;
         INSERT INTO orders (user_id, amount, at)
           SELECT 1 + g % 1000, g * 0.5, timestamptz '2026-01-01 00:00+00' + g * interval '1 minute'
           FROM generate_series(1, 3000) g;",
    );
}

fn md5(c: &Cluster, table: &str) -> String {
    c.psql(
        "app",
        &format!(
            "SELECT count(*) || ' ' || md5(string_agg(x::text, '|' ORDER BY x.id)) FROM {table} x"
        ),
    )
}

struct Env {
    c: Cluster,
    t: TestRepo,
    config: std::path::PathBuf,
    id: String,
}

fn backed_up() -> Env {
    let t = TestRepo::new(Backend::Local);
    let c = Cluster::new(ClusterOptions::default());
    populate(&c);
    let config = t.write_config("backup.toml", &c.postgres_toml());
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
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    Env { c, t, config, id }
}

impl Env {
    fn restore(&self, extra: &[&str]) -> std::process::Output {
        let mut a = vec!["restore", "--logical", &self.id, "--dbname", "app"];
        a.extend_from_slice(extra);
        backupctl(&self.config, &a)
    }
}

#[test]
fn data_only_replaces_rows_in_use_or_refuses_unchanged() {
    let e = backed_up();
    let c = &e.c;
    let orders_then = md5(c, "orders");
    let users_then = md5(c, "users");
    // The application keeps a session and changes rows after the backup.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(c.connect("app"));
    c.psql(
        "app",
        "DELETE FROM orders WHERE id % 3 = 0; UPDATE orders SET amount = 0 WHERE id < 100;
         INSERT INTO orders (user_id, amount) SELECT 1, 1 FROM generate_series(1, 50);",
    );

    let out = e.restore(&["--table", "public.orders", "--data-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("3000 rows") && stdout(&out).contains("orders_id_seq set to 3000"),
        "{}",
        stdout(&out)
    );
    assert_eq!(md5(c, "orders"), orders_then);
    // The definition is untouched and the default works: the next id follows the backup's.
    assert_eq!(
        c.psql(
            "app",
            "INSERT INTO orders (user_id, amount) VALUES (1, 1) RETURNING id"
        ),
        "3001"
    );
    assert_eq!(
        c.psql(
            "app",
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'"
        ),
        "2"
    );
    // The application's session was not disturbed.
    let n: i64 = rt
        .block_on(app.query_one("SELECT count(*) FROM users", &[]))
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);

    // A user added after the backup, with an order: replacing users would orphan it.
    c.psql(
        "app",
        "INSERT INTO users (email) VALUES ('late@example.com');
         INSERT INTO orders (user_id, amount) VALUES (1001, 9);
         UPDATE users SET email = 'changed' || id WHERE id <= 10;",
    );
    let users_now = md5(c, "users");
    let out = e.restore(&["--table", "public.users", "--data-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("orders_user_id_fkey") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(md5(c, "users"), users_now);

    // Without that order it goes through, and the sequence follows the backup.
    c.psql("app", "DELETE FROM orders WHERE user_id = 1001");
    let out = e.restore(&["--table", "public.users", "--data-only"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(md5(c, "users"), users_then);
    assert_eq!(
        c.psql(
            "app",
            "INSERT INTO users (email) VALUES ('next@example.com') RETURNING id"
        ),
        "1001"
    );

    // A table whose columns changed since the backup is refused, unchanged.
    c.psql("app", "ALTER TABLE orders ADD COLUMN note text");
    let before = md5(c, "orders");
    let out = e.restore(&["--table", "public.orders", "--data-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("columns"), "{}", stderr(&out));
    assert_eq!(md5(c, "orders"), before);
}

/// The manifest says one thing, the dump holds another (here: a manifest rewritten
/// with a wrong row count and index count): the restore counts what it restored, dumps
/// its schema again, and fails naming both differences.
#[test]
fn whole_database_restore_counts_rows() {
    let e = backed_up();
    let out = backupctl(
        &e.config,
        &[
            "restore",
            "--logical",
            &e.id,
            "--dbname",
            "copy",
            "--create",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 tables, 4000 rows counted"),
        "{}",
        stdout(&out)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = e.t.open().await;
        let mut m = backupctl::manifest::Manifest::load(repo.as_ref(), &e.id)
            .await
            .unwrap()
            .unwrap();
        let d = m
            .logical
            .as_mut()
            .unwrap()
            .databases
            .iter_mut()
            .find(|d| d.name == "app")
            .unwrap();
        d.tables
            .iter_mut()
            .find(|t| t.table == "orders")
            .unwrap()
            .rows = 2999;
        *d.toc_counts.get_mut("INDEX").unwrap() += 1;
        m.store(repo.as_ref()).await.unwrap();
    });
    common::chown_to_pg(e.t.dir.path());
    let out = backupctl(
        &e.config,
        &[
            "restore",
            "--logical",
            &e.id,
            "--dbname",
            "copy2",
            "--create",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("public.orders has 3000 rows, the backup recorded 2999")
            && stderr(&out).contains("the dump lists 2 INDEX entries, the restored database has 1"),
        "{}",
        stderr(&out)
    );
}

/// Everything about `orders` and `users` a `--clean` must bring back.
fn definition(c: &Cluster) -> String {
    c.psql(
        "app",
        "SELECT concat_ws(E'\\n',
           (SELECT string_agg(indexname || ': ' || indexdef, '; ' ORDER BY indexname) FROM pg_indexes
             WHERE tablename IN ('orders', 'users')),
           (SELECT string_agg(conname || ': ' || pg_get_constraintdef(oid), '; ' ORDER BY conname) FROM pg_constraint
             WHERE conrelid IN ('orders'::regclass, 'users'::regclass)),
           (SELECT string_agg(tgname, '; ' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal),
           (SELECT string_agg(a.attname || ' default ' || pg_get_expr(d.adbin, d.adrelid), '; ' ORDER BY d.adrelid::regclass::text, a.attname) FROM pg_attrdef d
             JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid IN ('orders'::regclass, 'users'::regclass)),
           (SELECT relacl::text FROM pg_class WHERE oid = 'orders'::regclass),
           obj_description('orders'::regclass, 'pg_class'),
           (SELECT string_agg(format('%s owned by %s', s.relname, d.refobjid::regclass), '; ' ORDER BY s.relname) FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' WHERE d.deptype = 'a'))",
    )
}

#[test]
fn clean_restores_the_table_complete_or_refuses_unchanged() {
    let t = TestRepo::new(Backend::Local);
    let c = Cluster::new(ClusterOptions::default());
    populate(&c);
    c.psql("postgres", "CREATE ROLE app_reader");
    c.psql(
        "app",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.at := now(); RETURN NEW; END $$;
         CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
         GRANT SELECT ON orders TO app_reader;
         COMMENT ON TABLE orders IS 'what users bought';",
    );
    let config = t.write_config("backup.toml", &c.postgres_toml());
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
    assert!(out.status.success(), "{}", stderr(&out));
    let e = Env {
        c,
        t,
        config,
        id: stdout(&out).trim().to_string(),
    };
    let c = &e.c;
    let def_then = definition(c);
    let orders_then = md5(c, "orders");
    let users_then = md5(c, "users");

    // What a migration does to a table: rows, an index, a default, the trigger, a grant.
    c.psql(
        "app",
        "DELETE FROM orders WHERE id > 2000; DROP INDEX orders_user;
         ALTER TABLE orders ALTER COLUMN id DROP DEFAULT; DROP TRIGGER orders_touch ON orders;
         REVOKE SELECT ON orders FROM app_reader;",
    );
    let out = e.restore(&["--table", "public.orders", "--clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(md5(c, "orders"), orders_then);
    assert_eq!(definition(c), def_then);
    assert_eq!(
        c.psql(
            "app",
            "INSERT INTO orders (user_id, amount) VALUES (1, 1) RETURNING id"
        ),
        "3001"
    );

    // users is referenced by orders: the foreign key is dropped and added back.
    c.psql(
        "app",
        "DELETE FROM orders WHERE id = 3001; UPDATE users SET email = 'x' || email WHERE id < 10",
    );
    let out = e.restore(&["--table", "public.users", "--clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(md5(c, "users"), users_then);
    assert_eq!(definition(c), def_then);
    assert_eq!(
        c.psql(
            "app",
            "INSERT INTO users (email) VALUES ('next@example.com') RETURNING id"
        ),
        "1001"
    );

    // Added since the backup and depending on the tables: refused, nothing changed.
    c.psql(
        "app",
        "CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
         CREATE TABLE user_settings (id serial PRIMARY KEY, user_id bigint REFERENCES users (id));
         DELETE FROM orders WHERE id > 2500;",
    );
    let orders_now = md5(c, "orders");
    let out = e.restore(&["--table", "public.orders", "--clean"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("view big_orders") && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(md5(c, "orders"), orders_now);
    let out = e.restore(&["--table", "public.users", "--clean"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("user_settings_user_id_fkey"),
        "{}",
        stderr(&out)
    );
}
