//! Reading tables, partition keys, partitions and columns from the PostgreSQL catalog.
//!
//! Shared by `partitions` and `archive`. Table names from the config are resolved with
//! `to_regclass` (PostgreSQL's own rules for case folding, quoting and search_path), and
//! from then on only the resolved schema and name are used, always quoted. Partition
//! bounds come from `pg_get_expr(relpartbound, oid)`, the key from
//! `pg_partitioned_table`/`pg_get_partkeydef`, and bound literals are converted to axis
//! positions by PostgreSQL with the key's own type input function.

use std::collections::BTreeSet;

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::Client;

use super::bounds::{self, Pos, Range, RawBound, RawEdge};
use super::calendar::KeyType;
use crate::pg::sql;

/// A resolved table.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    #[serde(skip)]
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `r` table, `p` partitioned table, …
    pub relkind: String,
    /// Has inheritance children or partitions.
    pub has_children: bool,
}

impl Table {
    /// `schema.name` for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."name"` for SQL.
    pub fn quoted(&self) -> String {
        sql::qualified(&self.schema, &self.name)
    }

    pub fn is_partitioned(&self) -> bool {
        self.relkind == "p"
    }
}

/// Resolve a configured `schema.table` in `database`; a missing table is a user error.
pub async fn resolve(client: &Client, spec: &str, database: &str) -> anyhow::Result<Table> {
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relhassubclass
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = to_regclass($1)",
            &[&spec],
        )
        .await
        .map_err(|e| {
            crate::user_error!("table {spec:?} in database {database}: {}", pg_message(&e))
        })?;
    let Some(row) = row else {
        return Err(crate::user_error!(
            "table {spec} does not exist in database {database}; create it or fix the `table` key"
        ));
    };
    Ok(Table {
        oid: row.get(0),
        schema: row.get(1),
        name: row.get(2),
        relkind: row.get(3),
        has_children: row.get(4),
    })
}

/// The single date/timestamp column a table is RANGE-partitioned by.
#[derive(Debug, Clone, Serialize)]
pub struct RangeKey {
    pub column: String,
    #[serde(rename = "type")]
    pub key: KeyType,
    /// `pg_get_partkeydef`, e.g. `RANGE (created_at)`.
    pub definition: String,
}

/// The partition key, or a user error naming the table when it is not a RANGE key on one
/// date/timestamp column (or the table is not partitioned at all).
pub async fn range_key(client: &Client, t: &Table) -> anyhow::Result<RangeKey> {
    if !t.is_partitioned() {
        return Err(crate::user_error!(
            "table {} is not partitioned (relkind '{}'); monthly partitions need a table created with PARTITION BY RANGE (<date/timestamp column>)",
            t.display(),
            t.relkind
        ));
    }
    let row = client
        .query_one(
            "SELECT pt.partstrat::text, pt.partnatts::int4, pt.partattrs[0]::int4,
                    pg_get_partkeydef(pt.partrelid), a.attname::text, a.atttypid,
                    format_type(a.atttypid, a.atttypmod)
               FROM pg_partitioned_table pt
               LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
              WHERE pt.partrelid = $1",
            &[&t.oid],
        )
        .await
        .with_context(|| format!("read the partition key of {}", t.display()))?;
    let (strategy, natts, attnum, definition): (String, i32, i32, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if strategy != "r" {
        return Err(crate::user_error!(
            "table {} is partitioned by {definition}, not by RANGE; monthly partitions need RANGE on a date/timestamp column",
            t.display()
        ));
    }
    if natts != 1 || attnum == 0 {
        return Err(crate::user_error!(
            "table {} is partitioned by {definition}; monthly partitions need a single column key, not several columns or an expression",
            t.display()
        ));
    }
    let column: String = row.get(4);
    let type_name: String = row.get(6);
    let key = KeyType::from_oid(row.get(5)).ok_or_else(|| {
        crate::user_error!(
            "table {} is partitioned by {definition} and {column} is {type_name}; monthly partitions need a date, timestamp or timestamptz key",
            t.display()
        )
    })?;
    Ok(RangeKey {
        column,
        key,
        definition,
    })
}

/// A direct partition of a partitioned table.
#[derive(Debug, Clone)]
pub struct Child {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub relkind: String,
    /// `pg_get_expr(relpartbound, oid)`.
    pub bound: String,
    pub is_default: bool,
    /// Single-column range bounds on the key's axis; `None` for the default partition.
    pub range: Option<Range>,
}

impl Child {
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn quoted(&self) -> String {
        sql::qualified(&self.schema, &self.name)
    }
}

/// The direct partitions of `t` with their bounds, in bound order (default last).
pub async fn children(client: &Client, t: &Table, key: KeyType) -> anyhow::Result<Vec<Child>> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
                    pg_get_expr(c.relpartbound, c.oid)
               FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE i.inhparent = $1
              ORDER BY n.nspname, c.relname",
            &[&t.oid],
        )
        .await
        .with_context(|| format!("list the partitions of {}", t.display()))?;
    let mut out = Vec::with_capacity(rows.len());
    let mut literals = Vec::new();
    for r in &rows {
        let bound: String = r.get(4);
        if let RawBound::Range { from, to } = bounds::parse(&bound) {
            for e in [from, to] {
                if let RawEdge::Literal(l) = e {
                    literals.push(l);
                }
            }
        }
    }
    let mut positions = positions(client, key, &literals).await?.into_iter();
    for r in rows {
        let bound: String = r.get(4);
        let raw = bounds::parse(&bound);
        let mut pos = |e: RawEdge| match e {
            RawEdge::MinValue => Pos::Min,
            RawEdge::MaxValue => Pos::Max,
            RawEdge::Literal(_) => positions.next().expect("one position per literal"),
        };
        let range = match raw.clone() {
            RawBound::Range { from, to } => Some(Range {
                from: pos(from),
                to: pos(to),
            }),
            _ => None,
        };
        out.push(Child {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            relkind: r.get(3),
            is_default: raw == RawBound::Default,
            bound,
            range,
        });
    }
    out.sort_by_key(|c| (c.is_default, c.range.map(|r| r.from)));
    Ok(out)
}

/// Positions of literals of type `key` on its axis (microseconds since 1970-01-01, as
/// `extract(epoch …)` counts them), computed by PostgreSQL's own input functions.
pub async fn positions(
    client: &Client,
    key: KeyType,
    literals: &[String],
) -> anyhow::Result<Vec<Pos>> {
    if literals.is_empty() {
        return Ok(Vec::new());
    }
    let ty = key.sql(); // one of three fixed names, never user input
    let rows = client
        .query(
            &format!(
                "SELECT CASE WHEN isfinite(v) THEN (extract(epoch FROM v) * 1000000)::int8
                             WHEN v < 'epoch' THEN {min} ELSE {max} END
                   FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i),
                        LATERAL (SELECT u.t::{ty} AS v) s
                  ORDER BY u.i",
                min = i64::MIN,
                max = i64::MAX
            ),
            &[&literals],
        )
        .await
        .with_context(|| format!("convert {ty} bounds"))?;
    Ok(rows.iter().map(|r| Pos::At(r.get(0))).collect())
}

/// A column as archival needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: String,
    #[serde(skip)]
    pub type_oid: u32,
    pub not_null: bool,
    pub generated: bool,
    pub identity: bool,
    pub has_default: bool,
}

/// The live columns of a relation in column order.
pub async fn columns(client: &Client, oid: u32) -> anyhow::Result<Vec<Column>> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), atttypid, attnotnull,
                    attgenerated <> '', attidentity <> '', atthasdef
               FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&oid],
        )
        .await
        .context("read columns")?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            type_oid: r.get(2),
            not_null: r.get(3),
            generated: r.get(4),
            identity: r.get(5),
            has_default: r.get(6),
        })
        .collect())
}

/// Which of `names` already exist as relations in `schema`.
pub async fn taken_names(
    client: &Client,
    schema: &str,
    names: &[String],
) -> anyhow::Result<BTreeSet<String>> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = ANY($2::text[])",
            &[&schema, &names],
        )
        .await
        .context("look up relation names")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The planner's row estimate for `query` (EXPLAIN, nothing is executed).
pub async fn estimate_rows(client: &Client, query: &str) -> anyhow::Result<i64> {
    let row = client
        .query_one(&format!("EXPLAIN (FORMAT JSON) {query}"), &[])
        .await
        .context("estimate row count")?;
    let plan: serde_json::Value = row.get(0);
    Ok(plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0).round() as i64)
}

/// The server's message of a PostgreSQL error, without the driver's prefix.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}
