//! `<archive_schema>.archive_log`: one row per (run, table) — what moved, when, and how
//! the run ended.
//!
//! The row is inserted (status `running`) and committed before anything moves; each
//! batch or partition move updates its counters inside its own transaction, so the log
//! never disagrees with the data, even after a kill. A run that died leaves its row
//! `running` with `finished` empty; the next run — which holds the advisory lock, so
//! nobody else can be running — marks such rows `interrupted` (still unfinished).
//! Closing the row (finished or failed) runs the policy's audit statement in the same
//! transaction.

use anyhow::Context;
use tokio_postgres::Client;

use super::audit::{Audit, RunValues};
use super::plan;
use crate::partitions::catalog;
use crate::pg::retry::transaction;
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
    /// Close the row as `finished`, running the audit statement in the same transaction.
    pub async fn finish(&self, client: &Client, audit: Option<&Audit>) -> anyhow::Result<()> {
        self.close(client, "finished", None, audit)
            .await
            .context("record the finished run in archive_log")
    }

    /// Best effort: the connection may be what failed. The audit statement runs with the
    /// row; when it is what fails, the row is closed without it (the error says so).
    pub async fn fail(&self, client: &Client, error: &str, audit: Option<&Audit>) {
        let mut r = self.close(client, "failed", Some(error), audit).await;
        if let (Err(e), Some(_)) = (&r, audit) {
            let error = format!("{error}; the audit statement failed too: {e:#}");
            r = self.close(client, "failed", Some(&error), None).await;
        }
        if let Err(e) = r {
            tracing::warn!(
                log_id = self.id,
                "could not record the failure in archive_log: {e:#}"
            );
        }
    }

    async fn close(
        &self,
        client: &Client,
        status: &str,
        error: Option<&str>,
        audit: Option<&Audit>,
    ) -> anyhow::Result<()> {
        let q = format!(
            "UPDATE {} SET status = $2, finished = clock_timestamp(), error = coalesce($3, error)
              WHERE id = $1
              RETURNING table_name, archive_table, cutoff, older_than, mode, rows_moved,
                        partitions_moved, run_id, started, finished, host, error",
            self.log
        );
        transaction(client, |c| async move {
            let row = c.query_one(&q, &[&self.id, &status, &error]).await?;
            if let Some(a) = audit {
                let v = RunValues {
                    table: row.get(0),
                    archive_table: row.get(1),
                    cutoff: row.get(2),
                    older_than: row.get(3),
                    mode: row.get(4),
                    rows_moved: row.get(5),
                    partitions_moved: row.get(6),
                    run_id: row.get(7),
                    log_id: self.id,
                    started: row.get(8),
                    finished: row.get(9),
                    status: status.to_string(),
                    error: row.get(11),
                    host: row.get(10),
                };
                c.execute(&a.sql, &a.bind(&v))
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", catalog::pg_message(&e)))
                    .context("run audit_sql")?;
            }
            anyhow::Ok(())
        })
        .await
    }
}
