//! Backups taken from a streaming standby, and failover: a primary archiving into the
//! repository, a standby made with `pg_basebackup -R`, a physical backup of the standby
//! while `pgbench` writes on the primary, promotion of the standby, archiving going on
//! from it on the new timeline, and PITR before and after the switch, on both backends.

mod common;

use std::time::{Duration, Instant};

use common::setup::Setup;
use common::{backupctl, check_output, stderr, stdout, wait_archived, Backend, Cluster};

both_backends!(backup_from_a_standby_then_failover);

/// Wait until `standby` has replayed everything `primary` has written so far.
fn wait_replayed(primary: &Cluster, standby: &Cluster) {
    let lsn = primary.psql("postgres", "SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(120);
    while standby.psql(
        "postgres",
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
    ) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "the standby did not replay up to {lsn}\nstandby log:\n{}",
            standby.server_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rows(r: &common::Restored) -> String {
    r.psql(
        "postgres",
        "SELECT string_agg(tag, ',' ORDER BY id) FROM marks",
    )
}

fn backup_from_a_standby_then_failover(backend: Backend) {
    let mut s = Setup::new(backend);
    s.cluster.pgbench_init(5);
    s.sql("CREATE TABLE marks (id serial PRIMARY KEY, tag text)");
    s.sql("INSERT INTO marks (tag) VALUES ('before-backup')");
    let standby = Cluster::standby_of(&s.cluster);
    let primary_conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        s.cluster.socket_dir.display(),
        s.cluster.port
    );
    let standby_config = s.t.write_config(
        "standby.toml",
        &format!(
            "{}primary_conninfo = \"{primary_conninfo}\"\n",
            standby.postgres_toml()
        ),
    );

    // `check` on the standby says what backups will do and that the primary is reachable.
    let out = backupctl(&standby_config, &["check"]);
    let text = stdout(&out);
    // The line of a check by its name (the second word), not by a word in its text.
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
            .to_string()
    };
    let standby_line = line("standby");
    assert!(
        standby_line.contains("copy this standby's data directory")
            && standby_line.contains("no restore point"),
        "{text}"
    );
    let primary_line = line("primary");
    assert!(
        primary_line.starts_with("OK") && primary_line.contains("pg_switch_wal"),
        "{text}"
    );

    // A physical backup of the standby under write load on the primary, verified by a
    // test restore (the default).
    let load = s.cluster.pgbench_load(&["-c", "2", "-T", "8"]);
    let out = check_output(
        "backup of the standby",
        backupctl(&standby_config, &["-v", "backup", "--kind", "physical"]),
    );
    load.finish();
    let id = stdout(&out).trim().to_string();
    assert!(
        stderr(&out).contains("the server is a standby")
            && !stderr(&out).contains("cannot ask the primary"),
        "{}",
        stderr(&out)
    );
    let info = common::json(&backupctl(&standby_config, &["--json", "info", &id]));
    let label = info["physical"]["backup_label"]
        .as_str()
        .unwrap_or_default();
    assert!(label.contains("BACKUP FROM: standby"), "{info}");
    assert_eq!(
        info["verification"]["outcome"], "ok",
        "the standby's backup was test-restored: {info}"
    );

    // A copy restored from it is no standby: without standby.signal, and with the
    // standby's replication settings left out, it never connects to the live primary (nor
    // would a verification's scratch server).
    let work = common::pg_tempdir();
    let copy = work.path().join("copy");
    check_output(
        "restore of the standby's backup",
        backupctl(
            &standby_config,
            &[
                "restore",
                "--backup",
                &id,
                "--pgdata",
                copy.to_str().unwrap(),
            ],
        ),
    );
    assert!(standby.pgdata.join("standby.signal").exists());
    assert!(copy.join("recovery.signal").exists());
    assert!(!copy.join("standby.signal").exists());
    let auto = std::fs::read_to_string(copy.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto
            .lines()
            .any(|l| l.trim_start().starts_with("primary_conninfo")
                || l.trim_start().starts_with("primary_slot_name")),
        "{auto}"
    );
    drop(work);

    // A logical backup of the standby works, without a restore point, and says why.
    let out = check_output(
        "logical backup of the standby",
        backupctl(&standby_config, &["backup", "--kind", "logical"]),
    );
    let logical = stdout(&out).trim().to_string();
    assert!(
        stderr(&out).contains("no restore point") && stderr(&out).contains("standby"),
        "{}",
        stderr(&out)
    );
    let info = common::json(&backupctl(&standby_config, &["--json", "info", &logical]));
    assert!(info["restore_point"].is_null(), "{info}");
    assert_eq!(info["verification"]["outcome"], "ok", "{info}");

    // Rows on the old primary, a target between them, all replayed by the standby.
    s.sql("INSERT INTO marks (tag) VALUES ('timeline-1-a')");
    common::switch_wal_and_wait(&s.cluster);
    std::thread::sleep(Duration::from_millis(20));
    let before_switch = s.now();
    std::thread::sleep(Duration::from_millis(20));
    s.sql("INSERT INTO marks (tag) VALUES ('timeline-1-b')");
    wait_replayed(&s.cluster, &standby);

    // Failover: the primary goes away, the standby is promoted and archives on.
    s.cluster.stop();
    standby.promote();
    standby.psql(
        "postgres",
        "INSERT INTO marks (tag) VALUES ('timeline-2-a')",
    );
    std::thread::sleep(Duration::from_millis(20));
    let after_switch = standby.psql(
        "postgres",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(20));
    standby.psql(
        "postgres",
        "INSERT INTO marks (tag) VALUES ('timeline-2-b')",
    );
    let seg = standby.psql(
        "postgres",
        "SELECT pg_logical_emit_message(false, 'backupctl-test', 'switch'); \
         SELECT pg_walfile_name(pg_switch_wal())",
    );
    let seg = seg.lines().last().unwrap().to_string();
    assert!(seg.starts_with("00000002"), "{seg}");
    wait_archived(&standby, &seg);

    // The new primary's own backup, on timeline 2.
    let out = check_output(
        "backup of the promoted standby",
        backupctl(
            &standby_config,
            &["backup", "--kind", "physical", "--no-verify"],
        ),
    );
    let id2 = stdout(&out).trim().to_string();
    standby.psql(
        "postgres",
        "INSERT INTO marks (tag) VALUES ('timeline-2-c')",
    );
    common::switch_wal_and_wait(&standby);

    // PITR from the standby's backup, before and after the switch: exactly the rows
    // committed before each target. (Restored copies of the standby keep its
    // unix_socket_directories.)
    let restore = |extra: &[&str]| {
        let mut r = s.restore_start(extra);
        r.socket_dir = standby.socket_dir.clone();
        r
    };
    let r = restore(&["--backup", &id, "--target-time", &before_switch]);
    assert_eq!(rows(&r), "before-backup,timeline-1-a");
    r.stop();
    let r = restore(&["--backup", &id, "--target-time", &after_switch]);
    assert_eq!(
        rows(&r),
        "before-backup,timeline-1-a,timeline-1-b,timeline-2-a"
    );
    r.stop();
    // The timeline-2 backup restores to the end of the archive.
    let r = restore(&["--backup", &id2]);
    assert_eq!(
        rows(&r),
        "before-backup,timeline-1-a,timeline-1-b,timeline-2-a,timeline-2-b,timeline-2-c"
    );
    r.stop();
    let info = common::json(&s.run(&["--json", "info"]));
    assert_eq!(
        info["wal"]["timelines"],
        serde_json::json!([1, 2]),
        "{info}"
    );
}
