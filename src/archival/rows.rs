//! Rows mode: move rows older than the cutoff into the archive table in short batches.
//!
//! Each batch is one transaction holding one statement (`plan::batch_sql`): delete up to
//! `batch_size` rows by `ctid`, insert exactly the deleted rows, count them in
//! `archive_log`. Inside the transaction the statement's deleted and inserted counts
//! are compared; a difference rolls everything back and stops the run. Batches run under
//! `lock_timeout` and are retried when they lose a lock race. Killing the process at any
//! point leaves every committed batch complete and the current one rolled back, so a
//! rerun simply continues.
//!
//! Per leaf table, batches walk a cursor to the end (a "pass"); then a pass from the
//! start must find nothing, which proves no old row was skipped (rows updated under a
//! batch, or inserted behind the cursor, are caught there).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use super::inspect::Leaf;
use super::log::Entry;
use super::plan::{batch_settings, batch_sql, Batch};
use crate::partitions::calendar::KeyType;
use crate::pg::retry::{set_local_lock_timeout, transaction, with_lock_retries, On};

/// What one table's row archival did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RowStats {
    pub rows_moved: i64,
    pub batches: i64,
    /// Longest batch transaction, BEGIN to COMMIT.
    pub longest_batch_ms: f64,
    /// Time spent in batches (setup excluded).
    pub elapsed_ms: f64,
    pub rows_per_second: f64,
}

/// The fixed parts of every batch of one table.
pub struct Job<'a> {
    pub client: &'a Client,
    pub source: &'a str,
    pub archive: &'a str,
    pub columns: &'a [String],
    pub column: &'a str,
    pub key: KeyType,
    pub cutoff: &'a str,
    pub batch_size: u32,
    pub lock_timeout: Duration,
    pub log: &'a Entry,
}

/// Move every row older than the cutoff out of `leaves`. `stats` holds what was done
/// even when the run fails part-way.
pub async fn run(job: &Job<'_>, leaves: &[Leaf], stats: &mut RowStats) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    let res = walk(job, leaves, stats, started, &mut longest).await;
    let elapsed = started.elapsed();
    stats.longest_batch_ms = longest.as_secs_f64() * 1e3;
    stats.elapsed_ms = elapsed.as_secs_f64() * 1e3;
    stats.rows_per_second = if elapsed.as_secs_f64() > 0.0 {
        stats.rows_moved as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    res
}

async fn walk(
    job: &Job<'_>,
    leaves: &[Leaf],
    stats: &mut RowStats,
    started: Instant,
    longest: &mut Duration,
) -> anyhow::Result<()> {
    let mut last_progress = Instant::now();
    for leaf in leaves {
        let mut pass = 1;
        loop {
            let mut pass_moved = 0i64;
            let mut after: Option<String> = None;
            loop {
                let sql = batch_sql(&Batch {
                    leaf: &leaf.quoted,
                    archive: job.archive,
                    columns: job.columns,
                    column: job.column,
                    key: job.key,
                    cutoff: job.cutoff,
                    limit: job.batch_size,
                    cursor: &leaf.cursor,
                    after: after.as_deref(),
                    log: &job.log.log,
                    log_id: job.log.id,
                });
                let settings = batch_settings(&leaf.cursor);
                let what = format!("archive batch on {}", leaf.table);
                let (moved, next, took) = with_lock_retries(Some(On { client: job.client, relations: vec![leaf.quoted.clone(), job.archive.to_string()] }), &what, || async {
                    let t0 = Instant::now();
                    let (moved, next) = transaction(job.client, |c| async {
                        set_local_lock_timeout(c, job.lock_timeout).await?;
                        if !settings.is_empty() {
                            c.batch_execute(settings).await?;
                        }
                        let row = c.query_one(&sql, &[]).await?;
                        let (deleted, inserted): (i64, i64) = (row.get(0), row.get(1));
                        anyhow::ensure!(
                            deleted == inserted,
                            "batch on {} deleted {deleted} rows but inserted {inserted} into {}; rolled back",
                            leaf.table,
                            job.archive
                        );
                        crate::failpoint::point("archive.mid-transaction");
                        Ok((deleted, row.get::<_, Option<String>>(2)))
                    })
                    .await?;
                    Ok((moved, next, t0.elapsed()))
                })
                .await?;
                *longest = (*longest).max(took);
                stats.rows_moved += moved;
                stats.batches += 1;
                pass_moved += moved;
                tracing::debug!(leaf = %leaf.table, pass, rows = moved, ms = took.as_secs_f64() * 1e3, "batch committed");
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    last_progress = Instant::now();
                    tracing::info!(
                        table = job.source,
                        rows = stats.rows_moved,
                        batches = stats.batches,
                        rows_per_second =
                            (stats.rows_moved as f64 / started.elapsed().as_secs_f64()).round(),
                        "archiving rows older than {}",
                        job.cutoff
                    );
                }
                if moved < i64::from(job.batch_size) || next.is_none() {
                    break;
                }
                after = next;
            }
            if pass_moved == 0 {
                break;
            }
            pass += 1;
        }
    }
    Ok(())
}
