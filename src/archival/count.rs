//! How many rows a run would move: exact counts for `archive --dry-run --exact`, and for
//! the default planner estimate, when its statistics were gathered.
//!
//! An estimate is only as good as the last ANALYZE; a table never analysed (or loaded
//! since) can be off by any factor, so a report that shows an estimate also shows the
//! oldest ANALYZE behind it and names the tables never analysed. A count reads every
//! old row (an index scan when one leads with the column), which is why it is opt-in.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::inspect::{Leaf, Source};
use super::partmode::{PartStatus, PartitionReport};
use super::plan::Fate;
use crate::partitions::calendar::KeyType;
use crate::pg::sql;

/// When the statistics behind an estimate were gathered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analyzed {
    /// The oldest last ANALYZE (manual or auto) among the tables that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<DateTime<Utc>>,
    /// Tables never analysed: their estimate is a guess.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub never: Vec<String>,
}

/// The ANALYZE times of the relations `oids`.
pub async fn analyzed(client: &Client, oids: &[u32]) -> anyhow::Result<Analyzed> {
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, greatest(s.last_analyze, s.last_autoanalyze)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
              WHERE c.oid = ANY($1::oid[])
              ORDER BY 1",
            &[&oids],
        )
        .await
        .context("read when the tables were last analysed")?;
    let mut out = Analyzed::default();
    for r in rows {
        match r.get::<_, Option<DateTime<Utc>>>(1) {
            Some(t) => out.oldest = Some(out.oldest.map_or(t, |o| o.min(t))),
            None => out.never.push(r.get(0)),
        }
    }
    Ok(out)
}

/// `column < cutoff` for a key of type `key`.
fn older(column: &str, key: KeyType, cutoff: &str) -> String {
    format!(
        "{} < {}::{}",
        sql::ident(column),
        sql::literal(cutoff),
        key.sql()
    )
}

async fn count(client: &Client, query: &str, what: &str) -> anyhow::Result<i64> {
    let row = client
        .query_one(query, &[])
        .await
        .with_context(|| format!("count the rows of {what}"))?;
    Ok(row.get(0))
}

/// Count each leaf's rows older than the cutoff; returns the total.
pub async fn leaves(
    client: &Client,
    s: &Source,
    cutoff: &str,
    leaves: &mut [Leaf],
) -> anyhow::Result<i64> {
    let cond = older(&s.column.name, s.key, cutoff);
    let mut total = 0;
    for l in leaves {
        let n = count(
            client,
            &format!("SELECT count(*) FROM ONLY {} WHERE {cond}", l.quoted),
            &l.table,
        )
        .await?;
        l.counted_rows = Some(n);
        total += n;
    }
    Ok(total)
}

/// Count the rows of partitions that would move (all of them) and the old rows of
/// those that stay (left to rows mode); returns the rows that would move.
pub async fn partitions(
    client: &Client,
    column: &str,
    key: KeyType,
    cutoff: &str,
    parts: &mut [PartitionReport],
) -> anyhow::Result<i64> {
    let cond = older(column, key, cutoff);
    let mut total = 0;
    for p in parts {
        let Some(c) = &p.child else { continue };
        let q = match p.fate {
            Fate::Newer => continue,
            Fate::Move => format!("SELECT count(*) FROM {}", c.quoted()),
            _ => format!("SELECT count(*) FROM {} WHERE {cond}", c.quoted()),
        };
        let n = count(client, &q, &p.partition).await?;
        p.counted_rows = Some(n);
        if p.status == PartStatus::WouldMove {
            total += n;
        }
    }
    Ok(total)
}
