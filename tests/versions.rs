//! Behaviour that differs between PostgreSQL versions, each tested on the versions that
//! have it: `scripts/test` runs this file on 15 and, in the version matrix, on 16, 17
//! and 18.

mod common;

use std::time::Duration;

use backupctl::pg::wal::Lsn;
use backupctl::pg::walsummary::{self, RelFork};
use common::{pg_bin, Cluster, ClusterOptions};

/// The major version of the server programs under test.
fn server_major() -> u32 {
    let out = std::process::Command::new(pg_bin("postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "postgres (PostgreSQL) 17.10", "… 18beta1": the digits the version starts with.
    text.split_whitespace()
        .find_map(|w| {
            let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no version in {text:?}"))
}

/// PostgreSQL 17+'s WAL summaries name the blocks an LSN range changed: the updated
/// blocks of one table, none of an untouched one, a limit block for a truncated one.
#[tokio::test(flavor = "current_thread")]
async fn wal_summaries_name_the_blocks_that_changed() {
    let major = server_major();
    if major < walsummary::FIRST_MAJOR {
        eprintln!("skipped: PostgreSQL {major} has no WAL summaries (17 and later)");
        return;
    }
    let cluster = Cluster::new(ClusterOptions {
        // No autovacuum: its records would change blocks inside the range measured.
        conf: vec!["summarize_wal = on".into(), "autovacuum = off".into()],
        ..Default::default()
    });
    let sql = |q: &str| cluster.psql("postgres", q);
    // Three tables of 100 blocks each (fillfactor 10: about 20 rows per 8 kB block).
    for t in ["changed", "untouched", "emptied"] {
        sql(&format!(
            "CREATE TABLE {t} (id int, pad text) WITH (fillfactor = 10); \
             INSERT INTO {t} SELECT g, repeat('x', 30) FROM generate_series(1, 2000) g"
        ));
    }
    sql("CHECKPOINT");
    let client = cluster.connect("postgres").await;
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, \
                    (SELECT timeline_id FROM pg_control_checkpoint())::int8",
            &[],
        )
        .await
        .unwrap();
    let start: Lsn = row.get::<_, String>(0).parse().unwrap();
    let tli = row.get::<_, i64>(1) as u32;
    // Rows of blocks 10 and 50 of `changed` (ctid picks them exactly).
    sql("UPDATE changed SET pad = 'y' WHERE ctid IN ('(10,1)', '(50,2)')");
    sql("TRUNCATE emptied");
    sql("CHECKPOINT");
    let end: Lsn = sql("SELECT redo_lsn FROM pg_control_checkpoint()")
        .parse()
        .unwrap();
    assert!(
        walsummary::wait_summarized(&client, major, end, Duration::from_secs(60))
            .await
            .unwrap(),
        "the WAL summarizer did not reach {end}"
    );
    let changes = walsummary::changed_blocks(&client, tli, start, end)
        .await
        .unwrap()
        .expect("summaries cover the range");
    let fork_of = |table: &str| -> Option<RelFork> {
        let q = format!(
            "SELECT pg_relation_filenode('{table}') || ' ' || \
                    (SELECT oid FROM pg_database WHERE datname = current_database())"
        );
        let out = sql(&q);
        let (node, db) = out.split_once(' ').unwrap();
        changes.forks.keys().copied().find(|f| {
            f.relfilenode == node.parse::<u32>().unwrap()
                && f.database == db.parse::<u32>().unwrap()
                && f.fork == 0
        })
    };
    let changed = fork_of("changed").expect("the updated table's main fork is listed");
    let blocks = &changes.forks[&changed].blocks;
    assert!(
        blocks.contains(&10) && blocks.contains(&50),
        "blocks {blocks:?}"
    );
    // A HOT update fits in its block; a non-HOT one moves the row to another block, which
    // is listed too, but never most of the table.
    assert!(blocks.len() <= 4, "blocks {blocks:?}");
    assert_eq!(changes.forks[&changed].limit, None);
    assert_eq!(fork_of("untouched"), None, "{changes:?}");
    // TRUNCATE gives the table a new, empty relfilenode, created in the range: limit 0.
    let emptied = fork_of("emptied").expect("the truncated table's new fork is listed");
    assert_eq!(changes.forks[&emptied].limit, Some(0));

    // A range the summaries do not cover is refused, saying why.
    let why = walsummary::changed_blocks(&client, tli, Lsn(0), end)
        .await
        .unwrap()
        .unwrap_err();
    assert!(why.contains("no WAL summary"), "{why}");
}

/// Before 17 there is no summarizer, and asking is not an error.
#[tokio::test(flavor = "current_thread")]
async fn without_wal_summaries_the_state_is_none() {
    let major = server_major();
    let cluster = Cluster::new(ClusterOptions::default());
    let client = cluster.connect("postgres").await;
    // summarize_wal is off by default from 17 on; before 17 it does not exist.
    assert_eq!(
        walsummary::summarizer_state(&client, major).await.unwrap(),
        None
    );
    assert!(
        !walsummary::wait_summarized(&client, major, Lsn(1), Duration::from_secs(1))
            .await
            .unwrap()
    );
}
