//! `backupctl partitions` against real PostgreSQL 15 clusters: the current month and
//! `premake` months ahead are created with bounds from the policy's calendar (also for a
//! clock set to 31 January and to DST switches), reruns change nothing, existing
//! partitions are respected, default-partition rows block only their month (and the
//! printed fix works), unusable tables are named, dry runs change nothing, and a run
//! holding the lock on another host is reported.

mod common;

use std::path::PathBuf;

use backupctl::config::Config;
use backupctl::ops::partitions::{run_at, PartitionsSummary};
use chrono::{DateTime, Datelike, Utc};
use common::{
    backupctl, cluster_with_config, json, lock_held_on_another_host, stderr, stdout, Cluster,
    ClusterOptions, TestRepo,
};

fn setup(sql: &str, policies: &str) -> (Cluster, TestRepo, PathBuf) {
    cluster_with_config(ClusterOptions::default(), sql, policies)
}

/// (name, bound) of every partition of `table`, bounds printed in UTC.
fn partitions_of(c: &Cluster, table: &str) -> Vec<(String, String)> {
    let out = c.psql(
        "postgres",
        &format!(
            "SET TimeZone = 'UTC'; SELECT c.relname || '|' || pg_get_expr(c.relpartbound, c.oid)
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = '{table}'::regclass ORDER BY 1"
        ),
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (a, b) = l.split_once('|').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
}

/// Everything about the partitions that a rerun must not change (oids included).
fn snapshot(c: &Cluster, table: &str) -> String {
    c.psql(
        "postgres",
        &format!(
            "SELECT string_agg(c.oid || ':' || c.relname || ':' || c.relfilenode || ':' || pg_get_expr(c.relpartbound, c.oid), ', ' ORDER BY c.relname)
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '{table}'::regclass"
        ),
    )
}

/// (year, month) `k` months after today's month in UTC, computed without the crate.
fn month_after(k: i32) -> (i32, u32) {
    let today = Utc::now().date_naive();
    let idx = today.year() * 12 + today.month0() as i32 + k;
    (idx.div_euclid(12), idx.rem_euclid(12) as u32 + 1)
}

fn ym(k: i32) -> String {
    let (y, m) = month_after(k);
    format!("{y:04}_{m:02}")
}

fn first_of(k: i32) -> String {
    let (y, m) = month_after(k);
    format!("{y:04}-{m:02}-01")
}

fn statuses(report: &serde_json::Value, table: usize) -> Vec<String> {
    report["tables"][table]["months"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn creates_current_and_next_three_months_and_rerun_changes_nothing() {
    let (c, _t, config) = setup(
        "CREATE TABLE public.usage_stats (id bigint, created_at timestamptz NOT NULL, v int) PARTITION BY RANGE (created_at)",
        "[[partitions]]\ntable = \"public.usage_stats\"\ninterval = \"monthly\"\npremake = 3\ntimezone = \"UTC\"\n",
    );
    let out = backupctl(&config, &["--json", "partitions"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(statuses(&json(&out), 0), ["created"; 4]);

    let want: Vec<(String, String)> = (0..4)
        .map(|k| {
            (
                format!("usage_stats_{}", ym(k)),
                format!(
                    "FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00')",
                    first_of(k),
                    first_of(k + 1)
                ),
            )
        })
        .collect();
    assert_eq!(partitions_of(&c, "public.usage_stats"), want);

    // Rows at the edges of every month land in that month's partition.
    for k in 0..4 {
        let routed = c.psql(
            "postgres",
            &format!(
                "INSERT INTO usage_stats VALUES (1, '{}T00:00:00Z'), (2, ('{}T00:00:00Z'::timestamptz - interval '1 microsecond'))
                 RETURNING tableoid::regclass",
                first_of(k),
                first_of(k + 1)
            ),
        );
        let name = format!("usage_stats_{}", ym(k));
        assert_eq!(
            routed.lines().collect::<Vec<_>>(),
            [name.as_str(), name.as_str()]
        );
    }

    // A rerun finds everything in place and touches nothing.
    let before = snapshot(&c, "public.usage_stats");
    let out = backupctl(&config, &["--json", "partitions"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(statuses(&json(&out), 0), ["exists"; 4]);
    assert_eq!(snapshot(&c, "public.usage_stats"), before);
    assert_eq!(partitions_of(&c, "public.usage_stats"), want);
}

/// The clock is the library entry's argument: the same run a daemon job makes at `now`.
fn run_in_process(config: &std::path::Path, now: &str) -> PartitionsSummary {
    let cfg = Config::load(Some(config)).unwrap();
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339(now)
        .unwrap()
        .with_timezone(&Utc);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let summary = rt
        .block_on(run_at(&cfg, false, now, backupctl::lock::Wait::No))
        .unwrap();
    summary
        .outcome()
        .unwrap_or_else(|e| panic!("{e:#}: {summary:#?}"));
    summary
}

#[test]
fn month_bounds_on_31_january_and_at_dst_switches() {
    let (c, _t, config) = setup(
        "CREATE TABLE jan_berlin (k timestamptz) PARTITION BY RANGE (k);
         CREATE TABLE jan_ny (k timestamptz) PARTITION BY RANGE (k);
         CREATE TABLE jan_date (k date) PARTITION BY RANGE (k);
         CREATE TABLE leap_ts (k timestamp) PARTITION BY RANGE (k);",
        "[[partitions]]\ntable = \"jan_berlin\"\npremake = 2\ntimezone = \"Europe/Berlin\"\n\
         [[partitions]]\ntable = \"jan_ny\"\npremake = 2\ntimezone = \"America/New_York\"\n\
         [[partitions]]\ntable = \"jan_date\"\npremake = 1\ntimezone = \"UTC\"\n\
         [[partitions]]\ntable = \"leap_ts\"\npremake = 1\ntimezone = \"UTC\"\n",
    );
    let b = |from: &str, to: &str| format!("FOR VALUES FROM ('{from}') TO ('{to}')");

    // 31 January 23:30 UTC: already February in Berlin, still January in New York.
    run_in_process(&config, "2026-01-31T23:30:00Z");
    assert_eq!(
        partitions_of(&c, "jan_berlin"),
        [
            (
                "jan_berlin_2026_02".into(),
                b("2026-01-31 23:00:00+00", "2026-02-28 23:00:00+00")
            ),
            // March starts in winter time (+01) and ends in summer time (+02).
            (
                "jan_berlin_2026_03".into(),
                b("2026-02-28 23:00:00+00", "2026-03-31 22:00:00+00")
            ),
            (
                "jan_berlin_2026_04".into(),
                b("2026-03-31 22:00:00+00", "2026-04-30 22:00:00+00")
            ),
        ]
    );
    assert_eq!(
        partitions_of(&c, "jan_ny"),
        [
            (
                "jan_ny_2026_01".into(),
                b("2026-01-01 05:00:00+00", "2026-02-01 05:00:00+00")
            ),
            (
                "jan_ny_2026_02".into(),
                b("2026-02-01 05:00:00+00", "2026-03-01 05:00:00+00")
            ),
            (
                "jan_ny_2026_03".into(),
                b("2026-03-01 05:00:00+00", "2026-04-01 04:00:00+00")
            ),
        ]
    );
    // Wall-clock keys keep the literal dates, 28 or 29 February included.
    assert_eq!(
        partitions_of(&c, "jan_date"),
        [
            ("jan_date_2026_01".into(), b("2026-01-01", "2026-02-01")),
            ("jan_date_2026_02".into(), b("2026-02-01", "2026-03-01")),
        ]
    );

    // At the instant Berlin switches to summer time (29 March 01:00 UTC): March and April
    // exist, May is created with the same rules.
    let s = run_in_process(&config, "2026-03-29T01:00:00Z");
    let berlin: Vec<&str> = s.tables[0]
        .months
        .iter()
        .map(|m| m.month.as_str())
        .collect();
    assert_eq!(berlin, ["2026-03", "2026-04", "2026-05"]);
    assert_eq!(
        partitions_of(&c, "jan_berlin").last().unwrap(),
        &(
            "jan_berlin_2026_05".into(),
            b("2026-04-30 22:00:00+00", "2026-05-31 22:00:00+00")
        )
    );
    // The last second of March local time is in March, the first of April in April.
    let routed = c.psql(
        "postgres",
        "INSERT INTO jan_berlin VALUES ('2026-03-31 23:59:59+02'), ('2026-04-01 00:00:00+02'), ('2026-03-29 01:59:59+01')
         RETURNING tableoid::regclass",
    );
    assert_eq!(
        routed.lines().collect::<Vec<_>>(),
        [
            "jan_berlin_2026_03",
            "jan_berlin_2026_04",
            "jan_berlin_2026_03"
        ]
    );

    // New York falls back on 1 November at 02:00 EDT (06:00 UTC): November starts at
    // midnight EDT (04:00 UTC) and ends at midnight EST (05:00 UTC).
    run_in_process(&config, "2026-11-01T06:00:00Z");
    let ny = partitions_of(&c, "jan_ny");
    assert!(
        ny.contains(&(
            "jan_ny_2026_11".into(),
            b("2026-11-01 04:00:00+00", "2026-12-01 05:00:00+00")
        )),
        "{ny:?}"
    );
    assert!(
        ny.contains(&(
            "jan_ny_2027_01".into(),
            b("2027-01-01 05:00:00+00", "2027-02-01 05:00:00+00")
        )),
        "{ny:?}"
    );

    // A leap-year February for a timestamp key.
    run_in_process(&config, "2028-02-29T12:00:00Z");
    let leap = partitions_of(&c, "leap_ts");
    assert!(
        leap.contains(&(
            "leap_ts_2028_02".into(),
            b("2028-02-01 00:00:00", "2028-03-01 00:00:00")
        )),
        "{leap:?}"
    );
    assert!(
        leap.contains(&(
            "leap_ts_2028_03".into(),
            b("2028-03-01 00:00:00", "2028-04-01 00:00:00")
        )),
        "{leap:?}"
    );
}

#[test]
fn existing_partitions_are_respected_and_reported_not_duplicated() {
    let (c, _t, config) = setup(
        &format!(
            "CREATE TABLE a (k date) PARTITION BY RANGE (k);
             CREATE TABLE a_custom PARTITION OF a FOR VALUES FROM ('{m0}') TO ('{m1}');
             CREATE TABLE a_wide PARTITION OF a FOR VALUES FROM ('{m1}') TO ('{m3}');
             CREATE TABLE b (k date) PARTITION BY RANGE (k);
             CREATE TABLE b_{y0} (k date);
             CREATE TABLE b_odd PARTITION OF b FOR VALUES FROM ('{m2}'::date + 14) TO ('{m3}'::date + 14);",
            m0 = first_of(0),
            m1 = first_of(1),
            m2 = first_of(2),
            m3 = first_of(3),
            y0 = ym(0),
        ),
        "[[partitions]]\ntable = \"a\"\npremake = 3\n[[partitions]]\ntable = \"b\"\npremake = 3\n",
    );
    let out = backupctl(&config, &["--json", "partitions"]);
    // Table b needs a human: exit 1, with the report on stdout.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("need attention"), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(statuses(&r, 0), ["exists", "covered", "covered", "created"]);
    assert_eq!(
        r["tables"][0]["months"][0]["detail"],
        "exists as public.a_custom"
    );
    assert_eq!(
        statuses(&r, 1),
        ["name_taken", "created", "overlap", "overlap"]
    );
    let a: Vec<String> = partitions_of(&c, "a").into_iter().map(|p| p.0).collect();
    assert_eq!(
        a,
        [format!("a_{}", ym(3)), "a_custom".into(), "a_wide".into()]
    );
    let b: Vec<String> = partitions_of(&c, "b").into_iter().map(|p| p.0).collect();
    assert_eq!(b, [format!("b_{}", ym(1)), "b_odd".into()]);
    // The unattached table that holds the name was left alone.
    assert_eq!(
        c.psql(
            "postgres",
            &format!(
                "SELECT relispartition FROM pg_class WHERE relname = 'b_{}'",
                ym(0)
            )
        ),
        "f"
    );
}

#[test]
fn default_partition_rows_block_only_their_month_and_the_printed_fix_works() {
    let (c, _t, config) = setup(
        &format!(
            "CREATE TABLE ev (id bigint GENERATED ALWAYS AS IDENTITY, created_at timestamptz NOT NULL,
                              a int, doubled int GENERATED ALWAYS AS (a * 2) STORED, PRIMARY KEY (id, created_at))
               PARTITION BY RANGE (created_at);
             CREATE TABLE ev_default PARTITION OF ev DEFAULT;
             INSERT INTO ev (created_at, a) SELECT '{m2}T12:00:00Z'::timestamptz + i * interval '1 hour', i FROM generate_series(1, 3) i;
             INSERT INTO ev (created_at, a) VALUES ('2001-01-01T00:00:00Z', 99);",
            m2 = first_of(2)
        ),
        "[[partitions]]\ntable = \"public.ev\"\n",
    );
    let out = backupctl(&config, &["partitions"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("blocked"), "{text}");
    assert!(
        text.contains("default partition public.ev_default holds 3 row(s) of this month"),
        "{text}"
    );
    let names: Vec<String> = partitions_of(&c, "ev").into_iter().map(|p| p.0).collect();
    assert_eq!(
        names,
        [
            format!("ev_{}", ym(0)),
            format!("ev_{}", ym(1)),
            format!("ev_{}", ym(3)),
            "ev_default".into()
        ]
    );

    // The JSON report carries the count and the SQL that resolves it; run that SQL.
    let out = backupctl(&config, &["--json", "partitions", "--dry-run"]);
    let r = json(&out);
    let blocked = &r["tables"][0]["months"][2];
    assert_eq!(blocked["status"], "blocked");
    assert_eq!(blocked["default_rows"], 3);
    let fix = blocked["resolve"].as_str().unwrap();
    let before = c.psql("postgres", "SELECT string_agg(id || ':' || created_at || ':' || a || ':' || doubled, ',' ORDER BY id) FROM ev");
    c.psql("postgres", fix);
    let out = backupctl(&config, &["--json", "partitions"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(statuses(&json(&out), 0), ["exists"; 4]);
    // Every row kept its values; the month's rows now live in the month's partition.
    let after = c.psql("postgres", "SELECT string_agg(id || ':' || created_at || ':' || a || ':' || doubled, ',' ORDER BY id) FROM ev");
    assert_eq!(after, before);
    assert_eq!(
        c.psql("postgres", &format!("SELECT count(*) FROM ev_{}", ym(2))),
        "3"
    );
    assert_eq!(c.psql("postgres", "SELECT count(*) FROM ev_default"), "1");
}

#[test]
fn unusable_tables_are_named_with_exit_2() {
    let (_c, t, _) = setup(
        "CREATE TABLE plain (k date);
         CREATE TABLE listed (k date) PARTITION BY LIST (k);
         CREATE TABLE by_int (k int) PARTITION BY RANGE (k);
         CREATE TABLE by_expr (k timestamptz) PARTITION BY RANGE (date(k AT TIME ZONE 'UTC'));
         CREATE TABLE by_two (k date, j date) PARTITION BY RANGE (k, j);",
        "",
    );
    let c = &_c;
    let cases = [
        ("missing", "does not exist in database postgres"),
        ("plain", "is not partitioned"),
        ("listed", "not by RANGE"),
        ("by_int", "k is integer"),
        ("by_expr", "not several columns or an expression"),
        ("by_two", "not several columns or an expression"),
    ];
    for (table, why) in cases {
        let config = t.write_config(
            &format!("{table}.toml"),
            &format!(
                "{}\n[[partitions]]\ntable = \"{table}\"\n",
                c.postgres_toml()
            ),
        );
        let out = backupctl(&config, &["partitions"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{table}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(
            text.contains(&format!("table {table}"))
                || text.contains(&format!("table public.{table}")),
            "{table}: {text}"
        );
        assert!(text.contains(why), "{table}: {text}");
    }
}

#[test]
fn dry_run_prints_the_sql_and_changes_nothing() {
    let (c, _t, config) = setup(
        "CREATE TABLE m (k timestamptz) PARTITION BY RANGE (k)",
        "[[partitions]]\ntable = \"m\"\npremake = 1\ntimezone = \"UTC\"\n",
    );
    let catalog = "SELECT count(*) || ':' || max(oid::int8) FROM pg_class";
    let before = c.psql("postgres", catalog);
    let out = backupctl(&config, &["partitions", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for k in 0..2 {
        let stmt = format!(
            "CREATE TABLE \"public\".\"m_{}\" PARTITION OF \"public\".\"m\" FOR VALUES FROM ('{} 00:00:00+00') TO ('{} 00:00:00+00');",
            ym(k),
            first_of(k),
            first_of(k + 1)
        );
        assert!(text.contains(&stmt), "{text}");
    }
    assert!(
        text.contains("would_create") && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(c.psql("postgres", catalog), before);
    assert!(partitions_of(&c, "m").is_empty());
}

#[test]
fn a_run_holding_the_lock_elsewhere_is_reported() {
    let (c, t, config) = setup(
        "CREATE TABLE l (k date) PARTITION BY RANGE (k)",
        "[[partitions]]\ntable = \"l\"\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Another host's run: a session holding the partitions advisory lock.
    let other = lock_held_on_another_host(&rt, &c, "partitions", 1);
    let out = backupctl(&config, &["partitions"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("advisory lock") && err.contains("host db2, pid 4242"),
        "{err}"
    );
    assert!(partitions_of(&c, "l").is_empty());

    // This host's own run in progress: the job lock in state_dir.
    drop(other);
    let cfg = Config::load(Some(&config)).unwrap();
    let held = backupctl::lock::acquire(
        &cfg.backup.state_dir,
        "partitions",
        backupctl::lock::Wait::No,
    )
    .unwrap();
    common::chown_to_pg(&held.path);
    let out = backupctl(&config, &["partitions"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a partitions job is already running (pid"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("wait for it to finish") && !stderr(&out).contains("--no-wait"),
        "{}",
        stderr(&out)
    );
    drop(held);
    let out = backupctl(&config, &["partitions"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(partitions_of(&c, "l").len(), 4);
    drop(t);
}

#[test]
fn name_format_names_new_months_and_gaps_are_reported_then_backfilled() {
    // A schema designed before backupctl: children named usage_stats_YYYY_MM under a
    // parent called usage_stats_partitioned, one of them under a name of its own.
    let schema =
        "CREATE TABLE usage_stats_partitioned (id bigint, recorded_on date NOT NULL, v int)
                    PARTITION BY RANGE (recorded_on);
                  CREATE TABLE usage_stats_2024_01 PARTITION OF usage_stats_partitioned
                    FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
                  CREATE TABLE usage_stats_2024_02 PARTITION OF usage_stats_partitioned
                    FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
                  CREATE TABLE stats_may_2024 PARTITION OF usage_stats_partitioned
                    FOR VALUES FROM ('2024-05-01') TO ('2024-06-01');";
    let policy = "[[partitions]]\ntable = \"usage_stats_partitioned\"\nname_format = \"usage_stats_{YYYY}_{MM}\"\npremake = 3\ntimezone = \"UTC\"\n";
    let (c, t, config) = setup(schema, policy);
    let now = "2026-12-03T02:00:00Z";

    // Without backfill: the premake months are created under the configured names, the
    // gaps (2024-03, 2024-04, 2024-06 … 2026-11) are reported with their SQL, not created.
    let s = run_in_process(&config, now);
    let months = &s.tables[0].months;
    let gaps: Vec<&str> = months
        .iter()
        .filter(|m| m.backfill)
        .map(|m| m.month.as_str())
        .collect();
    let mut want_gaps = vec!["2024-03".to_string(), "2024-04".to_string()];
    want_gaps.extend((6..=12).map(|m| format!("2024-{m:02}")));
    want_gaps.extend((1..=12).map(|m| format!("2025-{m:02}")));
    want_gaps.extend((1..=11).map(|m| format!("2026-{m:02}")));
    assert_eq!(gaps, want_gaps);
    assert!(months
        .iter()
        .filter(|m| m.backfill)
        .all(|m| m.status.as_str() == "missing"));
    let march = months.iter().find(|m| m.month == "2024-03").unwrap();
    assert_eq!(
        march.sql.as_deref(),
        Some("CREATE TABLE \"public\".\"usage_stats_2024_03\" PARTITION OF \"public\".\"usage_stats_partitioned\" FOR VALUES FROM ('2024-03-01') TO ('2024-04-01')")
    );
    let premade: Vec<(&str, &str, &str)> = months
        .iter()
        .filter(|m| !m.backfill)
        .map(|m| (m.month.as_str(), m.partition.as_str(), m.status.as_str()))
        .collect();
    assert_eq!(
        premade,
        [
            ("2026-12", "public.usage_stats_2026_12", "created"),
            ("2027-01", "public.usage_stats_2027_01", "created"),
            ("2027-02", "public.usage_stats_2027_02", "created"),
            ("2027-03", "public.usage_stats_2027_03", "created"),
        ]
    );
    let names = |c: &Cluster| -> Vec<String> {
        partitions_of(c, "usage_stats_partitioned")
            .into_iter()
            .map(|p| p.0)
            .collect()
    };
    assert_eq!(names(&c).len(), 3 + 4);
    // The CLI prints the gap, its SQL and what to do, and still exits 0. (A dry run:
    // the in-process runs above own the state directory as this test's user.)
    let out = backupctl(&config, &["partitions", "--dry-run"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("2024-03  public.usage_stats_2024_03"),
        "{text}"
    );
    assert!(
        text.contains("FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');"),
        "{text}"
    );
    let summary = format!(
        "{} month(s) between the oldest partition and now have no partition",
        want_gaps.len()
    );
    assert!(text.contains(&summary), "{text}");

    // With backfill: every gap is created under the configured name, the partition
    // with its own name is recognised by its bounds, and rows of every month route.
    let config = t.write_config(
        "backfill.toml",
        &format!("{}\n{policy}backfill = true\n", c.postgres_toml()),
    );
    let s = run_in_process(&config, now);
    let created: Vec<&str> = s.tables[0]
        .months
        .iter()
        .filter(|m| m.backfill && m.status.as_str() == "created")
        .map(|m| m.month.as_str())
        .collect();
    assert_eq!(created, want_gaps);
    let mut want: Vec<String> = (2024..=2027)
        .flat_map(|y| (1..=12).map(move |m| (y, m)))
        .filter(|&(y, m)| (y, m) <= (2027, 3) && (y, m) != (2024, 5))
        .map(|(y, m)| format!("usage_stats_{y}_{m:02}"))
        .collect();
    want.push("stats_may_2024".into());
    want.sort();
    assert_eq!(names(&c), want);
    assert_eq!(
        c.psql(
            "postgres",
            "INSERT INTO usage_stats_partitioned
             SELECT i, '2024-01-15'::date + i * interval '1 month', i FROM generate_series(0, 38) i;
             SELECT count(DISTINCT tableoid) FROM usage_stats_partitioned"
        ),
        "39"
    );
    // A rerun has nothing left to do.
    let s = run_in_process(&config, now);
    assert!(s.tables[0].months.iter().all(|m| !m.backfill), "{s:#?}");
    assert!(s.tables[0]
        .months
        .iter()
        .all(|m| m.status.as_str() == "exists"));
}
