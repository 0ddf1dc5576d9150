//! Reading what archival needs from the catalog before anything moves: the source table
//! and its archival column, the cutoff (fixed once per run), foreign keys pointing at
//! the source, delete triggers, the leaf tables rows are deleted from and how each is
//! walked, and the state of the archive schema, table and log.

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::plan::Cursor;
use crate::config::ArchivePolicy;
use crate::partitions::bounds::Pos;
use crate::partitions::calendar::KeyType;
use crate::partitions::catalog::{self, Column, Table};
use crate::pg::sql;

/// The source of one policy.
#[derive(Debug, Clone)]
pub struct Source {
    pub table: Table,
    pub column: Column,
    pub key: KeyType,
    pub columns: Vec<Column>,
}

/// Resolve the table and its archival column; refuse (user error) what cannot be archived.
pub async fn source(client: &Client, p: &ArchivePolicy, db: &str) -> anyhow::Result<Source> {
    let table = catalog::resolve(client, &p.table, db).await?;
    match table.relkind.as_str() {
        "r" if table.has_children => {
            return Err(crate::user_error!(
                "table {} has inheritance children; archiving inherited tables is not supported (archive each child table instead)",
                table.display()
            ))
        }
        "r" | "p" => {}
        other => {
            return Err(crate::user_error!(
                "{} is not a table (relkind '{other}'); archival needs a table or a partitioned table",
                table.display()
            ))
        }
    }
    let columns = catalog::columns(client, table.oid).await?;
    let column = columns
        .iter()
        .find(|c| c.name == p.column)
        .cloned()
        .ok_or_else(|| {
            crate::user_error!(
                "table {} has no column {:?}; fix the `column` key",
                table.display(),
                p.column
            )
        })?;
    let key = KeyType::from_oid(column.type_oid).ok_or_else(|| {
        crate::user_error!(
            "column {} of table {} is {}; archival compares a date, timestamp or timestamptz column with the cutoff",
            column.name,
            table.display(),
            column.type_name
        )
    })?;
    Ok(Source {
        table,
        column,
        key,
        columns,
    })
}

/// How the cutoff is computed, in words, for reports: `now() - 6 months`, or
/// `now() - 6 months, rounded down to the day in Europe/Berlin`.
pub fn cutoff_rule(p: &ArchivePolicy) -> String {
    match p.align {
        None => format!("now() - {}", p.older_than),
        Some(a) => format!(
            "now() - {}, rounded down to the {} in {}",
            p.older_than,
            a.field(),
            p.timezone.as_deref().unwrap_or("the session's TimeZone")
        ),
    }
}

/// `now() - older_than` as a value of the column's type (text) and its axis position;
/// with `align`, first rounded down to midnight or the 1st of the month on the wall
/// clock of `timezone` (default: the session's `TimeZone`, as `CURRENT_DATE`).
/// `key_name` is the config key, for errors.
pub async fn cutoff(
    client: &Client,
    p: &ArchivePolicy,
    key: KeyType,
    key_name: &str,
) -> anyhow::Result<(String, Pos)> {
    let older_than = p.older_than.as_str();
    let ty = key.sql();
    let value = match p.align {
        None => format!("(now() - $1::text::interval)::{ty}"),
        // date_trunc on the local wall clock, then back to an instant in that zone.
        Some(_) => {
            let local = "date_trunc(z.field, (now() AT TIME ZONE z.tz) - $1::text::interval)";
            match key {
                KeyType::Timestamptz => format!("({local} AT TIME ZONE z.tz)"),
                _ => format!("{local}::{ty}"),
            }
        }
    };
    let q = format!(
        "SELECT {value}::text, $1::text::interval > interval '0'
           FROM (SELECT coalesce($3::text, current_setting('TimeZone')) AS tz, $2::text AS field) z"
    );
    let field = p.align.map(|a| a.field()).unwrap_or("day");
    let row = client
        .query_one(&q, &[&older_than, &field, &p.timezone])
        .await
        .map_err(|e| {
        let bad_input = e
            .code()
            .is_some_and(|c| c.code().starts_with("22") || *c == SqlState::INVALID_PARAMETER_VALUE);
        if bad_input {
            crate::user_error!(
                "key `{key_name}`: {older_than:?} is not a PostgreSQL interval ({}); write e.g. \"6 months\"",
                catalog::pg_message(&e)
            )
        } else {
            anyhow::Error::from(e).context("compute the cutoff")
        }
    })?;
    if !row.get::<_, bool>(1) {
        return Err(crate::user_error!(
            "key `{key_name}`: {older_than:?} is not a positive interval; it would archive current rows"
        ));
    }
    let text: String = row.get(0);
    let pos = catalog::positions(client, key, std::slice::from_ref(&text)).await?[0];
    Ok((text, pos))
}

/// Foreign keys of other tables (or the table itself) that reference the source or any
/// of its partitions: `name on referencing table: definition`.
pub async fn referencing_foreign_keys(client: &Client, t: &Table) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT con.conname::text, con.conrelid::regclass::text, pg_get_constraintdef(con.oid)
               FROM pg_constraint con
              WHERE con.contype = 'f' AND con.conparentid = 0
                AND con.confrelid IN (SELECT $1::oid UNION SELECT relid::oid FROM pg_partition_tree($1::oid))
              ORDER BY 2, 1",
            &[&t.oid],
        )
        .await
        .with_context(|| format!("look up foreign keys referencing {}", t.display()))?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "{} on {}: {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect())
}

/// User triggers that fire on DELETE of the source's rows (they fire for archived rows).
pub async fn delete_triggers(client: &Client, t: &Table) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT DISTINCT tgname::text FROM pg_trigger
              WHERE NOT tgisinternal AND (tgtype & 8) <> 0
                AND tgrelid IN (SELECT $1::oid UNION SELECT relid::oid FROM pg_partition_tree($1::oid))
              ORDER BY 1",
            &[&t.oid],
        )
        .await
        .context("look up delete triggers")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A table rows are deleted from: the source itself, or one of its leaf partitions.
#[derive(Debug, Clone, Serialize)]
pub struct Leaf {
    #[serde(skip)]
    pub oid: u32,
    pub table: String,
    #[serde(skip)]
    pub quoted: String,
    pub cursor: Cursor,
    /// The planner's estimate of its rows older than the cutoff.
    pub estimated_rows: i64,
    /// Its rows older than the cutoff, counted (`--exact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counted_rows: Option<i64>,
}

/// The leaves that can hold rows older than the cutoff (a direct range partition whose
/// lower bound is not below the cutoff cannot) and how to walk each.
pub async fn leaves(
    client: &Client,
    s: &Source,
    cutoff: &str,
    cutoff_pos: Pos,
) -> anyhow::Result<Vec<Leaf>> {
    let mut skip = std::collections::HashSet::new();
    if s.table.is_partitioned() {
        if let Ok(k) = catalog::range_key(client, &s.table).await {
            if k.column == s.column.name {
                for c in catalog::children(client, &s.table, k.key).await? {
                    if c.range.is_some_and(|r| r.from >= cutoff_pos) {
                        skip.insert(c.oid);
                    }
                }
            }
        }
    }
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text,
                    (SELECT a.relid FROM pg_partition_ancestors(t.relid) a
                       JOIN pg_inherits i ON i.inhrelid = a.relid WHERE i.inhparent = $1::oid)::oid
               FROM pg_partition_tree($1::oid) t
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.isleaf
              ORDER BY n.nspname, c.relname",
            &[&s.table.oid],
        )
        .await
        .context("list leaf partitions")?;
    let mut found: Vec<(u32, String, String)> = Vec::new();
    if rows.is_empty() {
        found.push((s.table.oid, s.table.schema.clone(), s.table.name.clone()));
    }
    for r in rows {
        let (oid, schema, name, relkind): (u32, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let top: Option<u32> = r.get(4);
        if top.is_some_and(|t| skip.contains(&t)) {
            continue;
        }
        if relkind != "r" {
            return Err(crate::user_error!(
                "partition {schema}.{name} of {} is not a plain table (relkind '{relkind}'); archival cannot delete from it",
                s.table.display()
            ));
        }
        found.push((oid, schema, name));
    }
    let mut out = Vec::new();
    for (oid, schema, name) in found {
        let quoted = sql::qualified(&schema, &name);
        let cursor = match leading_index(client, oid, &s.column.name).await? {
            Some(index) => Cursor::Index { index },
            None => Cursor::Physical,
        };
        let estimated_rows = catalog::estimate_rows(
            client,
            &format!(
                "SELECT 1 FROM ONLY {quoted} WHERE {} < {}::{}",
                sql::ident(&s.column.name),
                sql::literal(cutoff),
                s.key.sql()
            ),
        )
        .await?;
        out.push(Leaf {
            oid,
            table: format!("{schema}.{name}"),
            quoted,
            cursor,
            estimated_rows,
            counted_rows: None,
        });
    }
    Ok(out)
}

/// A valid, non-partial btree index of `table` whose first column is `column`.
async fn leading_index(
    client: &Client,
    table: u32,
    column: &str,
) -> anyhow::Result<Option<String>> {
    let row = client
        .query_opt(
            "SELECT ic.relname::text
               FROM pg_index i
               JOIN pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_am am ON am.oid = ic.relam
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = $1 AND a.attname = $2 AND am.amname = 'btree'
                AND i.indisvalid AND i.indisready AND i.indpred IS NULL
              ORDER BY i.indnatts, ic.relname
              LIMIT 1",
            &[&table, &column],
        )
        .await
        .context("look for an index on the archival column")?;
    Ok(row.map(|r| r.get(0)))
}

/// OID of `schema.name` if such a relation exists.
pub async fn relation(client: &Client, schema: &str, name: &str) -> anyhow::Result<Option<u32>> {
    let row = client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await
        .context("look up relation")?;
    Ok(row.map(|r| r.get(0)))
}

pub async fn schema_exists(client: &Client, schema: &str) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .context("look up schema")?;
    Ok(row.get(0))
}

/// The schema and name rows move into: `archive_table` as PostgreSQL reads an
/// identifier (`parse_ident`: case folding, quotes; a bare name lands in
/// `archive_schema`), or `<archive_schema>.<source name>`. `key_name` is the config key.
pub async fn archive_target(
    client: &Client,
    p: &ArchivePolicy,
    source: &Table,
    key_name: &str,
) -> anyhow::Result<(String, String)> {
    let Some(spec) = &p.archive_table else {
        return Ok((p.archive_schema.clone(), source.name.clone()));
    };
    let row = client
        .query_one("SELECT parse_ident($1)", &[spec])
        .await
        .map_err(|e| {
            crate::user_error!(
                "key `{key_name}`: {spec:?} is not a table name ({}); write schema.name",
                catalog::pg_message(&e)
            )
        })?;
    let parts: Vec<String> = row.get(0);
    match parts.as_slice() {
        [name] => Ok((p.archive_schema.clone(), name.clone())),
        [schema, name] => Ok((schema.clone(), name.clone())),
        _ => Err(crate::user_error!(
            "key `{key_name}`: {spec:?} has more than two parts; write schema.name"
        )),
    }
}
