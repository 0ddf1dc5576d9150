//! `<archive_schema>.archive_log`: one row per (run, table) — what moved, when, and how
//! the run ended.
//!
//! The row is inserted (status `running`) and committed before anything moves; each
//! batch or partition move updates its counters inside its own transaction, so the log
//! never disagrees with the data, even after a kill. A run that died leaves its row
//! `running` with `finished` empty; the next run — which holds the advisory lock, so
//! nobody else can be running — marks such rows `interrupted` (still unfinished).

use anyhow::Context;
use tokio_postgres::Client;

use super::plan;
use crate::partitions::catalog;
use crate::pg::sql;

/// `archive_log` in `schema`, quoted.
pub fn table(schema: &str) -> String {
    sql::qualified(schema, "archive_log")
}

/// `None` when there is no `archive_log` yet; otherwise what is wrong with its layout
/// (empty when it is ours).
pub async fn layout_problems(client: &Client, schema: &str) -> anyhow::Result<Option<Vec<String>>> {
    let Some(oid) = super::inspect::relation(client, schema, "archive_log").await? else {
        return Ok(None);
    };
    let cols = catalog::columns(client, oid).await?;
    Ok(Some(plan::log_mismatches(&cols)))
}

/// One run's row.
#[derive(Debug, Clone)]
pub struct Entry {
    pub log: String,
    pub id: i64,
}

/// What the row records at the start.
pub struct Start<'a> {
    pub run_id: &'a str,
    pub table: &'a str,
    pub archive_table: &'a str,
    pub mode: &'a str,
    pub cutoff: &'a str,
    pub older_than: &'a str,
    pub host: &'a str,
}

/// Mark rows of earlier runs of `table` that never finished, then insert this run's row.
pub async fn start(client: &Client, schema: &str, s: &Start<'_>) -> anyhow::Result<Entry> {
    let log = table(schema);
    let stale = client
        .execute(
            &format!(
                "UPDATE {log} SET status = 'interrupted',
                        error = coalesce(error || '; ', '') || 'the run ended without finishing (process killed or connection lost); found by run ' || $2
                  WHERE table_name = $1 AND status = 'running'"
            ),
            &[&s.table, &s.run_id],
        )
        .await
        .context("mark interrupted runs in archive_log")?;
    if stale > 0 {
        tracing::warn!(
            table = s.table,
            runs = stale,
            "earlier archive run(s) of this table did not finish; marked interrupted"
        );
    }
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {log} (run_id, table_name, archive_table, mode, cutoff, older_than, host)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"
            ),
            &[&s.run_id, &s.table, &s.archive_table, &s.mode, &s.cutoff, &s.older_than, &s.host],
        )
        .await
        .context("insert into archive_log")?;
    Ok(Entry {
        log,
        id: row.get(0),
    })
}

impl Entry {
    pub async fn finish(&self, client: &Client) -> anyhow::Result<()> {
        client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'finished', finished = clock_timestamp() WHERE id = $1",
                    self.log
                ),
                &[&self.id],
            )
            .await
            .context("record the finished run in archive_log")?;
        Ok(())
    }

    /// Best effort: the connection may be what failed.
    pub async fn fail(&self, client: &Client, error: &str) {
        let r = client
            .execute(
                &format!(
                    "UPDATE {} SET status = 'failed', finished = clock_timestamp(), error = $2 WHERE id = $1",
                    self.log
                ),
                &[&self.id, &error],
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(
                log_id = self.id,
                "could not record the failure in archive_log: {e}"
            );
        }
    }
}
