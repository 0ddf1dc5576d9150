//! Partitions mode: detach every partition whose whole range is older than the cutoff
//! and move it into the archive schema (`ALTER TABLE … SET SCHEMA`): catalog changes
//! only, no row is copied, so a month of data moves in milliseconds.
//!
//! Each partition moves in its own transaction (detach, set schema, count it in
//! `archive_log`) under `lock_timeout`, retried when it loses a lock race: either the
//! partition is still attached in the source schema or it is detached in the archive
//! schema, never in between. Partitions that straddle the cutoff, the default
//! partition, and sub-partitioned partitions are reported, not moved.

use serde::Serialize;
use tokio_postgres::Client;

use super::inspect::{self, Source};
use super::log::Entry;
use super::plan::{fate, move_partition_sql, Fate};
use crate::partitions::bounds::Pos;
use crate::partitions::catalog::{self, Child, RangeKey};
use crate::pg::retry::{set_local_lock_timeout, transaction, with_lock_retries, On};
use crate::pg::sql;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartStatus {
    Moved,
    WouldMove,
    /// Stays where it is (newer, straddling, default, sub-partitioned): see `detail`.
    Left,
    /// Would move, but a relation with its name already exists in the archive schema.
    NameTaken,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub partition: String,
    pub bound: String,
    pub fate: Fate,
    pub status: PartStatus,
    /// Rows in it (moving partitions) or rows older than the cutoff in it (others);
    /// the planner's estimate.
    pub estimated_rows: i64,
    /// The same, counted (`--exact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_rows: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(skip)]
    pub child: Option<Child>,
}

/// Decide the fate of every direct partition. `rows_policy` says whether a rows-mode
/// policy for the same table takes the old rows of partitions that stay.
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    client: &Client,
    s: &Source,
    key: &RangeKey,
    cutoff: &str,
    cutoff_pos: Pos,
    archive_schema: &str,
    rows_policy: bool,
    log: &str,
) -> anyhow::Result<Vec<PartitionReport>> {
    let children = catalog::children(client, &s.table, key.key).await?;
    let old = format!(
        "{} < {}::{}",
        sql::ident(&key.column),
        sql::literal(cutoff),
        key.key.sql()
    );
    let leftover = if rows_policy {
        "its rows older than the cutoff are left to the rows-mode [[archive]] policy of this table"
    } else {
        "its rows older than the cutoff stay; add an [[archive]] entry with mode = \"rows\" for this table to move them"
    };
    let mut out = Vec::new();
    for c in children {
        let f = fate(c.range, c.is_default, c.relkind == "p", cutoff_pos);
        let (estimated_rows, status, detail, sql) = match f {
            Fate::Move => {
                let n = catalog::estimate_rows(client, &format!("SELECT 1 FROM {}", c.quoted()))
                    .await?;
                if inspect::relation(client, archive_schema, &c.name)
                    .await?
                    .is_some()
                {
                    let d = format!(
                        "{archive_schema}.{} already exists; rename one of them, then rerun",
                        c.name
                    );
                    (n, PartStatus::NameTaken, Some(d), None)
                } else {
                    let q = move_partition_sql(
                        &s.table.quoted(),
                        &c.quoted(),
                        &c.name,
                        archive_schema,
                        log,
                        0,
                    );
                    (n, PartStatus::WouldMove, None, Some(q))
                }
            }
            Fate::Newer => (0, PartStatus::Left, None, None),
            Fate::SubPartitioned => {
                let n = catalog::estimate_rows(client, &format!("SELECT 1 FROM {}", c.quoted()))
                    .await?;
                let d = "entirely older than the cutoff but itself partitioned; SET SCHEMA would leave its partitions behind, so it stays — archive its partitions by hand".to_string();
                (n, PartStatus::Left, Some(d), None)
            }
            Fate::Straddles | Fate::Default => {
                let n = catalog::estimate_rows(
                    client,
                    &format!("SELECT 1 FROM {} WHERE {old}", c.quoted()),
                )
                .await?;
                let what = if f == Fate::Default {
                    "default partition"
                } else {
                    "straddles the cutoff"
                };
                (
                    n,
                    PartStatus::Left,
                    Some(format!("{what}: {leftover}")),
                    None,
                )
            }
        };
        out.push(PartitionReport {
            partition: c.display(),
            bound: c.bound.clone(),
            fate: f,
            status,
            estimated_rows,
            counted_rows: None,
            detail,
            sql,
            child: Some(c),
        });
    }
    Ok(out)
}

/// Move the planned partitions; each failure is recorded and the others still move.
pub async fn execute(
    client: &Client,
    s: &Source,
    archive_schema: &str,
    lock_timeout: std::time::Duration,
    entry: &Entry,
    parts: &mut [PartitionReport],
) -> usize {
    let mut moved = 0;
    for p in parts
        .iter_mut()
        .filter(|p| p.status == PartStatus::WouldMove)
    {
        let c = p
            .child
            .as_ref()
            .expect("planned partitions carry their catalog row");
        let q = move_partition_sql(
            &s.table.quoted(),
            &c.quoted(),
            &c.name,
            archive_schema,
            &entry.log,
            entry.id,
        );
        p.sql = Some(q.clone());
        let what = format!("move partition {} to schema {archive_schema}", p.partition);
        let q = &q;
        let on = On {
            client,
            relations: vec![s.table.quoted(), c.quoted()],
        };
        let res = with_lock_retries(Some(on), &what, || {
            transaction(client, move |c| async move {
                set_local_lock_timeout(c, lock_timeout).await?;
                c.batch_execute(q).await?;
                anyhow::Ok(())
            })
        })
        .await;
        match res {
            Ok(()) => {
                moved += 1;
                p.status = PartStatus::Moved;
                p.detail = Some(format!("now {archive_schema}.{}", c.name));
                tracing::info!(table = %s.table.display(), partition = %p.partition, "moved partition to schema {archive_schema}");
            }
            Err(e) => {
                tracing::error!(partition = %p.partition, "{what}: {e:#}");
                p.status = PartStatus::Failed;
                p.detail = Some(format!("{what}: {e:#}"));
            }
        }
    }
    moved
}
